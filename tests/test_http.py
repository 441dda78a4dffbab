"""Unit tests of the pure HTTP readers: every split, hostile input."""

import random

import pytest

from bb import http


def splits(data):
    """The same bytes whole, one byte at a time, and in random pieces."""
    yield [data]
    yield [data[i:i + 1] for i in range(len(data))]
    rnd = random.Random(len(data))
    for _ in range(5):
        pieces, pos = [], 0
        while pos < len(data):
            n = rnd.randint(1, 17)
            pieces.append(data[pos:pos + n])
            pos += n
        yield pieces


def read_head(pieces, max_headers=64):
    reader = http.HeadReader(max_headers)
    for i, piece in enumerate(pieces):
        head = reader.feed(piece)
        if head is not None:
            return head, reader.rest + b"".join(pieces[i + 1:])
    return None, b""


def head_status(raw, max_headers=64):
    """The status a request head gets (200 when it parses)."""
    try:
        for pieces in splits(raw):
            head, _ = read_head(pieces, max_headers)
            if head is None:
                return None
        return 200
    except http.HTTPError as e:
        return e.status


VALID = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /p?q=1&r=%20 HTTP/1.1\r\nHost: example.com:8080\r\nAccept: */*\r\nX-Empty:\r\n\r\n",
    b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello",
    b"GET / HTTP/1.0\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET http://other.example/x?y HTTP/1.1\r\nHost: a\r\n\r\n",
    b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",    # RFC 9112 §2.2 leading CRLF
    b"PUT /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
]


@pytest.mark.parametrize("raw", VALID)
def test_valid_requests_parse_the_same_for_every_split(raw):
    results = []
    for pieces in splits(raw):
        head, rest = read_head(pieces)
        assert head is not None
        results.append((head.method, head.target, head.version, head.host, head.headers,
                        head.content_length, head.chunked, head.keep_alive, rest))
    assert all(r == results[0] for r in results)


def test_request_fields():
    head, rest = read_head([b"POST /a%20b?x=1 HTTP/1.1\r\nHost: Example.COM\r\n"
                            b"Content-Length: 3\r\nX-A: 1\r\nx-a: 2\r\n\r\nabcGET"])
    assert head.method == b"POST"
    assert head.path == b"/a%20b"
    assert head.query == b"x=1"
    assert head.host == b"example.com"
    assert head.content_length == 3
    assert head.get(b"x-a") == b"1, 2"
    assert head.keep_alive
    assert rest == b"abcGET"


def test_absolute_form_authority_wins_over_host():
    head, _ = read_head([b"GET http://Other.Example/x?y HTTP/1.1\r\nHost: a\r\n\r\n"])
    assert head.host == b"other.example"
    assert head.path == b"/x"
    assert head.query == b"y"


def test_keep_alive_rules():
    h10, _ = read_head([b"GET / HTTP/1.0\r\n\r\n"])
    assert not h10.keep_alive
    h10k, _ = read_head([b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"])
    assert h10k.keep_alive
    h11c, _ = read_head([b"GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, close\r\n\r\n"])
    assert not h11c.keep_alive


def test_expect_and_upgrade():
    h, _ = read_head([b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\n"
                      b"Content-Length: 1\r\n\r\n"])
    assert h.expect_continue
    h, _ = read_head([b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\n"
                      b"Upgrade: WebSocket\r\n\r\n"])
    assert h.upgrade == b"websocket"
    h, _ = read_head([b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n"])
    assert h.upgrade is None    # Upgrade without Connection: upgrade


HOSTILE = [
    # (raw head, status, what it is)
    (b"GARBAGE\r\n\r\n", 400, "request line without spaces"),
    (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "double space in request line"),
    (b"GET / HTTP/1.1 extra\r\nHost: a\r\n\r\n", 400, "four request line fields"),
    (b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "method is not a token"),
    (b"GET / HTTP/1.1\nHost: a\n\n", 400, "bare LF line ends (smuggling: parsers disagree)"),
    (b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", 400, "one bare LF inside the head"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400, "obs-fold continuation line"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX : b\r\n\r\n", 400, "space before colon (RFC 9112 §5.1)"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", 400, "header line without colon"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400, "NUL byte in a value"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400, "lone CR in a value"),
    (b"GET /\x00 HTTP/1.1\r\nHost: a\r\n\r\n", 400, "NUL in the target"),
    (b"GET / HTTP/1.1\r\n\r\n", 400, "HTTP/1.1 without Host"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "two Host headers"),
    (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "space in Host"),
    (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400, "slash in Host"),
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, "HTTP/2.0 request line"),
    (b"GET / HTTP/1.x\r\nHost: a\r\n\r\n", 400, "malformed version"),
    (b"GET / http/1.1\r\nHost: a\r\n\r\n", 400, "lower-case version"),
    (b"GET foo HTTP/1.1\r\nHost: a\r\n\r\n", 400, "relative target"),
    (b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", 501, "CONNECT (not a forward proxy)"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400,
     "conflicting Content-Length (smuggling)"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n", 400,
     "conflicting Content-Length list"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400, "negative Content-Length"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", 400, "signed Content-Length"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", 400,
     "overflowing Content-Length"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", 400, "hex Content-Length"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
     400, "CL.TE request smuggling"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
     400, "TE.CL request smuggling"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501,
     "transfer coding other than chunked"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 501,
     "chunked not last"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 501,
     "TE obfuscation"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
     501, "chunked applied twice"),
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "TE in HTTP/1.0"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n", 417, "unknown expectation"),
]


@pytest.mark.parametrize("raw,status,what", HOSTILE, ids=[h[2] for h in HOSTILE])
def test_hostile_heads_get_their_status(raw, status, what):
    assert head_status(raw) == status


def test_too_many_headers_431():
    raw = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(
        b"X-%d: v\r\n" % i for i in range(10)) + b"\r\n"
    assert head_status(raw, max_headers=10) == 431
    assert head_status(raw, max_headers=11) == 200


def test_huge_head_431_before_it_ends():
    reader = http.HeadReader()
    reader.feed(b"GET / HTTP/1.1\r\nHost: a\r\n")
    with pytest.raises(http.HTTPError) as e:
        for _ in range(100):
            reader.feed(b"X-Long: " + b"a" * 1000 + b"\r\n")
    assert e.value.status == 431


def test_long_request_line_414_before_it_ends():
    reader = http.HeadReader()
    with pytest.raises(http.HTTPError) as e:
        reader.feed(b"GET /" + b"a" * 9000)
    assert e.value.status == 414


def test_bare_lf_found_before_the_head_ends():
    reader = http.HeadReader()
    with pytest.raises(http.HTTPError) as e:
        reader.feed(b"GET / HTTP/1.1\nHost: a\n")
    assert e.value.status == 400


def test_slow_byte_by_byte_head_is_linear():
    # A 60 KB head fed byte by byte must not rescan everything each time.
    raw = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: " + b"a" * 60000 + b"\r\n\r\n"
    reader = http.HeadReader()
    head = None
    for i in range(len(raw)):
        head = reader.feed(raw[i:i + 1])
    assert head is not None


# -- bodies ------------------------------------------------------------------------

def dechunk(pieces):
    reader = http.ChunkedReader()
    out = []
    done = False
    rest = b""
    for i, piece in enumerate(pieces):
        data, done = reader.feed(piece)
        out.extend(data)
        if done:
            rest = reader.rest + b"".join(pieces[i + 1:])
            break
    return b"".join(out), done, rest


CHUNKED_VALID = [
    (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
    (b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", b"hello world"),
    (b"A\r\n0123456789\r\n0\r\nTrailer: x\r\nOther: y\r\n\r\n", b"0123456789"),
    (b"0000005\r\nhello\r\n0\r\n\r\n", b"hello"),
    (b"0\r\n\r\n", b""),
]


@pytest.mark.parametrize("raw,expected", CHUNKED_VALID)
def test_chunked_every_split(raw, expected):
    for pieces in splits(raw + b"NEXT"):
        body, done, rest = dechunk(pieces)
        assert done
        assert body == expected
        assert rest == b"NEXT"


CHUNKED_HOSTILE = [
    (b"-1\r\nx\r\n0\r\n\r\n", "negative chunk size"),
    (b"fffffffffffffffff\r\n", "chunk size overflow: 17 hex digits"),
    (b"0x5\r\nhello\r\n0\r\n\r\n", "0x prefix"),
    (b"5\r\nhelloXX0\r\n\r\n", "missing CRLF after data (smuggling)"),
    (b"5\r\nhello\n0\r\n\r\n", "bare LF after data"),
    (b"5\nhello\r\n0\r\n\r\n", "bare LF after size"),
    (b"\r\nhello\r\n", "empty size"),
    (b"5 5\r\nhello\r\n", "space inside the size"),
    (b"0\r\nBad Trailer\r\n\r\n", "malformed trailer"),
    (b"5;\x00\r\nhello\r\n0\r\n\r\n", "NUL in chunk extension"),
]


@pytest.mark.parametrize("raw,what", CHUNKED_HOSTILE, ids=[c[1] for c in CHUNKED_HOSTILE])
def test_chunked_hostile(raw, what):
    for pieces in splits(raw):
        with pytest.raises(http.HTTPError) as e:
            dechunk(pieces)
        assert e.value.status in (400, 431)


def test_chunk_size_line_limit():
    reader = http.ChunkedReader()
    with pytest.raises(http.HTTPError):
        reader.feed(b"5;" + b"x" * 5000)


def test_length_reader_splits_and_rest():
    for pieces in splits(b"helloworldNEXT"):
        reader = http.LengthBodyReader(10)
        got = []
        for i, p in enumerate(pieces):
            data, done = reader.feed(p)
            got.extend(data)
            if done:
                rest = reader.rest + b"".join(pieces[i + 1:])
                break
        assert b"".join(got) == b"helloworld"
        assert rest == b"NEXT"


# -- node responses ----------------------------------------------------------------------

def test_response_head_framing():
    r = http.parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    assert (r.status, r.content_length, r.chunked, r.close) == (200, 5, False, False)
    r = http.parse_response_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                                 b"Connection: close\r\n\r\n")
    assert r.chunked and r.close and r.content_length is None
    r = http.parse_response_head(b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\n\r\nextra")
    assert r.keep_alive and r.extra == b"extra"


def test_response_head_without_blank_line_is_closed_for_the_node():
    r = http.parse_response_head(b"HTTP/1.1 204 No Content\r\nX: y")
    assert r.head == b"HTTP/1.1 204 No Content\r\nX: y\r\n\r\n"


@pytest.mark.parametrize("raw", [
    b"garbage", b"HTTP/1.1 2000 OK\r\n\r\n", b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/1.1 200 OK\nX: y\n\n", b"HTTP/1.1 200 OK\r\nX: a\x00\r\n\r\n",
])
def test_bad_response_heads(raw):
    with pytest.raises(http.BadResponse):
        http.parse_response_head(raw)


def test_chunk_encoder_and_remove_header():
    assert b"".join(http.chunk(b"hello")) == b"5\r\nhello\r\n"
    assert b"".join(http.chunk(b"x" * 300)).startswith(b"12c\r\n")
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX: y\r\n\r\n"
    assert http.remove_header(head, b"transfer-encoding") == b"HTTP/1.1 200 OK\r\nX: y\r\n\r\n"


def test_error_response_is_complete():
    raw = http.error_response(404, "no such host")
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 404 Not Found")
    assert b"Content-Length: %d" % len(body) in head
    assert b"Connection: close" in head
