"""HTTP/1.1 wire format: request heads, request bodies, node response heads.

Pure code: every function and reader here takes bytes and returns values or
raises HTTPError; none of it touches a socket.  The connection feeds readers
whatever recv() returned, so each reader gives the same result whether the
bytes come whole, one at a time or in random pieces.

Strategy: a head is found with one ``bytes.find`` for the blank line, then
split and validated with C-speed helpers (``translate``, one regex scan)
instead of Python byte loops.  Strictness choices (request smuggling):

- bare LF as a line end is refused (RFC 9112 §2.2 allows it, but a front
  server that reads it differently from the backend is a smuggling vector);
- obs-fold (a header line starting with SP/HTAB) is refused with 400
  (RFC 9112 §5.2: "a server ... MUST either reject the message by sending a
  400 (Bad Request)" or replace it; we reject);
- whitespace between a field name and the colon is refused (RFC 9112 §5.1
  "MUST reject");
- Content-Length together with Transfer-Encoding, unequal duplicate
  Content-Length values, and codings other than a lone ``chunked`` are
  refused (RFC 9112 §6.1, §6.3).
"""

import re

MAX_REQUEST_LINE = 8192
MAX_HEAD = 65536
MAX_CHUNK_LINE = 4096
MAX_CHUNK_SIZE_DIGITS = 16
MAX_TRAILER = 16384

REASONS = {
    100: "Continue", 101: "Switching Protocols",
    200: "OK", 204: "No Content", 304: "Not Modified",
    400: "Bad Request", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout",
    411: "Length Required", 413: "Content Too Large", 414: "URI Too Long",
    417: "Expectation Failed", 426: "Upgrade Required",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}


class HTTPError(Exception):
    """A request the server must refuse; ``status`` is what the client gets."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


# RFC 9110 §5.6.2: tchar.  translate(None, _TCHAR) deletes every tchar, so a
# token is valid exactly when nothing is left.
_TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Bytes never allowed in a field value or request line once CRLFs are split
# off: NUL, other C0 controls except HTAB, DEL.  A lone CR also lands here.
_FORBIDDEN = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_HEAD_FORBIDDEN = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)")
_TARGET_FORBIDDEN = re.compile(rb"[\x00-\x20\x7f]")
_HOST_OK = re.compile(rb"(?:\[[0-9A-Fa-f:.]+(?:%[\w.~-]+)?\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::[0-9]{0,5})?")
_LOWER = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")
_HEX = frozenset(b"0123456789abcdefABCDEF")


def is_token(value):
    return bool(value) and not value.translate(None, _TCHAR)


def reason(status):
    return REASONS.get(status, "Unknown")


class RequestHead:
    """A parsed request head.  Header names are lower-cased bytes."""

    __slots__ = ("method", "target", "version", "headers", "host",
                 "keep_alive", "content_length", "chunked", "expect_continue",
                 "upgrade", "path", "query", "http10")

    def get(self, name, default=None):
        """Value of header ``name`` (lower-case bytes), repeats joined by ', '."""
        values = [v for n, v in self.headers if n == name]
        if not values:
            return default
        return b", ".join(values)

    def tokens(self, name):
        """Comma-separated tokens of a header, lower-cased (Connection, Upgrade)."""
        out = []
        for n, v in self.headers:
            if n == name:
                out.extend(t.strip().translate(_LOWER) for t in v.split(b","))
        return [t for t in out if t]

    @property
    def has_body(self):
        return self.chunked or bool(self.content_length)


def _parse_content_length(values):
    """RFC 9110 §8.6: a list of identical values is the one value."""
    result = None
    for raw in values:
        for item in raw.split(b","):
            item = item.strip(b" \t")
            if not item.isdigit() or len(item) > 18:
                raise HTTPError(400, "bad Content-Length %r" % item[:32])
            n = int(item)
            if result is not None and n != result:
                raise HTTPError(400, "conflicting Content-Length values")
            result = n
    return result


class HeadReader:
    """Incremental request-head reader.

    ``feed(data)`` returns a RequestHead once the blank line is seen (the
    bytes after it are in ``rest``), or None for "need more".  It raises
    HTTPError with the status the client should get.
    """

    __slots__ = ("max_headers", "max_head", "_buf", "_scanned", "rest")

    def __init__(self, max_headers=64, max_head=MAX_HEAD):
        self.max_headers = max_headers
        self.max_head = max_head
        self._buf = b""
        self._scanned = 0
        self.rest = b""

    def pending(self):
        """Bytes received of a head not complete yet."""
        return len(self._buf)

    def feed(self, data):
        buf = self._buf + data if self._buf else data
        # RFC 9112 §2.2: a server SHOULD ignore at least one empty line
        # (CRLF) received prior to the request-line.
        if buf[:2] == b"\r\n":
            buf = buf.lstrip(b"\r\n")
            self._scanned = 0
        start = self._scanned - 3 if self._scanned > 3 else 0
        end = buf.find(b"\r\n\r\n", start)
        if end < 0:
            self._check_partial(buf)
            self._buf = buf
            self._scanned = len(buf)
            return None
        if end + 4 > self.max_head:
            raise HTTPError(431, "request head larger than %d bytes" % self.max_head)
        self.rest = buf[end + 4:]
        self._buf = b""
        self._scanned = 0
        return parse_request_head(buf[:end], self.max_headers)

    def _check_partial(self, buf):
        """Fail early on an incomplete head: over a limit, or bare LF seen."""
        if len(buf) > self.max_head:
            raise HTTPError(431, "request head larger than %d bytes" % self.max_head)
        first_eol = buf.find(b"\n")
        if first_eol < 0:
            if len(buf) > MAX_REQUEST_LINE:
                raise HTTPError(414, "request line longer than %d bytes" % MAX_REQUEST_LINE)
        elif first_eol > MAX_REQUEST_LINE:
            raise HTTPError(414, "request line longer than %d bytes" % MAX_REQUEST_LINE)
        # Every LF received since the last call must follow a CR.
        new = self._scanned
        if buf.count(b"\n", new) != buf.count(b"\r\n", new - 1 if new else 0):
            raise HTTPError(400, "bare LF in request head")
        if buf.count(b"\r\n") > self.max_headers + 1:
            raise HTTPError(431, "more than %d header fields" % self.max_headers)


def parse_request_head(head, max_headers=64):
    """Parse a complete request head (without the final CRLFCRLF)."""
    lines = head.split(b"\r\n")
    if head.count(b"\n") != len(lines) - 1:
        raise HTTPError(400, "bare LF in request head")
    request_line = lines[0]
    if len(request_line) > MAX_REQUEST_LINE:
        raise HTTPError(414, "request line longer than %d bytes" % MAX_REQUEST_LINE)
    if len(lines) - 1 > max_headers:
        raise HTTPError(431, "more than %d header fields" % max_headers)
    parts = request_line.split(b" ")
    if len(parts) != 3:
        raise HTTPError(400, "malformed request line")
    method, target, version = parts
    if not is_token(method):
        raise HTTPError(400, "malformed method")
    if not target or _TARGET_FORBIDDEN.search(target):
        raise HTTPError(400, "malformed request target")
    if version == b"HTTP/1.1":
        http10 = False
    elif version == b"HTTP/1.0":
        http10 = True
    elif version[:5] == b"HTTP/" and len(version) == 8 and version[5:6].isdigit() \
            and version[6:7] == b"." and version[7:8].isdigit():
        raise HTTPError(505, "unsupported HTTP version")
    else:
        raise HTTPError(400, "malformed HTTP version")

    headers = []
    # Lone LFs were refused above, so only CRLF pairs and forbidden bytes
    # (NUL, controls, lone CR) can match here: one C-speed scan of the head.
    if _HEAD_FORBIDDEN.search(head):
        raise HTTPError(400, "control character in header section")
    host = None
    cl_values = None
    te = None
    connection = None
    expect = None
    upgrade = None
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            raise HTTPError(400, "obsolete line folding in header section")
        name, sep, value = line.partition(b":")
        if not sep:
            raise HTTPError(400, "header line without colon")
        if not is_token(name):
            raise HTTPError(400, "malformed header name %r" % name[:64])
        name = name.translate(_LOWER)
        value = value.strip(b" \t")
        headers.append((name, value))
        if name == b"host":
            if host is not None:
                raise HTTPError(400, "more than one Host header")
            if not _HOST_OK.fullmatch(value):
                raise HTTPError(400, "malformed Host header")
            host = value
        elif name == b"content-length":
            cl_values = [value] if cl_values is None else cl_values + [value]
        elif name == b"transfer-encoding":
            te = value if te is None else te + b", " + value
        elif name == b"connection":
            connection = value if connection is None else connection + b"," + value
        elif name == b"expect":
            expect = value
        elif name == b"upgrade":
            upgrade = value

    req = RequestHead()
    req.method = method
    req.target = target
    req.version = version
    req.http10 = http10
    req.headers = headers
    req.expect_continue = False
    req.upgrade = None
    if host is None and not http10:
        raise HTTPError(400, "HTTP/1.1 request without Host header")

    # Request target forms, RFC 9112 §3.2.
    if target[:1] == b"/":
        path = target
    elif target == b"*" and method == b"OPTIONS":
        path = target
    elif target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
        rest = target.split(b"://", 1)[1]
        slash = rest.find(b"/")
        authority = rest if slash < 0 else rest[:slash]
        path = b"/" if slash < 0 else rest[slash:]
        # RFC 9112 §3.2.2: the authority of an absolute-form target wins.
        if not authority or not _HOST_OK.fullmatch(authority):
            raise HTTPError(400, "malformed absolute-form target")
        host = authority
    elif method == b"CONNECT":
        raise HTTPError(501, "CONNECT is not supported")
    else:
        raise HTTPError(400, "malformed request target")
    qpos = path.find(b"?")
    if qpos >= 0:
        req.path = path[:qpos]
        req.query = path[qpos + 1:]
    else:
        req.path = path
        req.query = b""
    req.host = host.translate(_LOWER) if host is not None else None

    req.chunked = False
    req.content_length = None
    if te is not None:
        if http10:
            raise HTTPError(400, "Transfer-Encoding in an HTTP/1.0 request")
        if cl_values is not None:
            # RFC 9112 §6.1: CL.TE / TE.CL smuggling; refuse outright.
            raise HTTPError(400, "both Content-Length and Transfer-Encoding")
        codings = [c.strip(b" \t").translate(_LOWER) for c in te.split(b",")]
        if codings != [b"chunked"]:
            raise HTTPError(501, "unsupported Transfer-Encoding")
        req.chunked = True
    elif cl_values is not None:
        req.content_length = _parse_content_length(cl_values)

    conn_tokens = ()
    if connection is not None:
        conn_tokens = [t.strip(b" \t").translate(_LOWER) for t in connection.split(b",")]
    if http10:
        req.keep_alive = b"keep-alive" in conn_tokens
    else:
        req.keep_alive = b"close" not in conn_tokens
    if expect is not None and not http10:
        if expect.translate(_LOWER) != b"100-continue":
            raise HTTPError(417, "unsupported expectation")
        req.expect_continue = True
    if upgrade is not None and b"upgrade" in conn_tokens:
        req.upgrade = upgrade.translate(_LOWER)
    return req


class LengthBodyReader:
    """Body of known length.  ``feed`` returns (data, done); extra is in ``rest``."""

    __slots__ = ("remaining", "rest")

    def __init__(self, length):
        self.remaining = length
        self.rest = b""

    def feed(self, data):
        n = self.remaining
        if len(data) <= n:
            self.remaining = n - len(data)
            return [data] if data else [], self.remaining == 0
        self.remaining = 0
        self.rest = data[n:]
        return [data[:n]], True


_SIZE, _DATA, _DATA_CRLF, _TRAILER, _DONE = range(5)


class ChunkedReader:
    """De-chunks a chunked body (RFC 9112 §7.1).

    ``feed`` returns (list of data pieces, done).  Trailer fields are read
    and dropped.  Bytes after the final CRLF are in ``rest``.
    """

    __slots__ = ("_state", "_remaining", "_buf", "_trailer_bytes", "rest")

    def __init__(self):
        self._state = _SIZE
        self._remaining = 0
        self._buf = b""
        self._trailer_bytes = 0
        self.rest = b""

    def feed(self, data):
        if self._buf:
            data = self._buf + data
            self._buf = b""
        out = []
        pos = 0
        end = len(data)
        while pos < end:
            state = self._state
            if state == _DATA:
                take = min(self._remaining, end - pos)
                out.append(data[pos:pos + take] if (pos or take != end) else data)
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._state = _DATA_CRLF
            elif state == _DATA_CRLF:
                if end - pos < 2:
                    if data[pos:pos + 1] != b"\r":
                        raise HTTPError(400, "missing CRLF after chunk data")
                    break
                # Smuggling: anything but CRLF here means the two ends
                # disagree about where the chunk ended.
                if data[pos:pos + 2] != b"\r\n":
                    raise HTTPError(400, "missing CRLF after chunk data")
                pos += 2
                self._state = _SIZE
            elif state == _SIZE:
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    if end - pos > MAX_CHUNK_LINE:
                        raise HTTPError(400, "chunk size line too long")
                    if data.find(b"\n", pos) >= 0:
                        raise HTTPError(400, "bare LF in chunk size line")
                    break
                self._remaining = _chunk_size(data[pos:eol])
                pos = eol + 2
                self._state = _DATA if self._remaining else _TRAILER
            elif state == _TRAILER:
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    if end - pos > MAX_TRAILER or data.find(b"\n", pos) >= 0:
                        raise HTTPError(400, "malformed chunked trailer")
                    break
                line = data[pos:eol]
                pos = eol + 2
                if not line:
                    self._state = _DONE
                    self.rest = data[pos:]
                    return out, True
                self._trailer_bytes += len(line) + 2
                if self._trailer_bytes > MAX_TRAILER:
                    raise HTTPError(431, "chunked trailer too large")
                name, sep, _ = line.partition(b":")
                if not sep or not is_token(name) or _FORBIDDEN.search(line) \
                        or b"\n" in line:
                    raise HTTPError(400, "malformed trailer field")
            else:
                self.rest = data[pos:]
                return out, True
        if pos < end:
            self._buf = data[pos:]
        return out, self._state == _DONE


def _chunk_size(line):
    size, _, ext = line.partition(b";")
    size = size.rstrip(b" \t")
    if not size or len(size) > MAX_CHUNK_SIZE_DIGITS or not _HEX.issuperset(size):
        # Catches "-1", "0x10", "+5", over-long digit runs (integer overflow
        # in other parsers) and empty sizes.
        raise HTTPError(400, "malformed chunk size %r" % size[:32])
    if b"\n" in line or b"\r" in line or _FORBIDDEN.search(ext):
        raise HTTPError(400, "malformed chunk extension")
    return int(size, 16)


# ---------------------------------------------------------------- responses

class ResponseHead:
    """What the server must know of a node's response head to frame it."""

    __slots__ = ("status", "version", "content_length", "chunked",
                 "close", "keep_alive", "head", "extra")


class BadResponse(Exception):
    """A node response head the server cannot use (the client gets 502)."""


_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-9][0-9][0-9])(?: [^\r\n]*)?")


def parse_response_head(message):
    """Parse a node's ``headers`` message.

    A head not closed by a blank line is closed for the node (the seed's
    examples always close it, but a forgotten CRLF should not cost a 502).
    Bytes after the blank line are returned as ``extra`` body.
    """
    end = message.find(b"\r\n\r\n")
    if end < 0:
        head = message.rstrip(b"\r\n")
        extra = b""
    else:
        head = message[:end]
        extra = message[end + 4:]
    lines = head.split(b"\r\n")
    if head.count(b"\n") != len(lines) - 1:
        raise BadResponse("bare LF in response head")
    m = _STATUS_LINE.fullmatch(lines[0])
    if not m:
        raise BadResponse("malformed status line %r" % lines[0][:64])
    resp = ResponseHead()
    resp.status = int(m.group(1))
    resp.version = lines[0][:8]
    resp.content_length = None
    resp.chunked = False
    resp.close = False
    resp.keep_alive = False
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not is_token(name):
            raise BadResponse("malformed header line %r" % line[:64])
        if _FORBIDDEN.search(value):
            raise BadResponse("control character in header %r" % name[:64])
        name = name.translate(_LOWER)
        if name == b"content-length":
            try:
                n = _parse_content_length([value])
            except HTTPError:
                raise BadResponse("bad Content-Length") from None
            if resp.content_length is not None and resp.content_length != n:
                raise BadResponse("conflicting Content-Length")
            resp.content_length = n
        elif name == b"transfer-encoding":
            codings = [c.strip(b" \t").translate(_LOWER) for c in value.split(b",")]
            if codings and codings[-1] == b"chunked":
                resp.chunked = True
        elif name == b"connection":
            tokens = [t.strip(b" \t").translate(_LOWER) for t in value.split(b",")]
            if b"close" in tokens:
                resp.close = True
            if b"keep-alive" in tokens:
                resp.keep_alive = True
    if resp.chunked:
        resp.content_length = None
    resp.head = head + b"\r\n\r\n"
    resp.extra = extra
    return resp


def remove_header(head, name):
    """Return ``head`` (ending CRLFCRLF) without the header lines called ``name``."""
    lines = head[:-4].split(b"\r\n")
    kept = [lines[0]] + [l for l in lines[1:]
                         if l.partition(b":")[0].strip().translate(_LOWER) != name]
    return b"\r\n".join(kept) + b"\r\n\r\n"


def chunk(data):
    """One HTTP/1.1 chunk as a list of buffers (for sendmsg, no copy of data)."""
    return [b"%x\r\n" % len(data), data, b"\r\n"]


LAST_CHUNK = b"0\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def error_response(status, detail=None, extra_headers=b""):
    """A complete response the server sends itself: short text body, close."""
    text = "%d %s\n" % (status, reason(status))
    if detail:
        text += detail + "\n"
    body = text.encode("utf-8", "replace")
    return (b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n%s\r\n"
            % (status, reason(status).encode(), len(body), extra_headers)) + body
