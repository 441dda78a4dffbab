"""One client connection: its socket, buffers, and the request in progress.

A Connection reads request heads and bodies with the pure readers of
``bb.http``, hands them to its session's node through the router, and
frames what the node answers (``node_*`` methods, called by the router).
Only one request per connection is with a node at a time: pipelined
requests wait in the input buffer until the response before them is
complete (spec §4.4).

Writes are batched: ``write`` queues buffers and marks the connection dirty;
the server flushes dirty connections once per loop iteration (and after
each ZeroMQ batch) with one ``send``/``sendmsg`` each.  Idle keep-alive
connections hold no buffers.

Invariant: ``close`` is idempotent and every path that can close checks
``closed`` before touching the socket again.
"""

import logging
import socket
import ssl

from . import http, uwsgi, wsendpoint
from .router import FAILED, QUEUED, RouteError

log = logging.getLogger("blastbeat.conn")

LINGER_TIME = 2.0
RETRY_BODY_LIMIT = 1 << 20
PIPELINE_LIMIT = 1 << 16
RECV_SIZE = 1 << 16
MAX_IOV = 512

# Reasons to stop reading from the client (bit mask).
PAUSE_NODE = 1          # the node's ZeroMQ pipe is full
PAUSE_PIPELINE = 2      # a response is in progress and enough input waits
PAUSE_CLOSING = 4

# Response framing modes.
R_LENGTH, R_CHUNKED, R_UNTIL_END, R_NONE = range(4)


class Exchange:
    """One request and its response."""

    __slots__ = ("req", "body_reader", "env", "body_kept", "body_kept_size", "body_done", "hops",
                 "head_sent", "mode", "remaining", "keep_alive", "raw_chunk_reader",
                 "status", "bytes_out", "started", "vhost")

    def __init__(self, req, vhost, started):
        self.req = req
        self.vhost = vhost
        self.body_reader = None
        self.env = None
        self.body_kept = []         # body pieces kept for a retry (None: too big)
        self.body_kept_size = 0
        self.body_done = True
        self.hops = 0
        self.head_sent = False
        self.mode = None
        self.remaining = 0
        self.keep_alive = False
        self.raw_chunk_reader = None
        self.status = 0
        self.bytes_out = 0
        self.started = started


class Connection:
    __slots__ = ("server", "loop", "router", "sock", "watcher", "listener", "tls",
                 "peer", "remote_addr", "remote_port", "head_reader", "inbuf",
                 "out", "outlen", "dirty", "closed", "session", "exchange",
                 "paused", "last_activity", "head_started", "timer", "timeout",
                 "closing", "lingering", "ws", "__weakref__")

    def __init__(self, server, sock, peer, listener, tls=False):
        self.server = server
        self.loop = server.loop
        self.router = server.router
        self.sock = sock
        self.listener = listener
        self.tls = tls
        self.peer = peer
        self.remote_addr = peer[0].encode() if isinstance(peer, tuple) else b""
        self.remote_port = b"%d" % peer[1] if isinstance(peer, tuple) else b"0"
        self.head_reader = None
        self.inbuf = b""
        self.out = []
        self.outlen = 0
        self.dirty = False
        self.closed = False
        self.closing = False
        self.lingering = False
        self.session = None
        self.exchange = None
        self.paused = 0
        self.ws = None
        now = self.loop.now
        self.last_activity = now
        self.head_started = now
        self.timeout = server.config.timeout
        self.timer = self.loop.call_at(
            now + min(self.timeout, server.config.header_timeout), self._on_timer)
        self.watcher = self.loop.io(sock, self._on_readable, self._on_writable)
        self.watcher.want_read(True)

    def __repr__(self):
        return "<client %s:%s>" % (self.remote_addr.decode(), self.remote_port.decode())

    # -- timers --------------------------------------------------------------------

    def _on_timer(self):
        """One timer per connection, re-armed lazily (libev's idiom)."""
        if self.closed:
            return
        now = self.loop.now
        if self.lingering:
            self.close("linger time over", notify=False)
            return
        if self.ws is not None:
            deadline = self.ws.timer_deadline(now)
            if deadline is not None and not self.closed:
                self.timer = self.loop.call_at(deadline, self._on_timer)
            return
        deadline = self.last_activity + self.timeout
        what = "idle for %gs" % self.timeout
        head_timeout = self.server.config.header_timeout
        if self.head_started is not None and self.head_started + head_timeout < deadline:
            deadline = self.head_started + head_timeout
            what = "request head not complete within %gs" % head_timeout
        if now >= deadline:
            self.server.stats["timeouts"] += 1
            log.info("%r closed: %s", self, what)
            self.close(what)
            return
        self.timer = self.loop.call_at(deadline, self._on_timer)

    def _arm_head_timer(self):
        """A head arrives in pieces: make sure the timer fires by its deadline."""
        deadline = self.head_started + self.server.config.header_timeout
        if self.timer.when > deadline:
            self.timer.cancel()
            self.timer = self.loop.call_at(deadline, self._on_timer)

    # -- reading -------------------------------------------------------------------

    def _on_readable(self):
        try:
            data = self.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError,
                ssl.SSLWantWriteError):
            return
        except (OSError, ssl.SSLError) as e:
            self.close("read error: %s" % e)
            return
        if not data:
            self.close("client closed the connection" if not self.lingering else "linger done",
                       notify=not self.lingering)
            return
        if self.tls:
            # Decrypted bytes can wait inside the SSL object while the
            # kernel socket is not readable: read until the SSL object is dry.
            parts = None
            while self.sock.pending():
                try:
                    more = self.sock.recv(RECV_SIZE)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                    break
                except (OSError, ssl.SSLError):
                    break
                if not more:
                    break
                if parts is None:
                    parts = [data]
                parts.append(more)
            if parts is not None:
                data = b"".join(parts)
        if self.lingering:
            return
        self.last_activity = self.loop.now
        self.feed(data)

    def feed(self, data):
        """Process bytes from the client according to the connection state."""
        if self.closing:
            return      # the answer is written; what follows is dropped
        if self.ws is not None:
            self.ws.feed(data)
            return
        ex = self.exchange
        if ex is None and self.inbuf:
            # Pipelined bytes received earlier come first.
            data = self.inbuf + data
            self.inbuf = b""
        while not self.closed:
            if ex is not None:
                if ex.body_reader is not None:
                    data = self._feed_body(ex, data)
                    if data is None or self.closed:
                        return
                if data:
                    # Pipelined: wait for the response before this request.
                    self.inbuf += data
                    if len(self.inbuf) > PIPELINE_LIMIT:
                        self.pause(PAUSE_PIPELINE)
                return
            reader = self.head_reader
            if reader is None:
                reader = self.head_reader = http.HeadReader(self.server.config.max_headers)
                if self.head_started is None:
                    self.head_started = self.loop.now
            try:
                req = reader.feed(data)
            except http.HTTPError as e:
                self.server.stats["bad_requests"] += 1
                log.info("%r bad request (%d): %s", self, e.status, e.message)
                self.fail(e.status, e.message)
                return
            if req is None:
                self._arm_head_timer()
                return
            data = reader.rest
            self.head_reader = None
            self.head_started = None
            ex = self._start_exchange(req)
            if ex is None or self.ws is not None:
                if self.ws is not None and data:
                    self.ws.feed(data)
                return
            if not data and ex.body_reader is None:
                return

    def _feed_body(self, ex, data):
        """Stream body bytes to the node; return what follows the body."""
        try:
            pieces, done = ex.body_reader.feed(data)
        except http.HTTPError as e:
            log.info("%r bad request body (%d): %s", self, e.status, e.message)
            self.fail(e.status, e.message)
            return None
        if pieces:
            # One message per read, however the client chunked it: a body
            # of one-byte chunks must not become a message per byte.
            self._send_body(ex, pieces[0] if len(pieces) == 1 else b"".join(pieces))
        if done:
            rest = ex.body_reader.rest
            if isinstance(ex.body_reader, http.ChunkedReader):
                self._send_body(ex, b"", keep=False)
            ex.body_reader = None
            ex.body_done = True
            return rest
        return b""

    def _send_body(self, ex, piece, keep=True):
        if self.session is None or self.session.ended:
            return
        kept = ex.body_kept
        if kept is not None and keep:
            ex.body_kept_size += len(piece)
            if ex.body_kept_size <= RETRY_BODY_LIMIT:
                kept.append(piece)
            else:
                ex.body_kept = None
        if self.router.send(self.session, b"body", piece) == QUEUED:
            self.pause(PAUSE_NODE)

    # -- requests ---------------------------------------------------------------------

    def _start_exchange(self, req):
        self.server.stats["requests"] += 1
        vhost = self.listener.find_vhost(req.host)
        ex = Exchange(req, vhost, self.loop.now)
        self.exchange = ex
        if vhost is None:
            self.fail(404, "no virtual host for %s" % (req.host or b"").decode("latin-1"), ex)
            return None
        if req.upgrade is not None and req.upgrade != b"h2c":
            if req.upgrade != b"websocket":
                self.fail(400, "unsupported Upgrade", ex)
                return None
            return wsendpoint.upgrade(self, ex, req, vhost)
        if not self.prepare_env(ex, req, vhost):
            return None
        sent = self.router.send(self.session, b"uwsgi", ex.env)
        if sent == QUEUED:
            self.pause(PAUSE_NODE)
        elif sent == FAILED and not self._retry_elsewhere(ex):
            return None
        if req.chunked:
            ex.body_reader = http.ChunkedReader()
            ex.body_done = False
        elif req.content_length:
            ex.body_reader = http.LengthBodyReader(req.content_length)
            ex.body_done = False
        if ex.body_reader is not None and req.expect_continue:
            self.write(http.CONTINUE)
        return ex

    def prepare_env(self, ex, req, vhost):
        """Session, memory check and uwsgi env (``ex.env``) of a request
        about to go to a node; False once the client got an error."""
        if not self.ensure_session(ex, vhost):
            return False
        if self.server.over_memory():
            self.fail(503, "server memory limit reached", ex)
            return False
        try:
            ex.env = uwsgi.request_env(req, vhost.server_name, self.server_port(vhost),
                                       self.remote_addr, self.remote_port, self.tls)
        except uwsgi.PacketTooLarge as e:
            self.fail(431, str(e), ex)
            return False
        return True

    def server_port(self, vhost):
        if vhost.server_port is not None:
            return b"%d" % vhost.server_port
        # No port in the name: the scheme's default on plain HTTP (spec
        # §4.2), the listener's on TLS (443 on the usual port).
        return b"%d" % self.listener.port if self.tls else b"80"

    def ensure_session(self, ex, vhost):
        session = self.session
        if session is not None and not session.ended:
            if session.vhost is vhost:
                if not session.node.available and not self.router.move_session(session):
                    self.fail(503, "no node of %s is available" % vhost.name, ex)
                    return False
                return True
            # A keep-alive connection that changes virtual host starts over.
            self.router.end_session(session)
            self.session = None
        try:
            self.session = self.router.open_session(self, vhost)
        except RouteError as e:
            self.fail(e.status, e.message, ex)
            return False
        self.timeout = vhost.timeout
        return True

    def _retry_elsewhere(self, ex):
        """Give the request to another node (retry, node lost).  False: failed."""
        session = self.session
        while True:
            if ex.head_sent:
                self.close("node lost during the response")
                return False
            if ex.hops >= self.router.max_hops:
                self.fail(502, "request retried %d times" % ex.hops, ex)
                return False
            if ex.body_kept is None:
                self.fail(502, "cannot retry: request body over %d bytes" % RETRY_BODY_LIMIT, ex)
                return False
            ex.hops += 1
            old = session.node
            if not self.router.move_session(session):
                self.fail(503 if not old.available else 502,
                          "no other node of %s is available" % session.vhost.name, ex)
                return False
            log.info("%r request retried on node %s (hop %d)", self, session.node.name, ex.hops)
            if self.router.send(session, b"uwsgi", ex.env) == FAILED:
                continue
            for piece in ex.body_kept:
                self.router.send(session, b"body", piece)
            if ex.body_done and ex.req.chunked:
                self.router.send(session, b"body", b"")
            return True

    # -- node messages (called by the router) ----------------------------------------------

    def node_headers(self, body):
        if self.ws is not None:
            self.ws.ignored_head(body)
            return
        ex = self.exchange
        if ex is None:
            return
        if ex.head_sent and ex.mode is not None:
            log.debug("%r second head from node ignored", self)
            return
        try:
            resp = http.parse_response_head(body)
        except http.BadResponse as e:
            log.warning("%r node %s sent a bad response head: %s", self,
                        self.session.node.name, e)
            if ex.head_sent:
                self.close("bad response head")
            else:
                self.fail(502, "bad response head from node", ex)
            return
        req = ex.req
        ex.status = resp.status
        if resp.status < 200:
            # Interim responses: never to HTTP/1.0 clients (RFC 9110 §15.2).
            if resp.status != 101 and not req.http10:
                self.write(resp.head)
                ex.bytes_out += len(resp.head)
            return
        head = resp.head
        if req.method == b"HEAD" or resp.status in (204, 304):
            ex.mode = R_NONE
        elif resp.chunked:
            if req.http10:
                # HTTP/1.0 has no chunked coding: data goes raw, close ends it.
                head = http.remove_header(head, b"transfer-encoding")
                ex.mode = R_UNTIL_END
            else:
                ex.mode = R_CHUNKED
        elif resp.content_length is not None:
            ex.mode = R_LENGTH
            ex.remaining = resp.content_length
        else:
            ex.mode = R_UNTIL_END
        ex.keep_alive = (req.keep_alive and not resp.close and ex.mode != R_UNTIL_END
                         and (not req.http10 or resp.keep_alive)
                         and not self.server.stopping)
        if not ex.keep_alive and not resp.close:
            # RFC 9112 §9.6: say that the connection closes after this.
            head = head[:-2] + b"Connection: close\r\n\r\n"
        ex.head_sent = True
        self.write(head)
        ex.bytes_out += len(head)
        if resp.extra:
            self.node_body(resp.extra)
        elif ex.mode == R_NONE or (ex.mode == R_LENGTH and ex.remaining == 0):
            self._response_done(ex)

    def node_body(self, body):
        ex = self.exchange
        if ex is None or self.ws is not None:
            return
        mode = ex.mode
        if mode is None:
            # Raw output with no head parsed: framing unknown, `end` ends it.
            ex.mode = mode = R_UNTIL_END
            ex.head_sent = True
            ex.keep_alive = False
        if mode == R_LENGTH:
            n = ex.remaining
            if len(body) > n:
                log.warning("%r node %s sent %d bytes beyond Content-Length; dropped",
                            self, self.session.node.name, len(body) - n)
                body = body[:n]
            ex.remaining = n - len(body)
            self.write(body)
            ex.bytes_out += len(body)
            if ex.remaining == 0:
                self._response_done(ex)
        elif mode == R_CHUNKED:
            # The node chunked it itself: follow the chunks to find the end.
            self.write(body)
            ex.bytes_out += len(body)
            reader = ex.raw_chunk_reader
            if reader is None:
                reader = ex.raw_chunk_reader = http.ChunkedReader()
            try:
                _, done = reader.feed(body)
            except http.HTTPError:
                log.warning("%r node %s sent a malformed chunked body", self,
                            self.session.node.name)
                self.close("malformed chunked body from node")
                return
            if done:
                self._response_done(ex)
        elif mode == R_UNTIL_END:
            self.write(body)
            ex.bytes_out += len(body)
        # R_NONE: a body for HEAD/204/304 is not sent.

    def node_chunk(self, body):
        ex = self.exchange
        if ex is None or self.ws is not None:
            return
        if ex.mode is None:
            ex.mode = R_UNTIL_END
            ex.head_sent = True
            ex.keep_alive = False
        if ex.mode == R_LENGTH:
            # The head announced a length: chunk data is counted as body.
            if body:
                self.node_body(body)
            return
        if ex.req.http10 or ex.mode == R_UNTIL_END:
            if body:
                self.write(body)
                ex.bytes_out += len(body)
            elif ex.req.http10:
                self.close_after_flush()
            return
        if ex.mode == R_NONE:
            return
        if body:
            self.writev(http.chunk(body))
            ex.bytes_out += len(body)
        else:
            self.write(http.LAST_CHUNK)
            self._response_done(ex)

    def node_end(self, body):
        if self.ws is not None:
            self.ws.node_end()
            return
        if self.session is not None:
            # The node ended the session itself: it is not told again.
            self.router.end_session(self.session, notify=False)
        ex = self.exchange
        if ex is not None and not ex.head_sent:
            self.fail(502, "node ended the session without a response", ex)
            return
        if ex is not None:
            self.server.access(self, ex)
            self.exchange = None
        self.close_after_flush()

    def node_retry(self, body):
        ex = self.exchange
        if ex is None or self.ws is not None:
            return
        if ex.head_sent:
            log.warning("%r retry after the response started ignored", self)
            return
        self._retry_elsewhere(ex)

    def node_lost(self):
        """The session's node went off: move a waiting request elsewhere."""
        ex = self.exchange
        if self.ws is not None:
            self.close("node lost")
            return
        if ex is None:
            return
        if ex.head_sent:
            self.close("node lost during the response")
        else:
            self._retry_elsewhere(ex)

    def node_drained(self):
        self.resume(PAUSE_NODE)

    def node_websocket(self, body):
        if self.ws is not None:
            self.ws.send_message(body, False)

    def node_websocket_binary(self, body):
        if self.ws is not None:
            self.ws.send_message(body, True)

    # -- response completion ---------------------------------------------------------------

    def _response_done(self, ex):
        """The response is complete by its framing."""
        ex.remaining = 0
        # A response complete before the request body was read closes the
        # connection (_finish_exchange sees body_done False).
        self._finish_exchange(ex)

    def _finish_exchange(self, ex):
        self.server.access(self, ex)
        self.exchange = None
        if not ex.keep_alive or not ex.body_done or self.server.stopping:
            self.close_after_flush()
            return
        if self.paused & PAUSE_PIPELINE:
            self.resume(PAUSE_PIPELINE)
        if self.inbuf:
            # Not now: we may be deep in a ZeroMQ batch.  feed() takes
            # inbuf first, whoever calls it next.
            self.loop.call_soon(self._feed_pipelined)

    def _feed_pipelined(self):
        if not self.closed and not self.closing and self.exchange is None and self.inbuf:
            self.feed(b"")

    # -- errors --------------------------------------------------------------------------------

    def fail(self, status, message, ex=None, extra_headers=b""):
        """Answer with an error of the server's own and close."""
        ex = ex or self.exchange
        if ex is not None:
            if ex.head_sent:
                self.close(message)
                return
            ex.status = status
            ex.head_sent = True
            self.server.access(self, ex)
        self.exchange = None
        # Whatever is queued (an earlier pipelined response) goes out first.
        self.write(http.error_response(status, message,
                                       extra_headers))
        self.close_after_flush()

    # -- writing ---------------------------------------------------------------------------------

    def write(self, data):
        self.out.append(data)
        self.outlen += len(data)
        self.server.buffered += len(data)
        if not self.dirty:
            self.dirty = True
            self.server.dirty.append(self)

    def writev(self, parts):
        n = 0
        for p in parts:
            n += len(p)
        self.out.extend(parts)
        self.outlen += n
        self.server.buffered += n
        if not self.dirty:
            self.dirty = True
            self.server.dirty.append(self)

    def flush(self):
        self.dirty = False
        if self.closed:
            return
        out = self.out
        if out:
            try:
                if len(out) == 1:
                    sent = self.sock.send(out[0])
                elif self.tls:
                    # No sendmsg on TLS: coalesce small buffers into one
                    # record-sized write, never re-join a large backlog.
                    first = out[0]
                    if len(first) < RECV_SIZE:
                        i = size = 0
                        while i < len(out) and size < RECV_SIZE:
                            size += len(out[i])
                            i += 1
                        first = b"".join(out[:i])
                        out[:i] = [first]
                    sent = self.sock.send(first)
                else:
                    sent = self.sock.sendmsg(out[:MAX_IOV])
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError,
                    ssl.SSLWantReadError):
                sent = 0
            except (OSError, ssl.SSLError) as e:
                self.close("write error: %s" % e)
                return
            if sent:
                self.last_activity = self.loop.now
                self.outlen -= sent
                self.server.buffered -= sent
                if not self.outlen:
                    out.clear()
                else:
                    i = 0
                    while sent:
                        n = len(out[i])
                        if n <= sent:
                            sent -= n
                            i += 1
                        else:
                            out[i] = memoryview(out[i])[sent:]
                            sent = 0
                    del out[:i]
        if out:
            limit = self.server.config.writequeue_buffer
            # One message larger than the limit may wait alone (a 16 MiB
            # WebSocket message); data piling up behind it may not.
            if self.outlen > limit and self.outlen - len(out[-1]) > limit:
                self.server.stats["slow_clients"] += 1
                log.warning("%r closed: %d bytes queued, over writequeue-buffer",
                            self, self.outlen)
                self.close("client too slow")
                return
            self.watcher.want_write(True)
        else:
            if self.watcher.events & 2:
                self.watcher.want_write(False)
            if self.closing:
                self._linger()

    def _on_writable(self):
        self.flush()

    # -- flow control ------------------------------------------------------------------------------

    def pause(self, why):
        if not self.paused:
            self.watcher.want_read(False)
        self.paused |= why

    def resume(self, why):
        if self.paused & why:
            self.paused &= ~why
            if not self.paused and not self.closed:
                self.watcher.want_read(True)

    # -- closing -------------------------------------------------------------------------------------

    def close_after_flush(self):
        if self.closed or self.closing:
            return
        self.closing = True
        if self.session is not None:
            self.router.end_session(self.session)
            self.session = None
        if not self.dirty:
            self.flush()

    def _linger(self):
        """Half-close, then read and drop what the client still sends, so
        that the kernel does not answer it with a reset that destroys the
        response we just wrote."""
        if self.lingering or self.closed:
            return
        self.lingering = True
        if self.tls:
            self.close("done", notify=False)
            return
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close("done", notify=False)
            return
        self.paused = 0
        self.watcher.set(1)
        self.timer.cancel()
        self.timer = self.loop.call_later(LINGER_TIME, self._on_timer)

    def close(self, reason="closed", notify=True):
        """Close now.  The node gets ``end`` once if a session is open."""
        if self.closed:
            return
        self.closed = True
        self.watcher.stop()
        self.timer.cancel()
        if self.ws is not None:
            self.ws.connection_closed()
        if self.session is not None:
            self.router.end_session(self.session, notify)
            self.session = None
        if self.exchange is not None:
            self.server.access(self, self.exchange)
            self.exchange = None
        if self.tls and not self.lingering:
            try:
                self.sock.setblocking(False)
                self.sock.unwrap()
            except (OSError, ssl.SSLError, ValueError):
                pass
        try:
            self.sock.close()
        except OSError:
            pass
        self.server.buffered -= self.outlen
        self.out = []
        self.outlen = 0
        self.inbuf = b""
        self.server.forget(self)
        log.debug("%r closed: %s", self, reason)
