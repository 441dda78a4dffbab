"""Running it for real: reload, stop, signals, Emperor, privileges, logs."""

import asyncio
import os
import re
import signal
import socket
import threading
import time

import pytest
import websockets

from conftest import (free_port, hello_handler, http_request, read_response, start_node,
                      wait_available)


def get(host="localhost", path="/"):
    return b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path.encode(), host.encode())


def echo_and_hello(node, sid, mtype, body):
    if mtype in (b"websocket", b"websocket/binary"):
        node.send(sid, mtype, body)
    else:
        hello_handler()(node, sid, mtype, body)


def test_reload_under_load(make_server, nodes):
    old_port, new_port = free_port(), free_port()
    before = ("[blastbeat:localhost]\nnode = node1\n"
              "[blastbeat:old.test]\nnode = node1\n"
              "[blastbeat:extra]\nnode = node1\nbind = 127.0.0.1:%d\n" % old_port)
    after = ("[blastbeat:localhost]\nnode = node1\n"
             "[blastbeat:new.test]\nnode = node2\n"
             "[blastbeat:extra]\nnode = node1\nbind = 127.0.0.1:%d\n" % new_port)
    server = make_server(before).start()
    server.wait_listening(old_port)
    node1 = start_node(server, "node1", echo_and_hello)
    node2 = start_node(server, "node2", hello_handler(b"new"))
    nodes.extend([node1, node2])
    wait_available(server, "node1")

    stop = threading.Event()
    failures = []
    counts = []

    def http_client():
        n = 0
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
                buf = b""
                while not stop.is_set():
                    s.sendall(get())
                    status, _, body, buf = read_response(s, buf)
                    if status != 200 or body != b"hello":
                        failures.append((status, body))
                    n += 1
                    time.sleep(0.01)
        except Exception as e:      # a dropped connection is a failure
            failures.append(repr(e))
        counts.append(n)

    async def ws_clients():
        async def one(i):
            async with websockets.connect("ws://localhost:%d/" % server.port) as c:
                n = 0
                while not stop.is_set():
                    await c.send("m%d" % n)
                    if await c.recv() != "m%d" % n:
                        failures.append("ws mismatch")
                    n += 1
                    await asyncio.sleep(0.02)
                return n
        return await asyncio.gather(*(one(i) for i in range(100)))

    ws_result = []
    threads = [threading.Thread(target=http_client) for _ in range(100)]
    ws_thread = threading.Thread(target=lambda: ws_result.append(asyncio.run(ws_clients())))
    for t in threads:
        t.start()
    ws_thread.start()
    time.sleep(1.5)
    server.rewrite(after)
    server.signal(signal.SIGHUP)
    server.wait_log("configuration reloaded")
    server.wait_listening(new_port)
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(30)
    ws_thread.join(30)
    assert failures == []
    assert len(counts) == 100 and min(counts) > 0
    assert len(ws_result[0]) == 100 and min(ws_result[0]) > 0
    assert http_request(server.port, get("new.test")).endswith(b"new")
    assert http_request(server.port, get("old.test")).startswith(b"HTTP/1.1 404")
    assert http_request(new_port, get("extra")).endswith(b"hello")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", old_port), timeout=2).close()


def test_reload_with_broken_config_keeps_the_old_one(make_server, nodes, tmp_path):
    server = make_server("[blastbeat:localhost]\nnode = node1\n").start()
    nodes.append(start_node(server))
    wait_available(server, "node1")
    server.rewrite("[blastbeat:localhost]\nnode = node1\nthis line is broken\n")
    server.signal(signal.SIGHUP)
    server.wait_log("reload failed, keeping the running configuration")
    assert re.search(r"blastbeat\.ini:\d+: syntax error", server.log())
    assert http_request(server.port, get()).endswith(b"hello")
    server.rewrite("[blastbeat:localhost]\nnode = node1\nbind-ssl = 127.0.0.1:%d\n"
                   "certificate = missing.crt\n" % free_port())
    server.signal(signal.SIGHUP)
    server.wait_log("cannot read certificate")
    assert http_request(server.port, get()).endswith(b"hello")


def test_graceful_stop_finishes_the_response_in_flight(make_server, nodes):
    held = []
    server = make_server("[blastbeat:localhost]\nnode = node1\n").start()
    node = start_node(server, handler=lambda n, sid, t, b: held.append(sid)
                      if t == b"uwsgi" else None)
    nodes.append(node)
    wait_available(server, "node1")
    busy = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    busy.sendall(get())
    node.wait_for(lambda: held)
    idle = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    time.sleep(0.2)
    start = time.time()
    server.signal(signal.SIGTERM)
    time.sleep(0.5)
    assert idle.recv(10) == b""                # idle connections close at once
    with pytest.raises(OSError):               # no new connections
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
    node.send(held[0], b"headers", b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
    node.send(held[0], b"body", b"done")
    status, _, body, _ = read_response(busy)
    assert body == b"done"
    assert server.proc.wait(10) == 0
    assert time.time() - start < 5


def test_second_signal_stops_at_once(make_server, nodes):
    server = make_server("[blastbeat:localhost]\nnode = node1\n").start()
    node = start_node(server, handler=lambda *a: None)
    nodes.append(node)
    wait_available(server, "node1")
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    s.sendall(get())
    node.wait_for(lambda: node.of_type(b"uwsgi"))
    server.signal(signal.SIGTERM)
    time.sleep(0.3)
    assert server.proc.poll() is None           # waiting for the response
    server.signal(signal.SIGINT)
    assert server.proc.wait(5) == 0
    node.wait_for(lambda: node.of_type(b"end"))  # the session was ended
    s.close()


def test_sigusr1_stats_and_access_log_reopen(make_server, nodes, tmp_path):
    log_path = tmp_path / "access.log"
    server = make_server("[blastbeat:localhost]\nnode = node1\n",
                         global_extra="access-log = %s\n" % log_path).start()
    nodes.append(start_node(server))
    wait_available(server, "node1")
    http_request(server.port, b"GET /one?x=1 HTTP/1.1\r\nHost: localhost\r\n"
                 b"User-Agent: tester\r\nConnection: close\r\n\r\n")
    time.sleep(0.2)
    line = log_path.read_text().strip().splitlines()[-1]
    assert re.fullmatch(r'127\.0\.0\.1 - - \[[^\]]+\] "GET /one\?x=1 HTTP/1\.1" 200 \d+ '
                        r'"-" "tester" node=node1 \d+\.\d+', line), line
    os.rename(log_path, str(log_path) + ".1")
    server.signal(signal.SIGUSR1)
    server.wait_log("stats: connections=")
    time.sleep(0.2)
    http_request(server.port, get("localhost", "/two") + b"")
    time.sleep(0.3)
    assert "/two" in log_path.read_text()


class FakeEmperor:
    def __init__(self):
        self.ours, self.theirs = socket.socketpair()
        self.received = b""

    def read(self, count, timeout=10):
        self.ours.settimeout(timeout)
        while len(self.received) < count:
            data = self.ours.recv(16)
            if not data:
                break
            self.received += data
        return self.received


def test_emperor_protocol(make_server, nodes):
    emperor = FakeEmperor()
    server = make_server("[blastbeat:localhost]\nnode = node1\n",
                         global_extra="heartbeat = 0.5\n", args=["--ini"],
                         env={"UWSGI_EMPEROR_FD": str(emperor.theirs.fileno())})
    server.pass_fds = (emperor.theirs.fileno(),)
    server.start()
    emperor.theirs.close()
    assert emperor.read(2)[:2] == bytes([1, 5])          # spawned, accepting
    nodes.append(start_node(server))
    wait_available(server, "node1")
    http_request(server.port, get())
    emperor.read(3)
    assert 17 in emperor.received                        # loyal
    emperor.read(len(emperor.received) + 1)
    assert 26 in emperor.received[2:]                    # heartbeat
    emperor.ours.send(bytes([1]))                        # reload
    server.wait_log("configuration reloaded")
    emperor.ours.send(bytes([0]))                        # stop
    assert server.proc.wait(10) == 0
    assert 22 not in emperor.received                    # not a voluntary stop


def test_emperor_eof_stops_and_config_error_is_26(make_server, tmp_path):
    emperor = FakeEmperor()
    server = make_server("[blastbeat:localhost]\nnode = node1\n", args=["--ini"],
                         env={"UWSGI_EMPEROR_FD": str(emperor.theirs.fileno())})
    server.pass_fds = (emperor.theirs.fileno(),)
    server.start()
    emperor.theirs.close()
    emperor.read(2)
    emperor.ours.close()
    assert server.proc.wait(10) == 0


@pytest.mark.skipif(os.getuid() != 0, reason="privilege drop needs root")
def test_privileges_dropped_after_binding(nodes):
    import pathlib
    import shutil
    import tempfile
    from conftest import Server
    # the config must be readable by nobody for reloads: not under pytest's
    # private (0700) temporary directory
    where = pathlib.Path(tempfile.mkdtemp(prefix="bb-priv-"))
    os.chmod(where, 0o755)
    server = Server(where, "[blastbeat:localhost]\nnode = node1\n", user=("nobody", "nogroup"))
    os.chmod(server.config_path, 0o644)
    try:
        _privileges(server, nodes)
    finally:
        server.stop()
        shutil.rmtree(where, ignore_errors=True)


def _privileges(server, nodes):
    server.start()
    server.wait_log("privileges dropped to uid nobody")
    with open("/proc/%d/status" % server.proc.pid) as f:
        status = f.read()
    uid_line = [l for l in status.splitlines() if l.startswith("Uid:")][0]
    assert set(uid_line.split()[1:]) == {"65534"}
    nodes.append(start_node(server))
    wait_available(server, "node1")
    assert http_request(server.port, get()).endswith(b"hello")
    # a reload that adds a privileged port cannot bind it: a clear error
    server.rewrite("[blastbeat:localhost]\nnode = node1\nbind = 127.0.0.1:81\n")
    os.chmod(server.config_path, 0o644)
    server.signal(signal.SIGHUP)
    server.wait_log("privileged port")


def test_reload_keeps_counting_open_sessions_against_the_limit(make_server, nodes):
    body = "[blastbeat:localhost]\nnode = node1\nsessions = 1\n"
    server = make_server(body).start()
    node = start_node(server, handler=lambda *a: None)
    nodes.append(node)
    wait_available(server, "node1")
    held = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    held.sendall(get())
    node.wait_for(lambda: node.of_type(b"uwsgi"))
    server.rewrite(body + "alias = other.test\n")
    server.signal(signal.SIGHUP)
    server.wait_log("configuration reloaded")
    reply = http_request(server.port, get())
    assert reply.startswith(b"HTTP/1.1 503") and b"session limit" in reply
    held.close()


def test_periodic_stats_line(make_server, nodes):
    # the last stats-freq wins over the test default of 0 (never)
    server = make_server("[blastbeat:localhost]\nnode = node1\n",
                         global_extra="stats-freq = 0.3\n").start()
    nodes.append(start_node(server))
    wait_available(server, "node1")
    http_request(server.port, get())
    server.wait_log("nodes_up=1/1", timeout=5)
    assert re.search(r"stats: connections=\d+ sessions=\d+ nodes_up=1/1 buffered=\d+ "
                     r"requests=[1-9]", server.log())


@pytest.mark.parametrize("signum", [signal.SIGQUIT, signal.SIGINT])
def test_other_stop_signals(make_server, signum):
    server = make_server("[blastbeat:localhost]\nnode = node1\n").start()
    server.signal(signum)
    assert server.proc.wait(10) == 0
