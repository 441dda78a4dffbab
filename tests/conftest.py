"""Test helpers: the real server as a subprocess, real pyzmq nodes, raw clients.

Nothing is mocked: ``Server`` starts ``python -m bb`` on a temporary
config with free ports on 127.0.0.1, ``Node`` is a DEALER in a thread,
and clients are plain sockets (or http.client / websockets).
"""

import hashlib
import os
import pwd
import grp
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest
import zmq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def current_user():
    return pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name


def uwsgi_to_dict(msg):
    """The seed README's decoder, ported to Python 3 unchanged in logic."""
    (ulen,) = struct.unpack("<H", msg[1:3])
    pos = 4
    env = {}
    while pos < ulen:
        (klen,) = struct.unpack("<H", msg[pos:pos + 2])
        k = msg[pos + 2:pos + 2 + klen]
        pos += 2 + klen
        (vlen,) = struct.unpack("<H", msg[pos:pos + 2])
        v = msg[pos + 2:pos + 2 + vlen]
        pos += 2 + vlen
        env[k] = v
    return env


class Server:
    """The real daemon on a temporary config."""

    def __init__(self, tmp_path, body, port=None, zmq_port=None, global_extra="",
                 user=None, args=(), env=None):
        self.tmp_path = tmp_path
        self.port = port or free_port()
        self.zmq_port = zmq_port or free_port()
        self.zmq = "tcp://127.0.0.1:%d" % self.zmq_port
        uid, gid = user or current_user()
        self.config_path = str(tmp_path / "blastbeat.ini")
        self.text = ("[blastbeat]\nbind = 127.0.0.1:%d\nzmq = %s\nuid = %s\ngid = %s\n"
                     "ping-freq = 0.5\nstats-freq = 0\n%s\n%s" % (
                         self.port, self.zmq, uid, gid, global_extra,
                         body.format(port=self.port, zmq=self.zmq)))
        with open(self.config_path, "w") as f:
            f.write(self.text)
        self.log_path = str(tmp_path / "server.log")
        self.args = list(args)
        self.env = env
        self.proc = None

    def start(self, wait=True):
        self._log = open(self.log_path, "ab")
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        if self.env:
            env.update(self.env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bb", "--log-level", "debug"] + self.args + [self.config_path],
            stdout=self._log, stderr=self._log, env=env, cwd=str(self.tmp_path),
            pass_fds=getattr(self, "pass_fds", ()))
        if wait:
            self.wait_listening(self.port)
        return self

    def wait_listening(self, port, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited %s:\n%s" % (self.proc.returncode, self.log()))
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("server not listening on %d:\n%s" % (port, self.log()))

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_log(self, text, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if text in self.log():
                return True
            time.sleep(0.05)
        raise AssertionError("%r not in server log:\n%s" % (text, self.log()))

    def rewrite(self, body, global_extra=""):
        uid, gid = current_user()
        text = ("[blastbeat]\nbind = 127.0.0.1:%d\nzmq = %s\nuid = %s\ngid = %s\n"
                "ping-freq = 0.5\nstats-freq = 0\n%s\n%s" % (
                    self.port, self.zmq, uid, gid, global_extra,
                    body.format(port=self.port, zmq=self.zmq)))
        with open(self.config_path, "w") as f:
            f.write(text)

    def signal(self, signum):
        self.proc.send_signal(signum)

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        if self.proc.returncode not in (0, -9):
            print(self.log())


class Node(threading.Thread):
    """A pyzmq DEALER node in a thread.

    ``handler(node, sid, mtype, body)`` answers requests; the node answers
    pings itself unless ``answer_pings`` is False.  Every message received
    is kept in ``messages``.
    """

    def __init__(self, endpoint, identity, handler=None, answer_pings=True, hello=True,
                 rcvhwm=0, paused=0.0):
        super().__init__(daemon=True)
        self.endpoint = endpoint
        self.identity = identity.encode() if isinstance(identity, str) else identity
        self.handler = handler
        self.answer_pings = answer_pings
        self.hello = hello
        self.rcvhwm = rcvhwm
        self.paused = paused        # seconds to wait before reading at all
        self.messages = []
        self.ctx = zmq.Context.instance()
        self._halt = threading.Event()
        self._out = []
        self._out_lock = threading.Lock()
        self._ready = threading.Event()
        self.pings = 0

    def run(self):
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, self.identity)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, self.rcvhwm)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.connect(self.endpoint)
        if self.hello:
            sock.send_multipart([b"", b"pong", b""])
        self.sock = sock
        self._ready.set()
        if self.paused:
            time.sleep(self.paused)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        while not self._halt.is_set():
            with self._out_lock:
                out, self._out = self._out, []
            for frames in out:
                sock.send_multipart(frames)
            if not poller.poll(20):
                continue
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                sid, mtype, body = frames
                if mtype == b"ping":
                    self.pings += 1
                    if self.answer_pings:
                        sock.send_multipart([sid, b"pong", b""])
                    continue
                self.messages.append((sid, mtype, body))
                if self.handler is not None:
                    self.handler(self, sid, mtype, body)
        sock.close(0)

    def send(self, sid, mtype, body=b""):
        """Send from the handler thread (direct) or any other (queued)."""
        if threading.current_thread() is self:
            self.sock.send_multipart([sid, mtype, body])
        else:
            with self._out_lock:
                self._out.append([sid, mtype, body])

    def stop(self):
        self._halt.set()
        self.join(5)

    def of_type(self, mtype):
        return [m for m in list(self.messages) if m[1] == mtype]

    def wait_for(self, predicate, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if predicate():
                return True
            time.sleep(0.01)
        raise AssertionError("condition not met; node saw %r" % self.messages[-10:])


def hello_handler(body=b"hello"):
    """A node answering every request with headers + body (Content-Length)."""
    def handler(node, sid, mtype, data):
        if mtype == b"uwsgi":
            node.send(sid, b"headers", b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body))
            node.send(sid, b"body", body)
    return handler


class UploadDigest:
    """A node handler answering each upload with the SHA-256 of its body.

    Runs in the node's thread; the response goes out once CONTENT_LENGTH
    bytes have arrived, whatever way they were split."""

    def __init__(self):
        self.state = {}
        self.lock = threading.Lock()

    def __call__(self, node, sid, mtype, body):
        with self.lock:
            if mtype == b"uwsgi":
                env = uwsgi_to_dict(body)
                self.state[sid] = [int(env[b"CONTENT_LENGTH"]), hashlib.sha256(), 0]
            elif mtype == b"body" and sid in self.state:
                entry = self.state[sid]
                entry[1].update(body)
                entry[2] += len(body)
                if entry[2] == entry[0]:
                    digest = entry[1].hexdigest().encode()
                    node.send(sid, b"headers", b"HTTP/1.1 200 OK\r\n"
                              b"Content-Length: %d\r\n\r\n" % len(digest))
                    node.send(sid, b"body", digest)


def start_node(server, identity="node1", handler=None, **kw):
    node = Node(server.zmq, identity, handler if handler is not None else hello_handler(), **kw)
    node.start()
    node._ready.wait(5)
    return node


def wait_available(server, name, timeout=10):
    server.wait_log("node %s is available" % name, timeout)


def _complete(data):
    """True when ``data`` holds a whole response framed by Content-Length."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def http_request(port, raw, timeout=10):
    """Send raw bytes; return what came back until close, or until one
    response complete by its Content-Length (keep-alive), or the timeout."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        data = b""
        try:
            while not _complete(data):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except socket.timeout:
            pass
        return data


def read_response(sock, buf=b""):
    """Read one response (Content-Length or chunked) from a keep-alive socket.

    Returns (status, headers dict, body, rest of buffer)."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise EOFError("closed before a response head; got %r" % buf)
        buf += data
    head, buf = buf.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower()] = v.strip()
    if status < 200 and status != 101:
        return read_response(sock, buf)
    if b"content-length" in headers:
        n = int(headers[b"content-length"])
        body = bytearray(buf)
        while len(body) < n:
            data = sock.recv(1 << 20)
            if not data:
                raise EOFError("closed mid-body")
            body += data
        return status, headers, bytes(body[:n]), bytes(body[n:])
    if headers.get(b"transfer-encoding") == b"chunked":
        body = b""
        while True:
            while b"\r\n" not in buf:
                buf += sock.recv(65536)
            line, buf = buf.split(b"\r\n", 1)
            size = int(line, 16)
            while len(buf) < size + 2:
                buf += sock.recv(65536)
            body += buf[:size]
            buf = buf[size + 2:]
            if size == 0:
                return status, headers, body, buf
    body = buf
    while True:
        data = sock.recv(65536)
        if not data:
            return status, headers, body, b""
        body += data


@pytest.fixture
def make_server(tmp_path):
    servers = []

    def factory(body, **kw):
        sub = tmp_path / ("s%d" % len(servers))
        sub.mkdir()
        server = Server(sub, body, **kw)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture
def nodes():
    started = []
    yield started
    for node in started:
        node.stop()
