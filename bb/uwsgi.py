"""The uwsgi packet a node receives for each request (spec §4.1-4.2).

Layout: byte 0 = modifier1 (0), bytes 1-2 = little-endian u16 size of the
whole packet *including* this 4-byte header (what the seed's
``uwsgi_to_dict`` reads as its loop bound), byte 3 = modifier2 (0), then
(u16 key length, key, u16 value length, value) pairs.

Pure code: bytes in, bytes out.
"""

from urllib.parse import unquote_to_bytes

MAX_PACKET = 65535

_U16 = [n.to_bytes(2, "little") for n in range(256)]
_ENV_NAME = bytes.maketrans(b"abcdefghijklmnopqrstuvwxyz-", b"ABCDEFGHIJKLMNOPQRSTUVWXYZ_")
# Encoded "HTTP_<NAME>" keys of the usual headers, built on first use.
_header_key_cache = {}


class PacketTooLarge(Exception):
    """The env does not fit the 16-bit size field (the client gets 431)."""


def _u16(n):
    return _U16[n] if n < 256 else n.to_bytes(2, "little")


def key_prefix(key):
    """``u16 len + key`` for a fixed key (computed once, reused per request)."""
    return _u16(len(key)) + key


def header_key(name):
    """Encoded ``HTTP_<NAME>`` key of a lower-case header name."""
    encoded = _header_key_cache.get(name)
    if encoded is None:
        key = b"HTTP_" + name.translate(_ENV_NAME)
        encoded = _u16(len(key)) + key
        if len(_header_key_cache) < 512:
            _header_key_cache[name] = encoded
    return encoded


def encode(items):
    """Encode (encoded key prefix, value) pairs into a uwsgi packet."""
    parts = [b""]
    append = parts.append
    for prefix, value in items:
        n = len(value)
        if n > 65535:
            raise PacketTooLarge("value of %r too large" % prefix[2:])
        append(prefix)
        append(_U16[n] if n < 256 else n.to_bytes(2, "little"))
        append(value)
    body = b"".join(parts)
    size = len(body) + 4
    if size > MAX_PACKET:
        raise PacketTooLarge("uwsgi packet of %d bytes" % size)
    return b"\x00" + size.to_bytes(2, "little") + b"\x00" + body


def encode_dict(env):
    """Encode a dict of bytes keys to bytes values (tests, tools)."""
    return encode([(key_prefix(k), v) for k, v in env.items()])


def decode(packet):
    """Decode a packet into a dict (the inverse of encode, as the seed reads it)."""
    if len(packet) < 4:
        raise ValueError("short uwsgi packet")
    size = int.from_bytes(packet[1:3], "little")
    if size > len(packet):
        raise ValueError("truncated uwsgi packet")
    env = {}
    pos = 4
    while pos < size:
        klen = int.from_bytes(packet[pos:pos + 2], "little")
        key = packet[pos + 2:pos + 2 + klen]
        pos += 2 + klen
        vlen = int.from_bytes(packet[pos:pos + 2], "little")
        value = packet[pos + 2:pos + 2 + vlen]
        pos += 2 + vlen
        if pos > size:
            raise ValueError("truncated uwsgi pair")
        env[key] = value
    return env


K_METHOD = key_prefix(b"REQUEST_METHOD")
K_URI = key_prefix(b"REQUEST_URI")
K_SCRIPT = key_prefix(b"SCRIPT_NAME")
K_PATH = key_prefix(b"PATH_INFO")
K_QUERY = key_prefix(b"QUERY_STRING")
K_SERVER_NAME = key_prefix(b"SERVER_NAME")
K_SERVER_PORT = key_prefix(b"SERVER_PORT")
K_PROTOCOL = key_prefix(b"SERVER_PROTOCOL")
K_REMOTE_ADDR = key_prefix(b"REMOTE_ADDR")
K_REMOTE_PORT = key_prefix(b"REMOTE_PORT")
K_CONTENT_TYPE = key_prefix(b"CONTENT_TYPE")
K_CONTENT_LENGTH = key_prefix(b"CONTENT_LENGTH")
K_HTTPS = key_prefix(b"HTTPS")


def request_env(req, server_name, server_port, remote_addr, remote_port, https):
    """The uwsgi packet of one request head (spec §4.2).

    ``server_name``, ``server_port``, ``remote_addr`` and ``remote_port``
    are bytes.  Repeated headers are joined with ', '.
    """
    path = req.path
    if b"%" in path:
        path = unquote_to_bytes(path)
    items = [
        (K_METHOD, req.method),
        (K_URI, req.target),
        (K_SCRIPT, b""),
        (K_PATH, path),
        (K_QUERY, req.query),
        (K_SERVER_NAME, server_name),
        (K_SERVER_PORT, server_port),
        (K_PROTOCOL, req.version),
        (K_REMOTE_ADDR, remote_addr),
        (K_REMOTE_PORT, remote_port),
    ]
    if https:
        items.append((K_HTTPS, b"on"))
    if req.content_length is not None:
        items.append((K_CONTENT_LENGTH, b"%d" % req.content_length))
    headers = req.headers
    for name, value in headers:
        if name == b"content-type":
            items.append((K_CONTENT_TYPE, value))
        items.append((header_key(name), value))
    if len({name for name, _ in headers}) != len(headers):
        items = _join_repeats(items)
    return encode(items)


def _join_repeats(items):
    """Merge repeated keys into one ', '-joined value, keeping first position."""
    merged = {}
    for prefix, value in items:
        if prefix in merged:
            merged[prefix] = merged[prefix] + b", " + value
        else:
            merged[prefix] = value
    return list(merged.items())
