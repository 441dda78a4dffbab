"""Sessions, nodes and the ZeroMQ side (spec §3, §5, §8).

The router binds the ROUTER sockets, owns the virtual hosts' runtime state,
the nodes and the sessions, and moves ``[sid, type, body]`` messages between
nodes and client connections.  It knows nothing of sockets to clients: it
calls ``node_*`` methods on the connection that owns a session.

ZeroMQ facts this module is built around:

- the ROUTER's descriptor is edge-triggered: ``drain`` (the loop's prepare
  hook, and the descriptor's read callback) receives while
  ``EVENTS & POLLIN`` says so, in batches, so no message waits for a wake-up
  that already happened;
- ``ROUTER_MANDATORY`` is set: a send to a peer whose pipe is full raises
  ``zmq.Again`` and the message is queued on the node (never dropped) while
  the client that produced it stops being read; a send to an identity that
  is not connected raises ``EHOSTUNREACH`` and the node is marked off.
"""

import collections
import errno
import logging
import os

import zmq

log = logging.getLogger("blastbeat.router")

# pyzmq's sugar methods (send_multipart, recv_multipart) cost 5-9 us a
# message in flag enums and RCVMORE look-ups; the Cython backend methods with
# plain int flags cost about 1 us a frame.  They are the hot path here.
_zsend = zmq.backend.Socket.send
_zrecv = zmq.backend.Socket.recv
_zget = zmq.backend.Socket.get
_NOBLOCK = int(zmq.NOBLOCK)
_MORE = int(zmq.SNDMORE) | _NOBLOCK
_RCVMORE = int(zmq.RCVMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)

BATCH = 512
ZERO_COPY_MIN = 1 << 16
PENDING_RETRY = 0.005

# Results of Router.send
SENT, QUEUED, FAILED = 1, 2, 0


class RouteError(Exception):
    """A request cannot be given to a node; ``status`` is the answer."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


class Node:
    """A backend known by its ZeroMQ identity on one group of ROUTERs."""

    __slots__ = ("name", "identity", "group", "zsock", "available", "last_seen",
                 "sessions", "pending", "blocked", "vhosts", "failing")

    def __init__(self, name, group):
        self.name = name
        self.identity = name.encode()
        self.group = group
        self.zsock = None           # the ROUTER where the node last spoke
        self.available = False
        self.last_seen = None
        self.sessions = 0
        self.pending = collections.deque()   # frames waiting for room
        self.blocked = set()                 # connections paused for it
        self.vhosts = set()
        self.failing = False

    def __repr__(self):
        return "Node(%s)" % self.name


class Group:
    """ROUTER sockets sharing one namespace of node identities."""

    def __init__(self, endpoints):
        self.endpoints = list(endpoints)
        self.sockets = []
        self.nodes = {}


class VirtualHost:
    """Run-time state of a configured virtual host."""

    __slots__ = ("cfg", "name", "nodes", "sessions", "max_sessions", "timeout",
                 "server_name", "server_port", "rr")

    def __init__(self, cfg, nodes):
        self.cfg = cfg
        self.name = cfg.name
        self.nodes = nodes
        self.sessions = 0
        self.max_sessions = cfg.sessions
        self.timeout = cfg.timeout
        self.server_name = cfg.server_name.encode()
        self.server_port = cfg.server_port
        self.rr = 0

    def __repr__(self):
        return "VirtualHost(%s)" % self.name


class Session:
    __slots__ = ("sid", "conn", "node", "vhost", "ended")

    def __init__(self, sid, conn, node, vhost):
        self.sid = sid
        self.conn = conn
        self.node = node
        self.vhost = vhost
        self.ended = False


def new_sid():
    """16 random bytes shaped as a UUID4 (RFC 9562 version and variant bits)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return bytes(raw)


class Router:
    def __init__(self, loop, config, context=None):
        self.loop = loop
        self.context = context or zmq.Context.instance()
        self.sessions = {}
        self.max_sessions = config.sessions
        self.max_hops = config.max_hops
        self.ping_freq = config.ping_freq
        self.groups = {}            # tuple(endpoints) -> Group
        self.vhosts = {}            # name -> VirtualHost
        self.nodes = []             # every Node
        self._by_socket = {}        # zmq socket -> Group
        self._watchers = {}
        self._retry_timer = None
        self._blocked_nodes = set()
        self.counters = collections.Counter()
        self.flush_hook = None      # called after a drain batch (batched writes)
        self._ping_timer = None
        self._config = config
        self._build(config)

    # -- setup ---------------------------------------------------------------

    def _build(self, config, old_groups=None, old_nodes=None):
        """Groups, nodes and vhosts of ``config``; sockets and node health
        are taken over from ``old_groups``/``old_nodes`` (reload)."""
        old_groups = old_groups or {}
        old_nodes = old_nodes or {}
        self.groups = {}
        self.nodes = []

        def group_for(endpoints):
            key = tuple(endpoints)
            group = self.groups.get(key)
            if group is None:
                group = self.groups[key] = Group(endpoints)
                old = old_groups.get(key)
                if old is not None:
                    group.sockets = old.sockets
                    for zsock in old.sockets:
                        self._by_socket[zsock] = group
            return group

        if config.zmq:
            group_for(config.zmq)
        vhosts = {}
        for cfg in config.vhosts:
            group = group_for([cfg.zmq] if cfg.zmq else config.zmq)
            nodes = []
            for name in cfg.nodes:
                ident = name.encode()
                node = group.nodes.get(ident)
                if node is None:
                    node = old_nodes.pop((tuple(group.endpoints), ident), None) or Node(name, group)
                    node.group = group
                    node.vhosts = set()
                    group.nodes[ident] = node
                    self.nodes.append(node)
                node.vhosts.add(cfg.name)
                nodes.append(node)
            vhost = self.vhosts.get(cfg.name)
            if vhost is None:
                vhost = VirtualHost(cfg, nodes)
            else:   # reload: same object, so open sessions keep counting
                open_sessions = vhost.sessions
                vhost.__init__(cfg, nodes)
                vhost.sessions = open_sessions
            vhosts[cfg.name] = vhost
        # Nodes no longer configured keep serving the sessions they have
        # (their messages are still accepted) but get no new ones.
        for (key, ident), node in old_nodes.items():
            group = self.groups.get(key)
            if group is not None and node.sessions > 0:
                node.vhosts = set()
                group.nodes[ident] = node
        self.vhosts = vhosts

    def bind(self, strict=True):
        """Bind every ROUTER not bound yet.

        Raises zmq.ZMQError when ``strict`` (start); on reload a failure is
        logged and that group's nodes stay unavailable."""
        for group in self.groups.values():
            if group.sockets:
                continue
            for endpoint in group.endpoints:
                zsock = self.context.socket(zmq.ROUTER)
                zsock.setsockopt(zmq.LINGER, 0)
                zsock.setsockopt(zmq.ROUTER_MANDATORY, 1)
                zsock.setsockopt(zmq.SNDHWM, self._config.zmq_hwm)
                zsock.setsockopt(zmq.RCVHWM, self._config.zmq_hwm)
                try:
                    zsock.bind(endpoint)
                except zmq.ZMQError as e:
                    zsock.close()
                    if strict:
                        raise zmq.ZMQError(e.errno, "cannot bind ZeroMQ %s: %s"
                                           % (endpoint, e.strerror)) from None
                    log.error("cannot bind ZeroMQ %s: %s", endpoint, e.strerror)
                    continue
                group.sockets.append(zsock)
                self._by_socket[zsock] = group
                watcher = self.loop.io(zsock.getsockopt(zmq.FD),
                                       lambda z=zsock: self._drain_socket(z))
                watcher.want_read(True)
                self._watchers[zsock] = watcher
                log.info("ZeroMQ ROUTER bound on %s", endpoint)

    def start(self):
        self.loop.add_prepare(self.drain)
        self._ping_timer = self.loop.call_repeatedly(
            self.ping_freq, self._ping, first=min(1.0, self.ping_freq))

    def close(self):
        if self._ping_timer:
            self._ping_timer.cancel()
        for zsock, watcher in self._watchers.items():
            watcher.stop()
            zsock.close(0)
        self._watchers.clear()

    # -- reload ----------------------------------------------------------------

    def reconfigure(self, config):
        """Switch to ``config``: keep live nodes and sessions, bind new ROUTERs."""
        old_groups = self.groups
        old_nodes = {(key, ident): node for key, group in old_groups.items()
                     for ident, node in group.nodes.items()}
        self._build(config, old_groups, old_nodes)
        for key, group in old_groups.items():
            if key in self.groups:
                continue
            for zsock in group.sockets:
                self._watchers.pop(zsock).stop()
                self._by_socket.pop(zsock, None)
                zsock.close(0)
            log.info("ZeroMQ ROUTER on %s closed", ", ".join(group.endpoints))
        self.max_sessions = config.sessions
        self.max_hops = config.max_hops
        if config.ping_freq != self.ping_freq:
            self.ping_freq = config.ping_freq
            if self._ping_timer is not None:
                self._ping_timer.cancel()
                self._ping_timer = self.loop.call_repeatedly(self.ping_freq, self._ping)
        self._config = config
        self.bind(strict=False)

    # -- balancing and sessions --------------------------------------------------

    def choose_node(self, vhost, exclude=None):
        """Least connections among available nodes; ties rotate."""
        nodes = vhost.nodes
        count = len(nodes)
        best = None
        start = vhost.rr
        for i in range(count):
            node = nodes[(start + i) % count]
            if not node.available or node is exclude:
                continue
            if best is None or node.sessions < best.sessions:
                best = node
        if best is None and exclude is not None and exclude.available \
                and exclude in nodes:
            best = exclude      # the only one left
        vhost.rr = (start + 1) % count if count else 0
        return best

    def open_session(self, conn, vhost):
        if len(self.sessions) >= self.max_sessions:
            raise RouteError(503, "server session limit (%d) reached" % self.max_sessions)
        if vhost.sessions >= vhost.max_sessions:
            raise RouteError(503, "session limit of %s (%d) reached"
                             % (vhost.name, vhost.max_sessions))
        node = self.choose_node(vhost)
        if node is None:
            raise RouteError(503, "no node of %s is available" % vhost.name)
        sid = new_sid()
        session = Session(sid, conn, node, vhost)
        self.sessions[sid] = session
        node.sessions += 1
        vhost.sessions += 1
        return session

    def move_session(self, session):
        """Pin ``session`` to another available node (retry, node off).

        The node it leaves gets ``end``: the sid is over for it.  Returns
        False when no node is available."""
        node = self.choose_node(session.vhost, exclude=session.node)
        if node is None:
            return False
        old = session.node
        if node is not old:
            old.sessions -= 1
            node.sessions += 1
            session.node = node
            old.blocked.discard(session.conn)
            self._send(old, (old.identity, session.sid, b"end", b""), None)
        return True

    def end_session(self, session, notify=True):
        """Forget a session; the node gets ``end`` once when ``notify``."""
        if session.ended:
            return
        session.ended = True
        if self.sessions.get(session.sid) is session:
            del self.sessions[session.sid]
        session.node.sessions -= 1
        session.vhost.sessions -= 1
        session.node.blocked.discard(session.conn)
        if notify:
            self._send(session.node, (session.node.identity, session.sid, b"end", b""), None)

    # -- sending -------------------------------------------------------------------

    def send(self, session, mtype, body):
        """Send one message of ``session`` to its node: SENT, QUEUED or FAILED.

        QUEUED means the node's pipe is full: the message will go out in
        order when it drains, and the caller should stop reading its client
        until ``conn.node_drained()`` is called.
        """
        node = session.node
        zsock = node.zsock
        if zsock is not None and not node.pending:
            try:
                # ROUTER_MANDATORY refuses the first frame or none.
                _zsend(zsock, node.identity, _MORE)
            except zmq.ZMQError:
                pass
            else:
                _zsend(zsock, session.sid, _MORE)
                _zsend(zsock, mtype, _MORE)
                # Large bodies go zero-copy (pyzmq keeps a reference).
                _zsend(zsock, body, _NOBLOCK, len(body) < ZERO_COPY_MIN)
                return SENT
        return self._send(node, (node.identity, session.sid, mtype, body), session.conn)

    def _send(self, node, frames, conn):
        if node.pending:
            node.pending.append(frames)
            if conn is not None:
                node.blocked.add(conn)
            return QUEUED
        zsock = node.zsock
        if zsock is None:
            return FAILED
        try:
            _send_frames(zsock, frames)
            return SENT
        except zmq.Again:
            node.pending.append(frames)
            if conn is not None:
                node.blocked.add(conn)
            self._blocked_nodes.add(node)
            if self._retry_timer is None:
                self._retry_timer = self.loop.call_later(PENDING_RETRY, self._flush_pending)
            self.counters["zmq_backpressure"] += 1
            return QUEUED
        except zmq.ZMQError as e:
            if e.errno == errno.EHOSTUNREACH:
                self._node_gone(node, "not connected to the ROUTER")
            else:
                log.error("ZeroMQ send to node %s failed: %s", node.name, e)
            return FAILED

    def _flush_pending(self):
        self._retry_timer = None
        for node in list(self._blocked_nodes):
            zsock = node.zsock
            pending = node.pending
            try:
                while pending:
                    _send_frames(zsock, pending[0])
                    pending.popleft()
            except zmq.Again:
                continue
            except zmq.ZMQError as e:
                pending.clear()
                self._blocked_nodes.discard(node)
                self._node_gone(node, "send failed: %s" % e)
                continue
            self._blocked_nodes.discard(node)
            blocked, node.blocked = node.blocked, set()
            for conn in blocked:
                conn.node_drained()
        if self._blocked_nodes:
            self._retry_timer = self.loop.call_later(PENDING_RETRY, self._flush_pending)

    def pending_bytes(self):
        return sum(len(f[3]) for n in self._blocked_nodes for f in n.pending)

    # -- receiving -------------------------------------------------------------------

    def drain(self):
        """Receive everything waiting on every ROUTER (edge-triggered FDs)."""
        for zsock in self._by_socket:
            self._drain_socket(zsock)

    def _drain_socket(self, zsock):
        group = self._by_socket.get(zsock)
        if group is None:
            return
        nodes = group.nodes
        received = 0
        while _zget(zsock, _EVENTS) & _POLLIN:
            for _ in range(BATCH):
                try:
                    frames = _recv_message(zsock)
                except zmq.Again:
                    break
                received += 1
                try:
                    self._dispatch(zsock, nodes, frames)
                except Exception:
                    log.exception("error handling a message from node %r", frames[0])
            else:
                # Fairness: let client sockets run, come back right after.
                self.loop.call_soon(self._noop)
                break
        if received and self.flush_hook is not None:
            self.flush_hook()

    @staticmethod
    def _noop():
        pass

    def _dispatch(self, zsock, nodes, frames):
        n = len(frames)
        if n == 4:
            ident, sid, mtype, body = frames
        elif n == 3:
            ident, sid, mtype = frames
            body = b""
        else:
            self.counters["malformed"] += 1
            log.debug("malformed message of %d parts from %r ignored", n, frames[0])
            return
        node = nodes.get(ident)
        if node is None:
            self.counters["foreign"] += 1
            log.debug("message from unknown identity %r ignored", ident)
            return
        if mtype == b"pong":
            self._node_alive(node, zsock)
            return
        session = self.sessions.get(sid)
        if session is None:
            if mtype in NODE_TYPES or mtype == b"ping":
                self._node_alive(node, zsock)
            self.counters["unknown_sid"] += 1
            log.debug("%s message from %s for unknown sid ignored", mtype, node.name)
            return
        if session.node is not node:
            self.counters["foreign"] += 1
            log.debug("%s message from %s for a session of %s ignored",
                      mtype, node.name, session.node.name)
            return
        handler = NODE_TYPES.get(mtype)
        if handler is None:
            self.counters["unknown_type"] += 1
            log.debug("unknown message type %r from %s ignored", mtype, node.name)
            return
        node.last_seen = self.loop.now
        if not node.available or node.zsock is not zsock:
            self._node_alive(node, zsock)
        getattr(session.conn, handler)(body)

    # -- health ------------------------------------------------------------------------

    def _node_alive(self, node, zsock):
        node.last_seen = self.loop.now
        node.zsock = zsock
        if not node.available:
            node.available = True
            log.info("node %s is available (serving %s)", node.name,
                     ", ".join(sorted(node.vhosts)) or "no virtual host")

    def _node_gone(self, node, why):
        if node.available:
            node.available = False
            log.warning("node %s is off: %s", node.name, why)
        if node.failing:
            # Moving its sessions sends it `end`, which fails again: the
            # outer call is already taking care of every session.
            return
        node.failing = True
        try:
            # Requests waiting on it go to another node, or get 502/503.
            for session in [s for s in self.sessions.values() if s.node is node]:
                if session.node is node and not session.ended:
                    session.conn.node_lost()
        finally:
            node.failing = False

    def _ping(self):
        now = self.loop.now
        limit = 3 * self.ping_freq
        for node in self.nodes:
            if node.available and node.last_seen is not None and now - node.last_seen > limit:
                self._node_gone(node, "no answer for %.1f s" % (now - node.last_seen))
            frames = (node.identity, b"", b"ping", b"")
            for zsock in node.group.sockets:
                try:
                    _send_frames(zsock, frames)
                except zmq.ZMQError:
                    pass    # not connected there, or its pipe is full
        self.drain()

    def nodes_up(self):
        return sum(1 for n in self.nodes if n.available)


def _send_frames(zsock, frames):
    """Send a 4-frame message; raises zmq.Again / ZMQError on the first frame."""
    ident, sid, mtype, body = frames
    _zsend(zsock, ident, _MORE)
    _zsend(zsock, sid, _MORE)
    _zsend(zsock, mtype, _MORE)
    _zsend(zsock, body, _NOBLOCK)


def _recv_message(zsock):
    """Receive one whole message as a list of frames (raises zmq.Again).

    Well-formed messages have 4 frames (identity, sid, type, body) or 3
    (no body); RCVMORE is asked only where the count is in doubt.
    """
    frames = [_zrecv(zsock, _NOBLOCK), _zrecv(zsock, _NOBLOCK)]
    while _zget(zsock, _RCVMORE):
        frames.append(_zrecv(zsock, _NOBLOCK))
        if len(frames) == 3:
            continue
        if len(frames) > 4:
            # Malformed: read the rest of it so that the next message
            # starts clean, but keep no more than needed to report it.
            while _zget(zsock, _RCVMORE):
                _zrecv(zsock, _NOBLOCK)
            break
    return frames


# Node message type -> Connection method.
NODE_TYPES = {
    b"headers": "node_headers",
    b"body": "node_body",
    b"chunk": "node_chunk",
    b"end": "node_end",
    b"retry": "node_retry",
    b"websocket": "node_websocket",
    b"websocket/binary": "node_websocket_binary",
}
