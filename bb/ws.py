"""WebSocket protocol (RFC 6455) and permessage-deflate (RFC 7692).

Pure code: the handshake check turns a request head into a 101 response
(or an HTTPError), ``FrameParser`` turns client bytes into events, and
``encode_frame`` turns a message into bytes.  No sockets here; the glue to
a connection is ``bb.wsendpoint``.

Errors carry the close code the peer gets (``ProtocolError.code``): 1002
protocol error, 1007 invalid UTF-8, 1009 message too big.

Strategy for speed: headers are decoded with ``int.from_bytes`` on slices,
payloads are unmasked with four strided ``bytes.translate`` calls (C speed,
about 2 ms a MiB), and UTF-8 is checked with the codec's incremental
decoder plus a check of its pending tail so that a sequence that can never
become valid fails at once ("fail fast", RFC 6455 §8.1).
"""

import base64
import codecs
import hashlib
import re
import zlib

from .http import HTTPError

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED = 1003
CLOSE_NO_STATUS = 1005
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011

DEFAULT_MAX_MESSAGE = 16 * 1024 * 1024


class ProtocolError(Exception):
    """The peer broke the protocol; ``code`` goes into our close frame."""

    def __init__(self, code, reason):
        super().__init__(reason)
        self.code = code
        self.reason = reason


# -- handshake (RFC 6455 §4.2) ------------------------------------------------

_KEY_RE = re.compile(rb"[A-Za-z0-9+/]{22}==")


def accept_key(key):
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def handshake(req):
    """Check an upgrade request; return (101 response head, Deflate or None).

    Raises HTTPError: 400 for a bad handshake, 426 (with
    ``Sec-WebSocket-Version: 13``) for a version we do not speak.
    """
    if req.method != b"GET" or req.http10:
        raise HTTPError(400, "WebSocket handshake needs GET and HTTP/1.1")
    if b"websocket" not in [t.strip() for t in req.upgrade.split(b",")]:
        raise HTTPError(400, "Upgrade is not websocket")
    if b"upgrade" not in req.tokens(b"connection"):
        raise HTTPError(400, "Connection does not list upgrade")
    if req.has_body:
        raise HTTPError(400, "WebSocket handshake with a body")
    version = req.get(b"sec-websocket-version")
    if version is None or version.strip() != b"13":
        raise WrongVersion()
    key = req.get(b"sec-websocket-key")
    if key is None or not _KEY_RE.fullmatch(key.strip()):
        raise HTTPError(400, "missing or malformed Sec-WebSocket-Key")
    key = key.strip()
    if len(base64.b64decode(key)) != 16:
        raise HTTPError(400, "Sec-WebSocket-Key is not 16 bytes")
    deflate = None
    head = [b"HTTP/1.1 101 Switching Protocols", b"Upgrade: websocket",
            b"Connection: Upgrade", b"Sec-WebSocket-Accept: " + accept_key(key)]
    offers = req.get(b"sec-websocket-extensions")
    if offers:
        deflate, response = negotiate_deflate(offers)
        if deflate is not None:
            head.append(b"Sec-WebSocket-Extensions: " + response)
    return b"\r\n".join(head) + b"\r\n\r\n", deflate


class WrongVersion(HTTPError):
    def __init__(self):
        super().__init__(426, "unsupported WebSocket version (this server speaks 13)")
        self.headers = b"Sec-WebSocket-Version: 13\r\n"


# -- permessage-deflate (RFC 7692) --------------------------------------------------

def _parse_extensions(header):
    """[(name, {param: value or None})] of a Sec-WebSocket-Extensions value."""
    result = []
    for item in header.split(b","):
        parts = [p.strip() for p in item.split(b";")]
        if not parts[0]:
            continue
        params = {}
        for p in parts[1:]:
            if not p:
                continue
            name, eq, value = p.partition(b"=")
            name = name.strip().lower()
            value = value.strip().strip(b'"') if eq else None
            if name in params:
                params = None   # RFC 7692 §5: a repeated parameter: decline
                break
            params[name] = value
        if params is not None:
            result.append((parts[0].lower(), params))
    return result


def negotiate_deflate(header):
    """Accept the first permessage-deflate offer we can honour.

    Returns (Deflate, response extension value) or (None, None).
    """
    for name, params in _parse_extensions(header):
        if name != b"permessage-deflate":
            continue
        ok = True
        server_bits = 15
        client_bits = 15
        response = [b"permessage-deflate"]
        server_nct = client_nct = False
        for key, value in params.items():
            if key == b"server_no_context_takeover" and value is None:
                server_nct = True
                response.append(b"server_no_context_takeover")
            elif key == b"client_no_context_takeover" and value is None:
                client_nct = True
                response.append(b"client_no_context_takeover")
            elif key == b"server_max_window_bits":
                if value is None or not value.isdigit() or not 8 <= int(value) <= 15 \
                        or value[:1] == b"0":
                    ok = False
                    break
                server_bits = int(value)
                if server_bits == 8:
                    # zlib cannot produce a raw deflate stream with a
                    # 256-byte window; decline this offer.
                    ok = False
                    break
                response.append(b"server_max_window_bits=%d" % server_bits)
            elif key == b"client_max_window_bits":
                if value is None:
                    continue    # the client allows us to limit it; we don't
                if not value.isdigit() or not 8 <= int(value) <= 15 or value[:1] == b"0":
                    ok = False
                    break
                client_bits = int(value)
                response.append(b"client_max_window_bits=%d" % client_bits)
            else:
                ok = False
                break
        if ok:
            return (Deflate(server_bits, client_bits, server_nct, client_nct),
                    b"; ".join(response))
    return None, None


class Deflate:
    """Compression state of one connection (both directions)."""

    __slots__ = ("server_bits", "client_bits", "server_nct", "client_nct",
                 "_compressor", "_decompressor")

    MIN_SIZE = 64   # smaller messages are sent uncompressed (RSV1 is per message)

    def __init__(self, server_bits=15, client_bits=15, server_nct=False, client_nct=False):
        self.server_bits = server_bits
        self.client_bits = client_bits
        self.server_nct = server_nct
        self.client_nct = client_nct
        self._compressor = None
        self._decompressor = None

    def compress(self, payload):
        c = self._compressor
        if c is None or self.server_nct:
            c = self._compressor = zlib.compressobj(6, zlib.DEFLATED, -self.server_bits, 8)
        data = c.compress(payload) + c.flush(zlib.Z_SYNC_FLUSH)
        if data.endswith(b"\x00\x00\xff\xff"):
            data = data[:-4]
        return data

    def decompressor(self):
        """A decompress function for one message, bounded by max_size."""
        d = self._decompressor
        if d is None or self.client_nct:
            d = self._decompressor = zlib.decompressobj(-self.client_bits)
        return d

    def end_message(self):
        if self.client_nct:
            self._decompressor = None


# -- frames -------------------------------------------------------------------------

_XOR_TABLES = [bytes(b ^ k for b in range(256)) for k in range(256)]


def unmask(data, mask):
    """XOR ``data`` with the 4-byte ``mask`` (RFC 6455 §5.3)."""
    n = len(data)
    if n < 512:
        full = (mask * (n // 4 + 1))[:n]
        return (int.from_bytes(data, "little") ^ int.from_bytes(full, "little")).to_bytes(n, "little")
    # A bytearray (no final copy): ZeroMQ and sockets take any buffer.
    out = bytearray(n)
    for i in range(4):
        out[i::4] = data[i::4].translate(_XOR_TABLES[mask[i]])
    return out


def encode_frame(opcode, payload, fin=True, rsv1=False, mask=None):
    """A frame as [header, payload] (no copy of a large payload)."""
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    mbit = 0x80 if mask is not None else 0
    if n < 126:
        header = bytes((b0, mbit | n))
    elif n < 65536:
        header = bytes((b0, mbit | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((b0, mbit | 127)) + n.to_bytes(8, "big")
    if mask is not None:
        return [header + mask, unmask(payload, mask)]
    return [header, payload]


def close_payload(code, reason=b""):
    return code.to_bytes(2, "big") + reason[:123]


def valid_close_code(code):
    """RFC 6455 §7.4: codes a peer may send on the wire."""
    if code < 1000 or code >= 5000:
        return False
    if code in (1004, 1005, 1006, 1015):
        return False
    if 1016 <= code < 3000:
        return False
    return True


# A valid UTF-8 sequence not complete yet (what the decoder may keep back).
_UTF8_PREFIX = re.compile(
    rb"[\xc2-\xdf]|\xe0[\xa0-\xbf]?|[\xe1-\xec\xee\xef][\x80-\xbf]?|\xed[\x80-\x9f]?"
    rb"|\xf0(?:[\x90-\xbf][\x80-\xbf]?)?|[\xf1-\xf3](?:[\x80-\xbf][\x80-\xbf]?)?"
    rb"|\xf4(?:[\x80-\x8f][\x80-\xbf]?)?")


class Utf8Validator:
    """Incremental UTF-8 check that fails as soon as bytes cannot be valid."""

    __slots__ = ("_decoder",)

    def __init__(self):
        self._decoder = codecs.getincrementaldecoder("utf-8")()

    def feed(self, data, final=False):
        try:
            self._decoder.decode(data, final)
        except UnicodeDecodeError:
            return False
        if not final:
            pending = self._decoder.getstate()[0]
            if pending and not _UTF8_PREFIX.fullmatch(pending):
                return False
        return True


def valid_utf8(data):
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


# Events returned by FrameParser.feed
MESSAGE, PING, PONG, CLOSE = "message", "ping", "pong", "close"

_HEAD, _EXT16, _EXT64, _MASK, _PAYLOAD = range(5)


class FrameParser:
    """Incremental parser of client frames (RFC 6455 §5).

    ``feed(data)`` returns a list of events:
    (MESSAGE, binary: bool, payload), (PING, payload), (PONG, payload),
    (CLOSE, code or None, reason bytes).  It raises ProtocolError.
    Once a CLOSE is returned, further input is ignored.
    """

    def __init__(self, max_message=DEFAULT_MAX_MESSAGE, deflate=None, require_mask=True):
        self.max_message = max_message
        self.deflate = deflate
        self.require_mask = require_mask
        self._buf = b""
        self._state = _HEAD
        self._fin = self._opcode = self._rsv1 = 0
        self._masked = False
        self._length = 0
        self._mask = None
        self._frame_parts = []
        self._frame_got = 0
        # message in progress (fragmented)
        self._msg_opcode = None
        self._msg_parts = []
        self._msg_size = 0
        self._msg_compressed = False
        self._utf8 = None
        self._inflate = None
        self.closed = False

    def feed(self, data):
        if self.closed:
            return []
        if self._buf:
            data = self._buf + data
            self._buf = b""
        events = []
        pos = 0
        end = len(data)
        while pos < end and not self.closed:
            state = self._state
            if state == _PAYLOAD:
                need = self._length - self._frame_got
                take = min(need, end - pos)
                self._frame_parts.append(data[pos:pos + take] if (pos or take != end) else data)
                self._frame_got += take
                pos += take
                if self._frame_got == self._length:
                    self._frame_done(events)
                continue
            if state == _HEAD:
                if end - pos < 2:
                    break
                b0 = data[pos]
                b1 = data[pos + 1]
                pos += 2
                self._start_frame(b0, b1)
                continue
            if state == _EXT16:
                if end - pos < 2:
                    break
                self._length = int.from_bytes(data[pos:pos + 2], "big")
                pos += 2
                self._length_known()
                continue
            if state == _EXT64:
                if end - pos < 8:
                    break
                length = int.from_bytes(data[pos:pos + 8], "big")
                pos += 8
                if length >> 63:
                    raise ProtocolError(CLOSE_PROTOCOL_ERROR, "payload length with MSB set")
                self._length = length
                self._length_known()
                continue
            if state == _MASK:
                if end - pos < 4:
                    break
                self._mask = data[pos:pos + 4]
                pos += 4
                self._state = _PAYLOAD
                if self._length == 0:
                    self._frame_done(events)
                continue
        if pos < end and not self.closed:
            self._buf = data[pos:]
        return events

    def _start_frame(self, b0, b1):
        fin = b0 & 0x80
        rsv1 = b0 & 0x40
        opcode = b0 & 0x0F
        if b0 & 0x30:
            raise ProtocolError(CLOSE_PROTOCOL_ERROR, "reserved bits set")
        masked = b1 & 0x80
        if self.require_mask and not masked:
            raise ProtocolError(CLOSE_PROTOCOL_ERROR, "client frame not masked")
        if opcode >= 0x8:
            if opcode > OP_PONG:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "reserved opcode %d" % opcode)
            if not fin:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "fragmented control frame")
            if rsv1:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "RSV1 on a control frame")
            if (b1 & 0x7F) > 125:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "control frame over 125 bytes")
        elif opcode == OP_CONT:
            if self._msg_opcode is None:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "continuation without a message")
            if rsv1:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "RSV1 on a continuation frame")
        elif opcode in (OP_TEXT, OP_BINARY):
            if self._msg_opcode is not None:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR,
                                    "new message before the previous one ended")
            if rsv1 and self.deflate is None:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "RSV1 set without an extension")
            self._msg_size = 0
        else:
            raise ProtocolError(CLOSE_PROTOCOL_ERROR, "reserved opcode %d" % opcode)
        self._fin = fin
        self._rsv1 = rsv1
        self._opcode = opcode
        self._masked = masked
        self._frame_parts = []
        self._frame_got = 0
        length = b1 & 0x7F
        if length == 126:
            self._state = _EXT16
        elif length == 127:
            self._state = _EXT64
        else:
            self._length = length
            self._length_known()

    def _length_known(self):
        if self._opcode < 0x8:
            limit = self.max_message
            compressed = self._msg_compressed if self._opcode == OP_CONT else self._rsv1
            # Refused before its payload is buffered.  A compressed frame
            # is checked again once inflated.
            if self._length > limit + 1024 or \
                    (not compressed and self._msg_size + self._length > limit):
                raise ProtocolError(CLOSE_TOO_BIG, "message over %d bytes" % limit)
        self._state = _MASK if self._masked else _PAYLOAD
        if not self._masked:
            self._mask = None

    def _frame_done(self, events):
        parts = self._frame_parts
        payload = parts[0] if len(parts) == 1 else b"".join(parts)
        self._frame_parts = []
        if self._mask is not None and payload:
            payload = unmask(payload, self._mask)
        self._state = _HEAD
        opcode = self._opcode
        if opcode >= 0x8:
            self._control(opcode, payload, events)
            return
        if opcode != OP_CONT:
            self._msg_opcode = opcode
            self._msg_compressed = bool(self._rsv1)
            self._msg_size = 0
            self._msg_parts = []
            self._utf8 = None
            if self._msg_compressed:
                self._inflate = self.deflate.decompressor()
        if self._msg_compressed:
            payload = self._inflate_part(payload, final=bool(self._fin))
        self._msg_size += len(payload)
        if self._msg_size > self.max_message:
            raise ProtocolError(CLOSE_TOO_BIG, "message over %d bytes" % self.max_message)
        text = self._msg_opcode == OP_TEXT
        if self._fin and not self._msg_parts:
            message = payload
            if text and self._utf8 is None and not valid_utf8(message):
                raise ProtocolError(CLOSE_INVALID_DATA, "invalid UTF-8 in text message")
        else:
            if text:
                if self._utf8 is None:
                    self._utf8 = Utf8Validator()
                if not self._utf8.feed(payload, final=bool(self._fin)):
                    raise ProtocolError(CLOSE_INVALID_DATA, "invalid UTF-8 in text message")
            self._msg_parts.append(payload)
            if not self._fin:
                return
            message = b"".join(self._msg_parts)
        if self._fin:
            if text and self._utf8 is not None and not self._utf8.feed(b"", final=True):
                raise ProtocolError(CLOSE_INVALID_DATA, "invalid UTF-8 in text message")
            if self._msg_compressed:
                self.deflate.end_message()
            self._msg_opcode = None
            self._msg_parts = []
            self._utf8 = None
            events.append((MESSAGE, not text, message))

    def _inflate_part(self, payload, final):
        """Inflate one frame; never more than the message size limit."""
        d = self._inflate
        room = self.max_message - self._msg_size
        data = payload + b"\x00\x00\xff\xff" if final else payload
        try:
            out = d.decompress(data, room + 1)
        except zlib.error as e:
            raise ProtocolError(CLOSE_INVALID_DATA, "bad compressed data: %s" % e) from None
        if len(out) > room or d.unconsumed_tail:
            # A zip bomb is refused, not inflated.
            raise ProtocolError(CLOSE_TOO_BIG, "message over %d bytes once inflated"
                                % self.max_message)
        return out

    def _control(self, opcode, payload, events):
        if opcode == OP_PING:
            events.append((PING, payload))
        elif opcode == OP_PONG:
            events.append((PONG, payload))
        else:
            if len(payload) == 1:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "close frame of 1 byte")
            if not payload:
                code, reason = None, b""
            else:
                code = int.from_bytes(payload[:2], "big")
                reason = payload[2:]
                if not valid_close_code(code):
                    raise ProtocolError(CLOSE_PROTOCOL_ERROR, "invalid close code %d" % code)
                if not valid_utf8(reason):
                    raise ProtocolError(CLOSE_INVALID_DATA, "close reason is not UTF-8")
            self.closed = True
            events.append((CLOSE, code, reason))
