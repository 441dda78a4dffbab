"""A WebSocket session on a client connection (spec §7).

The glue between ``bb.ws`` (pure protocol) and a Connection: the server
completes the handshake as soon as a node is chosen, sends the node the
``uwsgi`` env of the upgrade request, then turns client messages into
``websocket`` / ``websocket/binary`` node messages and node messages into
frames.  The server answers pings itself, pings idle clients every
``timeout``/2 and closes those that do not answer, and runs the closing
handshake in both directions.
"""

import logging

from . import http, ws
from .router import FAILED, QUEUED

log = logging.getLogger("blastbeat.ws")

CLOSE_WAIT = 5.0

OPEN, CLOSING, CLOSED = range(3)


def upgrade(conn, ex, req, vhost):
    """Validate the handshake, pick a node, answer 101.  Returns None."""
    try:
        response, deflate = ws.handshake(req)
    except http.HTTPError as e:
        conn.fail(e.status, e.message, ex, getattr(e, "headers", b""))
        return None
    if not conn.prepare_env(ex, req, vhost):
        return None
    if conn.router.send(conn.session, b"uwsgi", ex.env) == FAILED:
        conn.fail(503, "node %s is not reachable" % conn.session.node.name, ex)
        return None
    ex.status = 101
    ex.head_sent = True
    conn.write(response)
    ex.bytes_out += len(response)
    conn.server.access(conn, ex)
    conn.exchange = None
    conn.ws = WebSocket(conn, deflate)
    return None


class WebSocket:
    __slots__ = ("conn", "parser", "deflate", "state", "ping_sent", "node_ended", "page_open")

    def __init__(self, conn, deflate):
        self.conn = conn
        self.deflate = deflate
        self.parser = ws.FrameParser(conn.server.config.websocket_max_message, deflate)
        self.state = OPEN
        self.ping_sent = None
        self.node_ended = False
        self.page_open = False

    # -- from the client ---------------------------------------------------------------

    def feed(self, data):
        if self.state == CLOSED:
            return
        conn = self.conn
        try:
            events = self.parser.feed(data)
        except ws.ProtocolError as e:
            log.info("%r WebSocket protocol error (%d): %s", conn, e.code, e.reason)
            # Messages complete before the error still reach the node.
            self.fail(e.code, e.reason)
            return
        for event in events:
            kind = event[0]
            if kind == ws.MESSAGE:
                if self.state != OPEN or conn.session is None:
                    continue
                mtype = b"websocket/binary" if event[1] else b"websocket"
                sent = conn.router.send(conn.session, mtype, event[2])
                if sent == QUEUED:
                    conn.pause(1)
                elif sent == FAILED:
                    self.close(ws.CLOSE_INTERNAL, b"node unreachable")
                    return
            elif kind == ws.PING:
                if self.state == OPEN:
                    conn.writev(ws.encode_frame(ws.OP_PONG, event[1]))
            elif kind == ws.PONG:
                self.ping_sent = None
            elif kind == ws.CLOSE:
                self._client_close(event[1], event[2])
                return

    def _client_close(self, code, reason):
        conn = self.conn
        if self.state == OPEN:
            # Echo the code (RFC 6455 §5.5.1), then the server closes TCP.
            payload = ws.close_payload(code) if code is not None else b""
            conn.writev(ws.encode_frame(ws.OP_CLOSE, payload))
        self.state = CLOSED
        conn.close_after_flush()

    # -- from the node ------------------------------------------------------------------------

    def send_message(self, payload, binary):
        if self.state != OPEN:
            return
        opcode = ws.OP_BINARY if binary else ws.OP_TEXT
        deflate = self.deflate
        if deflate is not None and len(payload) >= deflate.MIN_SIZE:
            self.conn.writev(ws.encode_frame(opcode, deflate.compress(payload), rsv1=True))
        else:
            self.conn.writev(ws.encode_frame(opcode, payload))

    def ignored_head(self, head):
        """A page the node sent for the upgrade's env is not written (spec §7).

        A page with neither Content-Length nor chunked coding can only end
        with ``end`` (the seed's Ruby example does that): that ``end`` ends
        the page, not the WebSocket."""
        try:
            resp = http.parse_response_head(head)
        except http.BadResponse:
            return
        if resp.content_length is None and not resp.chunked:
            self.page_open = True

    def node_end(self):
        """The node ended the session: close 1000, then TCP."""
        if self.page_open:
            self.page_open = False
            return
        self.node_ended = True
        conn = self.conn
        if conn.session is not None:
            conn.router.end_session(conn.session, notify=False)
            conn.session = None
        self.close(ws.CLOSE_NORMAL, b"")

    # -- closing ---------------------------------------------------------------------------------

    def close(self, code, reason=b""):
        """Start the closing handshake; TCP closes when the client answers."""
        if self.state != OPEN:
            return
        self.state = CLOSING
        conn = self.conn
        conn.writev(ws.encode_frame(ws.OP_CLOSE, ws.close_payload(code, reason)))
        if conn.session is not None:
            conn.router.end_session(conn.session)
            conn.session = None
        conn.timer.cancel()
        conn.timer = conn.loop.call_later(CLOSE_WAIT, conn._on_timer)

    def fail(self, code, reason):
        """A protocol error: close frame with ``code``, then TCP at once."""
        conn = self.conn
        if self.state == OPEN:
            conn.writev(ws.encode_frame(ws.OP_CLOSE, ws.close_payload(
                code, reason.encode("utf-8", "replace")[:120])))
        self.state = CLOSED
        conn.close_after_flush()

    def going_away(self):
        self.close(ws.CLOSE_GOING_AWAY, b"server stopping")

    def connection_closed(self):
        self.state = CLOSED

    # -- keepalive ---------------------------------------------------------------------------------

    def timer_deadline(self, now):
        """The connection's timer: ping idle clients, close dead ones.

        Returns when to be called again, or None once closed."""
        conn = self.conn
        if self.state == CLOSING:
            conn.close("WebSocket close handshake timed out")
            return None
        if self.ping_sent is not None:
            if now - self.ping_sent >= conn.timeout / 2:
                log.info("%r WebSocket did not answer a ping", conn)
                # A peer that ignores pings will not answer a close either.
                self.fail(ws.CLOSE_POLICY, "ping timeout")
                return None
            return self.ping_sent + conn.timeout / 2
        idle_deadline = conn.last_activity + conn.timeout / 2
        if now >= idle_deadline:
            self.ping_sent = now
            conn.writev(ws.encode_frame(ws.OP_PING, b"bb"))
            return now + conn.timeout / 2
        return idle_deadline
