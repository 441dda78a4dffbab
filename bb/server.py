"""The server: listeners, connections, signals, reload, stop, stats, logs.

Ties the loop, the router and the configuration together.  Listeners
accept in a loop until ``BlockingIOError``; TLS listeners hand each new
socket to the handshake pool and take it back ready.  Configuration
reloads are read and checked in a worker thread and applied inside the
loop in one step.
"""

import collections
import concurrent.futures
import errno
import grp
import logging
import os
import pwd
import socket
import time

from . import config as configmod
from . import tls as tlsmod
from .connection import Connection
from .router import Router
from .selectors_loop import EVENT_READ, Loop

log = logging.getLogger("blastbeat")
access_log = logging.getLogger("blastbeat.access")

ACCEPT_BATCH = 64
ACCEPT_PAUSE = 0.5
STOP_GRACE = 30.0

# uWSGI Emperor protocol bytes (see blastbeat(8), EMPEROR).
EMPEROR_TO_STOP_NOW = 0
EMPEROR_TO_RELOAD = 1
EMPEROR_TO_STOP = 2
VASSAL_CONFIGURED = 1
VASSAL_ACCEPTING = 5
VASSAL_LOYAL = 17
VASSAL_HEARTBEAT = 26
VASSAL_VOLUNTARY_STOP = 22


class Listener:
    """A bound address and the virtual hosts it serves."""

    def __init__(self, server, address, tls):
        self.server = server
        self.address = address
        self.tls = tls
        self.port = address.port
        self.sock = None
        self.watcher = None
        self.names = {}
        self.default = None
        self.sni = None
        self.accepting = False
        self._resume_timer = None

    def __str__(self):
        return "%s%s" % ("https://" if self.tls else "http://", self.address)

    def set_vhosts(self, vhosts):
        """Map host names (and aliases) to the given VirtualHosts, in order."""
        names = {}
        for vhost in vhosts:
            for name in vhost.cfg.names:
                names.setdefault(name.encode("latin-1"), vhost)
        self.names = names
        self.default = vhosts[0] if vhosts else None
        if self.tls:
            sni = tlsmod.SNISelector(self.port)
            for vhost in vhosts:
                sni.add(vhost.cfg)
            sni.finish()
            self.sni = sni

    def find_vhost(self, host):
        """Exact (case-insensitive) name first; ``host:port`` also tries ``host``."""
        if host is None:
            return self.default
        vhost = self.names.get(host)
        if vhost is None:
            name, sep, port = host.rpartition(b":")
            if sep and port.isdigit() and not name.endswith(b":"):
                vhost = self.names.get(name)
        return vhost

    def open(self):
        family, sockaddr = self.address.sockaddr_info()
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.listen(1024)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        if self.port == 0:
            self.port = sock.getsockname()[1]
        self.watcher = self.server.loop.io(sock, self.on_accept)
        self.start_accepting()

    def start_accepting(self):
        if self.sock is not None and not self.accepting:
            self.accepting = True
            self.watcher.want_read(True)

    def stop_accepting(self):
        if self.accepting:
            self.accepting = False
            self.watcher.want_read(False)

    def on_accept(self):
        server = self.server
        for _ in range(ACCEPT_BATCH):
            if self.tls and not server.handshakes.has_room():
                # New TLS clients wait in the backlog until a thread frees.
                self.stop_accepting()
                return
            try:
                sock, peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("%s: cannot accept (%s); pausing accept for %.1fs",
                              self, e.strerror, ACCEPT_PAUSE)
                    self.stop_accepting()
                    if self._resume_timer is None:
                        self._resume_timer = server.loop.call_later(ACCEPT_PAUSE, self._resume)
                elif e.errno not in (errno.ECONNABORTED, errno.EPROTO):
                    log.error("%s: accept failed: %s", self, e)
                return
            server.stats["accepted"] += 1
            sock.setblocking(False)
            if sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls:
                server.handshakes.submit(sock, self.sni.default,
                                         lambda s, err, p=peer: self._tls_ready(s, err, p))
            else:
                server.add(Connection(server, sock, peer, self))

    def _resume(self):
        self._resume_timer = None
        if not self.server.stopping:
            self.start_accepting()

    def _tls_ready(self, sslsock, error, peer):
        server = self.server
        if sslsock is None:
            server.stats["tls_failed"] += 1
            log.info("TLS handshake with %s:%s on %s failed: %s", peer[0], peer[1], self, error)
            return
        if server.stopping or self.sock is None:
            sslsock.close()
            return
        server.add(Connection(server, sslsock, peer, self, tls=True))

    def on_room(self):
        if not self.server.stopping and self.sock is not None:
            self.start_accepting()

    def close(self):
        if self.watcher is not None:
            self.watcher.stop()
        if self._resume_timer is not None:
            self._resume_timer.cancel()
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.accepting = False


class Server:
    def __init__(self, config, emperor_fd=None, zmq_context=None):
        self.config = config
        self.loop = Loop()
        self.router = Router(self.loop, config, zmq_context)
        self.router.flush_hook = self.flush
        self.handshakes = tlsmod.HandshakePool(self.loop)
        self.handshakes.on_room(self._tls_room)
        self.connections = set()
        self.dirty = []
        self.buffered = 0
        self.listeners = {}
        self.stats = collections.Counter()
        self.stopping = False
        self.exit_code = 0
        self.started = time.monotonic()
        self._stop_deadline = None
        self._stop_timer = None
        self._reloader = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="bb-reload")
        self._reloading = False
        self._access_file = None
        self._emperor_fd = emperor_fd
        self._emperor_watcher = None
        self._loyal = False
        self._emperor_stopped = False
        self.loop.add_check(self.flush)
        self.memory_limit = config.memory * 1024 * 1024

    # -- start -------------------------------------------------------------------

    def _wanted_listeners(self, config, vhosts):
        """{key: (Address, tls, [VirtualHost])} for ``config``."""
        wanted = {}
        order = []

        def add(address, tls, vhost):
            key = (address.key, tls)
            if key not in wanted:
                wanted[key] = (address, tls, [])
                order.append(key)
            if vhost is not None and vhost not in wanted[key][2]:
                wanted[key][2].append(vhost)

        for addr in config.binds:
            add(addr, False, None)
        for addr in config.ssl_binds:
            add(addr, True, None)
        for cfg in config.vhosts:
            vhost = vhosts[cfg.name]
            if cfg.own_binds:
                for addr in cfg.binds:
                    add(addr, False, vhost)
                for addr in cfg.ssl_binds:
                    add(addr, True, vhost)
            else:
                for addr in config.binds:
                    add(addr, False, vhost)
                for addr in config.ssl_binds:
                    add(addr, True, vhost)
        return [(k,) + wanted[k] for k in order]

    def bind(self):
        """Bind listeners and ROUTERs.  Raises OSError / zmq.ZMQError."""
        for key, address, tls, vhosts in self._wanted_listeners(self.config, self.router.vhosts):
            listener = Listener(self, address, tls)
            listener.set_vhosts(vhosts)
            try:
                listener.open()
            except OSError as e:
                raise OSError(e.errno, "cannot listen on %s: %s" % (listener, e.strerror)) from None
            self.listeners[key] = listener
            log.info("listening on %s for %s", listener,
                     ", ".join(v.name for v in vhosts) or "no virtual host")
        self.router.bind()

    def drop_privileges(self):
        if os.getuid() != 0:
            return
        cfg = self.config
        try:
            gid = int(cfg.gid) if cfg.gid.isdigit() else grp.getgrnam(cfg.gid).gr_gid
            uid = int(cfg.uid) if cfg.uid.isdigit() else pwd.getpwnam(cfg.uid).pw_uid
        except KeyError as e:
            raise OSError(errno.EINVAL, "cannot drop privileges: unknown user or group %s" % e)
        if uid == 0:
            log.warning("running as root: uid = %s in the configuration", cfg.uid)
            return
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        log.info("privileges dropped to uid %s (%d), gid %s (%d)", cfg.uid, uid, cfg.gid, gid)

    def start(self):
        _raise_fd_limit()
        self.bind()
        self._open_access_log()     # as root, like the listeners
        self.drop_privileges()
        self.router.start()
        if self.config.stats_freq > 0:
            self.loop.call_repeatedly(self.config.stats_freq, self.log_stats)
        self._emperor_start()

    def install_signals(self):
        import signal
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            self.loop.add_signal_handler(signum, self._on_stop_signal)
        self.loop.add_signal_handler(signal.SIGHUP, lambda s: self.reload())
        self.loop.add_signal_handler(signal.SIGUSR1, lambda s: self._on_usr1())

    def run(self):
        """Run until stopped; returns the exit code."""
        try:
            self.loop.run()
        finally:
            self.shutdown()
        return self.exit_code

    # -- connections ---------------------------------------------------------------

    def add(self, conn):
        self.connections.add(conn)

    def forget(self, conn):
        self.connections.discard(conn)
        if self.stopping:
            self._check_stopped()

    def flush(self):
        dirty = self.dirty
        if dirty:
            self.dirty = []
            for conn in dirty:
                conn.flush()

    def over_memory(self):
        return self.buffered > self.memory_limit

    def _tls_room(self):
        for listener in self.listeners.values():
            if listener.tls:
                listener.on_room()

    # -- access log, stats ------------------------------------------------------------

    def _open_access_log(self):
        target = self.config.access_log
        if self._access_file is not None:
            self._access_file.close()
            self._access_file = None
        if target and target != "stderr":
            self._access_file = open(target, "a", buffering=1, encoding="utf-8")

    def access(self, conn, ex):
        """One combined-format line per request, plus node and duration."""
        if not self._loyal and ex.status and ex.status < 500:
            self._loyal = True
            self._emperor_send(VASSAL_LOYAL)
        if not self.config.access_log:
            return
        req = ex.req
        session = conn.session
        line = '%s - - [%s] "%s %s %s" %d %d "%s" "%s" node=%s %.6f' % (
            conn.remote_addr.decode(),
            time.strftime("%d/%b/%Y:%H:%M:%S %z"),
            req.method.decode("latin-1"), req.target.decode("latin-1"),
            req.version.decode("latin-1"), ex.status or 0, ex.bytes_out,
            (req.get(b"referer") or b"-").decode("latin-1"),
            (req.get(b"user-agent") or b"-").decode("latin-1"),
            session.node.name if session is not None else "-",
            self.loop.now - ex.started)
        if self._access_file is not None:
            self._access_file.write(line + "\n")
        else:
            access_log.info("%s", line)

    def stats_line(self):
        return ("stats: connections=%d sessions=%d nodes_up=%d/%d buffered=%d "
                "requests=%d bad_requests=%d timeouts=%d slow_clients=%d "
                "zmq_malformed=%d zmq_foreign=%d zmq_unknown_sid=%d zmq_unknown_type=%d "
                "zmq_backpressure=%d" % (
                    len(self.connections), len(self.router.sessions),
                    self.router.nodes_up(), len(self.router.nodes),
                    self.buffered + self.router.pending_bytes(),
                    self.stats["requests"], self.stats["bad_requests"],
                    self.stats["timeouts"], self.stats["slow_clients"],
                    self.router.counters["malformed"], self.router.counters["foreign"],
                    self.router.counters["unknown_sid"],
                    self.router.counters["unknown_type"],
                    self.router.counters["zmq_backpressure"]))

    def log_stats(self):
        log.info("%s", self.stats_line())

    def _on_usr1(self):
        self.log_stats()
        try:
            self._open_access_log()
        except OSError as e:
            log.error("cannot reopen access log %s: %s", self.config.access_log, e)

    # -- reload ------------------------------------------------------------------------

    def reload(self):
        """Re-read the config off the loop, then apply it in one step."""
        if self._reloading or self.stopping:
            log.warning("reload already in progress; ignored")
            return
        self._reloading = True
        log.info("reloading %s", self.config.path)
        future = self._reloader.submit(configmod.load, self.config.path)
        future.add_done_callback(
            lambda f: self.loop.call_soon_threadsafe(self._reload_done, f))

    def _reload_done(self, future):
        self._reloading = False
        try:
            new = future.result()
        except configmod.ConfigError as e:
            log.error("reload failed, keeping the running configuration: %s", e)
            return
        except Exception as e:
            log.error("reload failed, keeping the running configuration: %s", e)
            return
        for warning in new.warnings:
            log.warning("%s", warning)
        try:
            self.apply(new)
        except Exception as e:
            log.exception("reload could not be applied: %s", e)
            return
        log.info("configuration reloaded: %d virtual hosts, %d listeners",
                 len(new.vhosts), len(self.listeners))

    def apply(self, new):
        """Switch to ``new`` inside the loop; open connections carry on."""
        router = self.router
        router.reconfigure(new)
        wanted = self._wanted_listeners(new, router.vhosts)
        keys = set()
        for key, address, tls, vhosts in wanted:
            keys.add(key)
            listener = self.listeners.get(key)
            if listener is None:
                listener = Listener(self, address, tls)
                try:
                    listener.set_vhosts(vhosts)
                    listener.open()
                except OSError as e:
                    if e.errno == errno.EACCES:
                        log.error("cannot listen on %s after reload: %s (a privileged port "
                                  "needs a restart as root)", listener, e.strerror)
                    else:
                        log.error("cannot listen on %s after reload: %s", listener, e.strerror)
                    continue
                self.listeners[key] = listener
                log.info("listening on %s for %s", listener,
                         ", ".join(v.name for v in vhosts) or "no virtual host")
            else:
                listener.set_vhosts(vhosts)
        for key in list(self.listeners):
            if key not in keys:
                listener = self.listeners.pop(key)
                listener.close()
                log.info("stopped listening on %s", listener)
        self.config = new
        self.memory_limit = new.memory * 1024 * 1024
        self._open_access_log()

    # -- stopping ----------------------------------------------------------------------

    def _on_stop_signal(self, signum):
        if self.stopping:
            log.warning("second stop signal: stopping now")
            self.stop_now()
        else:
            self.stop()

    def stop(self, grace=STOP_GRACE):
        """Stop accepting; let responses in flight finish for up to ``grace``."""
        if self.stopping:
            return
        self.stopping = True
        log.info("stopping: %d connections open, waiting up to %ds for responses",
                 len(self.connections), grace)
        for listener in self.listeners.values():
            listener.close()
        for conn in list(self.connections):
            if conn.exchange is None and conn.ws is None:
                conn.close("server stopping")
            elif conn.ws is not None:
                conn.ws.going_away()
        self._stop_deadline = self.loop.now + grace
        self._stop_timer = self.loop.call_later(grace, self.stop_now)
        self._check_stopped()

    def _check_stopped(self):
        if not self.connections:
            self.loop.stop()

    def stop_now(self):
        self.stopping = True
        for conn in list(self.connections):
            conn.close("server stopped")
        self.flush()
        self.loop.stop()

    def shutdown(self):
        for listener in self.listeners.values():
            listener.close()
        for conn in list(self.connections):
            conn.close("server stopped")
        # Tell nodes about sessions that are left (WebSockets mid-close).
        for session in list(self.router.sessions.values()):
            self.router.end_session(session)
        self.router.close()
        self.handshakes.shutdown()
        self._reloader.shutdown(wait=False)
        if not self._emperor_stopped:
            self._emperor_send(VASSAL_VOLUNTARY_STOP)
        if self._access_file is not None:
            self._access_file.close()
        self.loop.close()

    # -- uWSGI Emperor ------------------------------------------------------------------

    def _emperor_start(self):
        fd = self._emperor_fd
        if fd is None:
            return
        os.set_blocking(fd, False)
        self._emperor_send(VASSAL_CONFIGURED)
        self._emperor_send(VASSAL_ACCEPTING)
        self._emperor_watcher = self.loop.io(fd, self._emperor_readable)
        self._emperor_watcher.set(EVENT_READ)
        if self.config.heartbeat > 0:
            self.loop.call_repeatedly(self.config.heartbeat,
                                      lambda: self._emperor_send(VASSAL_HEARTBEAT))

    def _emperor_send(self, byte):
        if self._emperor_fd is None:
            return
        try:
            os.write(self._emperor_fd, bytes([byte]))
        except OSError as e:
            log.debug("cannot write to the Emperor: %s", e)

    def _emperor_readable(self):
        try:
            data = os.read(self._emperor_fd, 64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            log.info("the Emperor went away: stopping")
            self._emperor_watcher.stop()
            self._emperor_fd = None
            self.stop()
            return
        for byte in data:
            if byte == EMPEROR_TO_STOP_NOW:
                log.info("the Emperor asks to stop now")
                self._emperor_stopped = True
                self.stop_now()
            elif byte == EMPEROR_TO_RELOAD:
                log.info("the Emperor asks to reload")
                self.reload()
            elif byte == EMPEROR_TO_STOP:
                # Not sent by uWSGI's own Emperor (2 is a vassal's request
                # for a config chunk there); honoured for other supervisors.
                log.info("the Emperor asks to stop gracefully")
                self._emperor_stopped = True
                self.stop()
            else:
                log.debug("unknown Emperor byte %d ignored", byte)


def _raise_fd_limit():
    """Each connection is a descriptor: use the hard limit, not the soft one."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY:
            hard = 1 << 20
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            log.info("descriptor limit raised from %d to %d", soft, hard)
    except (ImportError, ValueError, OSError) as e:
        log.warning("cannot raise the descriptor limit: %s", e)
