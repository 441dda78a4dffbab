"""Unit tests of the pure WebSocket code (RFC 6455, RFC 7692)."""

import os
import zlib

import pytest

from bb import http, ws
from test_http import splits

MASK = b"\x37\xfa\x21\x3d"


def frame(opcode, payload, fin=True, rsv1=False, mask=MASK, rsv=0, length=None):
    raw = b"".join(ws.encode_frame(opcode, payload, fin=fin, rsv1=rsv1, mask=mask))
    if rsv:
        raw = bytes([raw[0] | rsv]) + raw[1:]
    return raw


def parse_all(raw, **kw):
    """Events of ``raw`` fed whole, byte by byte and in random pieces (all equal)."""
    results = []
    for pieces in splits(raw):
        parser = ws.FrameParser(**kw)
        events = []
        for p in pieces:
            events.extend(parser.feed(p))
        results.append(events)
    assert all(r == results[0] for r in results)
    return results[0]


def error_code(raw, **kw):
    codes = set()
    for pieces in splits(raw):
        parser = ws.FrameParser(**kw)
        try:
            for p in pieces:
                parser.feed(p)
            codes.add(None)
        except ws.ProtocolError as e:
            codes.add(e.code)
    assert len(codes) == 1, codes
    return codes.pop()


# -- RFC 6455 §5.7 examples ------------------------------------------------------

def test_rfc_examples():
    unmasked = dict(require_mask=False)
    assert parse_all(bytes.fromhex("810548656c6c6f"), **unmasked) == [(ws.MESSAGE, False, b"Hello")]
    assert parse_all(bytes.fromhex("818537fa213d7f9f4d5158")) == [(ws.MESSAGE, False, b"Hello")]
    assert parse_all(bytes.fromhex("010348656c80026c6f"), **unmasked) == \
        [(ws.MESSAGE, False, b"Hello")]
    assert parse_all(bytes.fromhex("890548656c6c6f"), **unmasked) == [(ws.PING, b"Hello")]
    assert parse_all(bytes.fromhex("8a8537fa213d7f9f4d5158")) == [(ws.PONG, b"Hello")]
    big = os.urandom(256)
    assert parse_all(b"\x82\x7e\x01\x00" + big, **unmasked) == [(ws.MESSAGE, True, big)]
    huge = os.urandom(65536)
    parser = ws.FrameParser(require_mask=False)
    assert parser.feed(b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00" + huge) == \
        [(ws.MESSAGE, True, huge)]


def test_encoder_matches_rfc():
    assert b"".join(ws.encode_frame(ws.OP_TEXT, b"Hello")) == bytes.fromhex("810548656c6c6f")
    assert b"".join(ws.encode_frame(ws.OP_TEXT, b"Hello", mask=MASK)) == \
        bytes.fromhex("818537fa213d7f9f4d5158")
    assert b"".join(ws.encode_frame(ws.OP_BINARY, b"x" * 256))[:4] == b"\x82\x7e\x01\x00"
    assert b"".join(ws.encode_frame(ws.OP_BINARY, b"x" * 65536))[:10] == \
        b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00"


def test_unmask_long_and_short():
    for n in (0, 1, 3, 4, 5, 511, 512, 513, 100000):
        data = os.urandom(n)
        expected = bytes(b ^ MASK[i % 4] for i, b in enumerate(data))
        assert ws.unmask(data, MASK) == expected


def test_fragmented_with_interleaved_ping_every_split():
    raw = (frame(ws.OP_TEXT, "κόσ".encode(), fin=False) + frame(ws.OP_PING, b"p") +
           frame(ws.OP_CONT, "με".encode(), fin=False) + frame(ws.OP_CONT, b"!", fin=True))
    assert parse_all(raw) == [(ws.PING, b"p"), (ws.MESSAGE, False, "κόσμε!".encode())]


def test_close_frames():
    assert parse_all(frame(ws.OP_CLOSE, b"")) == [(ws.CLOSE, None, b"")]
    assert parse_all(frame(ws.OP_CLOSE, b"\x03\xe8bye")) == [(ws.CLOSE, 1000, b"bye")]
    assert parse_all(frame(ws.OP_CLOSE, b"\x0f\xa0")) == [(ws.CLOSE, 4000, b"")]
    # nothing after a close is parsed
    assert parse_all(frame(ws.OP_CLOSE, b"") + b"garbage") == [(ws.CLOSE, None, b"")]


@pytest.mark.parametrize("raw,code,what", [
    (frame(ws.OP_TEXT, b"x", rsv=0x20), 1002, "RSV2 set"),
    (frame(ws.OP_TEXT, b"x", rsv=0x10), 1002, "RSV3 set"),
    (frame(ws.OP_TEXT, b"x", rsv1=True), 1002, "RSV1 without deflate"),
    (frame(0x3, b"x"), 1002, "reserved data opcode"),
    (frame(0xB, b"x"), 1002, "reserved control opcode"),
    (frame(ws.OP_TEXT, b"x", mask=None), 1002, "unmasked client frame"),
    (frame(ws.OP_PING, b"x" * 126), 1002, "control frame over 125 bytes"),
    (frame(ws.OP_PING, b"x", fin=False), 1002, "fragmented control frame"),
    (frame(ws.OP_CONT, b"x"), 1002, "continuation without a message"),
    (frame(ws.OP_TEXT, b"a", fin=False) + frame(ws.OP_TEXT, b"b"), 1002,
     "new message inside a fragmented one"),
    (frame(ws.OP_CLOSE, b"\x03"), 1002, "close payload of 1 byte"),
    (frame(ws.OP_CLOSE, b"\x03\xe7"), 1002, "close code 999"),
    (frame(ws.OP_CLOSE, b"\x03\xed"), 1002, "close code 1005 on the wire"),
    (frame(ws.OP_CLOSE, b"\x03\xee"), 1002, "close code 1006 on the wire"),
    (frame(ws.OP_CLOSE, b"\x04\x4c"), 1002, "close code 1100 unassigned"),
    (frame(ws.OP_CLOSE, b"\x13\x88"), 1002, "close code 5000"),
    (frame(ws.OP_CLOSE, b"\x03\xe8\xff"), 1007, "close reason not UTF-8"),
    (frame(ws.OP_TEXT, b"\xff"), 1007, "invalid UTF-8 text"),
    (b"\x82\xff\x80\x00\x00\x00\x00\x00\x00\x00" + MASK, 1002, "64-bit length with MSB set"),
])
def test_protocol_errors(raw, code, what):
    assert error_code(raw) == code


def test_message_size_limit_1009():
    assert error_code(frame(ws.OP_BINARY, b"x" * 2000), max_message=1000) == 1009
    # a never-ending fragmented message is refused once over the limit
    parser = ws.FrameParser(max_message=10000)
    parser.feed(frame(ws.OP_BINARY, b"x" * 1000, fin=False))
    with pytest.raises(ws.ProtocolError) as e:
        for _ in range(20):
            parser.feed(frame(ws.OP_CONT, b"x" * 1000, fin=False))
    assert e.value.code == 1009
    # refused from the header alone, before the payload is buffered
    parser = ws.FrameParser(max_message=1000)
    with pytest.raises(ws.ProtocolError):
        parser.feed(b"\x82\xfe\xff\xff" + MASK)


# -- UTF-8 --------------------------------------------------------------------------

VALID_UTF8 = ["κόσμε".encode(), b"\xf0\x90\x80\x80", b"\xf4\x8f\xbf\xbf", b"\xed\x9f\xbf",
              b"\xee\x80\x80", b"\xef\xbf\xbd", b"\x7f", b""]
INVALID_UTF8 = [b"\xc0\xaf", b"\xe0\x80\xaf", b"\xf0\x80\x80\xaf",     # overlong
                b"\xed\xa0\x80", b"\xed\xbf\xbf",                       # surrogates
                b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80",               # > U+10FFFF
                b"\x80", b"\xfe", b"\xff", b"\xce\xba\xe1\xbd"]         # stray / truncated


@pytest.mark.parametrize("data", VALID_UTF8)
def test_valid_utf8_split_at_every_byte(data):
    for cut in range(len(data) + 1):
        raw = frame(ws.OP_TEXT, data[:cut], fin=False) + frame(ws.OP_CONT, data[cut:])
        assert parse_all(raw) == [(ws.MESSAGE, False, data)]


@pytest.mark.parametrize("data", INVALID_UTF8)
def test_invalid_utf8_refused_whole_and_fragmented(data):
    assert error_code(frame(ws.OP_TEXT, data)) == 1007
    for cut in range(len(data) + 1):
        raw = frame(ws.OP_TEXT, data[:cut], fin=False) + frame(ws.OP_CONT, data[cut:])
        assert error_code(raw) == 1007


def test_truncated_sequences_at_message_end():
    for seq in (b"\xce\xba", b"\xe1\xbd\xb9", b"\xf0\x90\x80\x80"):
        for cut in range(1, len(seq)):
            assert error_code(frame(ws.OP_TEXT, b"ok" + seq[:cut])) == 1007


def test_utf8_fails_fast_mid_message():
    v = ws.Utf8Validator()
    assert v.feed("κόσμε".encode())
    assert not v.feed(b"\xf4\x90")           # can never become valid
    for bad in (b"\xed\xa0", b"\xe0\x80", b"\xf0\x80"):
        assert not ws.Utf8Validator().feed(bad)
    parser = ws.FrameParser()
    parser.feed(frame(ws.OP_TEXT, b"ok \xf4", fin=False))
    with pytest.raises(ws.ProtocolError) as e:
        parser.feed(frame(ws.OP_CONT, b"\x90\x80\x80", fin=False))
    assert e.value.code == 1007


# -- handshake ----------------------------------------------------------------------------

def upgrade_head(extra=b"", key=b"dGhlIHNhbXBsZSBub25jZQ==", version=b"13"):
    raw = (b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key +
           b"\r\nSec-WebSocket-Version: " + version + b"\r\n" + extra + b"\r\n")
    return http.HeadReader().feed(raw)


def test_handshake_accept_key_from_rfc():
    response, deflate = ws.handshake(upgrade_head())
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in response
    assert response.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert deflate is None


def test_handshake_errors():
    with pytest.raises(http.HTTPError) as e:
        ws.handshake(upgrade_head(version=b"8"))
    assert e.value.status == 426 and e.value.headers == b"Sec-WebSocket-Version: 13\r\n"
    with pytest.raises(http.HTTPError) as e:
        ws.handshake(upgrade_head(key=b"short"))
    assert e.value.status == 400
    req = http.HeadReader().feed(b"POST / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"
                                 b"Connection: upgrade\r\n\r\n")
    with pytest.raises(http.HTTPError):
        ws.handshake(req)


# -- permessage-deflate -----------------------------------------------------------------

def test_deflate_negotiation():
    d, resp = ws.negotiate_deflate(b"permessage-deflate; client_max_window_bits")
    assert resp == b"permessage-deflate" and d.client_bits == 15
    d, resp = ws.negotiate_deflate(b"permessage-deflate; server_no_context_takeover; "
                                   b"client_no_context_takeover; server_max_window_bits=10; "
                                   b"client_max_window_bits=12")
    assert d.server_nct and d.client_nct and d.server_bits == 10 and d.client_bits == 12
    assert resp == (b"permessage-deflate; server_no_context_takeover; "
                    b"client_no_context_takeover; server_max_window_bits=10; "
                    b"client_max_window_bits=12")
    # unknown parameter, bad value, repeated parameter: declined (next offer wins)
    assert ws.negotiate_deflate(b"permessage-deflate; foo")[0] is None
    assert ws.negotiate_deflate(b"permessage-deflate; server_max_window_bits=16")[0] is None
    assert ws.negotiate_deflate(b"permessage-deflate; server_max_window_bits=8")[0] is None
    d, resp = ws.negotiate_deflate(b"permessage-deflate; client_no_context_takeover; "
                                   b"client_no_context_takeover, permessage-deflate")
    assert resp == b"permessage-deflate"
    response, deflate = ws.handshake(upgrade_head(
        b"Sec-WebSocket-Extensions: x-webkit-deflate-frame, permessage-deflate\r\n"))
    assert b"Sec-WebSocket-Extensions: permessage-deflate\r\n" in response


def client_compress(data, nct=False, compressor=None):
    c = compressor or zlib.compressobj(6, zlib.DEFLATED, -15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    return out[:-4]


def test_compressed_messages_inflate_with_context():
    deflate = ws.Deflate()
    parser = ws.FrameParser(deflate=deflate)
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    for text in (b"hello hello hello", b"hello hello hello again"):
        payload = client_compress(text, compressor=c)
        assert parser.feed(frame(ws.OP_TEXT, payload, rsv1=True)) == [(ws.MESSAGE, False, text)]
    # fragmented compressed message: RSV1 only on the first frame
    payload = client_compress(b"x" * 5000, compressor=c)
    events = parser.feed(frame(ws.OP_BINARY, payload[:10], fin=False, rsv1=True) +
                         frame(ws.OP_CONT, payload[10:]))
    assert events == [(ws.MESSAGE, True, b"x" * 5000)]


def test_server_compression_roundtrip_and_no_context_takeover():
    for nct in (False, True):
        deflate = ws.Deflate(server_nct=nct)
        d = zlib.decompressobj(-15)
        for text in (b"abc" * 100, b"abc" * 100):
            data = deflate.compress(text)
            assert d.decompress(data + b"\x00\x00\xff\xff") == text
            if nct:
                d = zlib.decompressobj(-15)


def test_zip_bomb_refused_1009():
    bomb = client_compress(b"\x00" * (64 << 20))
    parser = ws.FrameParser(max_message=1 << 20, deflate=ws.Deflate())
    with pytest.raises(ws.ProtocolError) as e:
        parser.feed(frame(ws.OP_BINARY, bomb, rsv1=True))
    assert e.value.code == 1009


def test_rsv1_on_continuation_refused():
    parser = ws.FrameParser(deflate=ws.Deflate())
    with pytest.raises(ws.ProtocolError):
        parser.feed(frame(ws.OP_TEXT, b"a", fin=False) + frame(ws.OP_CONT, b"b", rsv1=True))
