"""The real daemon with real pyzmq nodes: node protocol, HTTP behaviour, errors."""

import hashlib
import os
import random
import re
import selectors
import socket
import threading
import time

import pytest

from conftest import (UploadDigest, hello_handler, http_request, read_response, start_node,
                      uwsgi_to_dict, wait_available)

VHOST = "[blastbeat:localhost]\nnode = node1\n"


def get(port, path="/", host="localhost", extra=b""):
    return (b"GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (path.encode(), host.encode(), extra))


@pytest.fixture
def served(make_server, nodes):
    """A server with one vhost and a hello node, ready."""
    server = make_server(VHOST).start()
    nodes.append(start_node(server))
    wait_available(server, "node1")
    return server, nodes[0]


def after_check(server):
    """A normal request still succeeds (after each robustness case)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(get(server.port))
        status, _, body, _ = read_response(s)
    assert status == 200 and body == b"hello"


def test_keep_alive_requests_share_one_sid(served):
    server, node = served
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        buf = b""
        for i in range(3):
            s.sendall(get(server.port, "/r%d" % i))
            status, headers, body, buf = read_response(s, buf)
            assert status == 200 and body == b"hello"
    reqs = node.of_type(b"uwsgi")
    assert len(reqs) == 3
    assert len({sid for sid, _, _ in reqs}) == 1
    sid = reqs[0][0]
    assert len(sid) == 16 and sid[6] >> 4 == 4      # a UUID4
    paths = [uwsgi_to_dict(b)[b"PATH_INFO"] for _, _, b in reqs]
    assert paths == [b"/r0", b"/r1", b"/r2"]


def test_env_contents(served):
    server, node = served
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /x%41?q=1 HTTP/1.1\r\nHost: LOCALHOST\r\nX-Test: a\r\nX-Test: b\r\n\r\n")
        read_response(s)
        port = s.getsockname()[1]
    env = uwsgi_to_dict(node.of_type(b"uwsgi")[-1][2])
    assert env[b"PATH_INFO"] == b"/xA"
    assert env[b"QUERY_STRING"] == b"q=1"
    assert env[b"SERVER_NAME"] == b"localhost"
    assert env[b"SERVER_PORT"] == b"80"
    assert env[b"REMOTE_ADDR"] == b"127.0.0.1"
    assert env[b"REMOTE_PORT"] == str(port).encode()
    assert env[b"HTTP_X_TEST"] == b"a, b"


def test_vhost_with_port_and_alias(make_server, nodes):
    server = make_server("[blastbeat:example.com:{port}]\nnode = node1\nalias = alias.test\n")
    server.start()
    nodes.append(start_node(server))
    wait_available(server, "node1")
    for host in ("example.com:%d" % server.port, "EXAMPLE.com:%d" % server.port, "alias.test"):
        raw = http_request(server.port, get(server.port, host=host, extra=b"Connection: close\r\n"))
        assert raw.startswith(b"HTTP/1.1 200"), host
    env = uwsgi_to_dict(nodes[0].of_type(b"uwsgi")[0][2])
    assert env[b"SERVER_PORT"] == str(server.port).encode()
    raw = http_request(server.port, get(server.port, host="example.com:1"))
    assert raw.startswith(b"HTTP/1.1 404")


def test_http10_and_head(served):
    server, node = served
    raw = http_request(server.port, b"GET / HTTP/1.0\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200") and raw.endswith(b"hello")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"HEAD / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        s.settimeout(1)
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(1000)
        assert data.endswith(b"\r\n\r\n") and b"Content-Length: 5" in data
        s.settimeout(10)
        s.sendall(get(server.port))          # HEAD left the connection usable
        status, _, body, _ = read_response(s)
        assert status == 200 and body == b"hello"


def chunked_handler(node, sid, mtype, body):
    if mtype == b"uwsgi":
        headers = b"\r\n".join([b"HTTP/1.1 200 OK", b"Content-Type: text/html",
                                b"Transfer-Encoding: chunked"]) + b"\r\n\r\n"
        node.send(sid, b"headers", headers)
        for i in range(1, 100):
            node.send(sid, b"chunk", b"i am the number %d<br/>" % i)
        node.send(sid, b"chunk", b"")


def test_chunk_messages_keep_alive(make_server, nodes):
    server = make_server(VHOST).start()
    nodes.append(start_node(server, handler=chunked_handler))
    wait_available(server, "node1")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        buf = b""
        for _ in range(2):
            s.sendall(get(server.port))
            status, headers, body, buf = read_response(s, buf)
            assert headers[b"transfer-encoding"] == b"chunked"
            assert body == b"".join(b"i am the number %d<br/>" % i for i in range(1, 100))


def test_chunk_messages_to_http10_client_are_raw_then_close(make_server, nodes):
    server = make_server(VHOST).start()
    nodes.append(start_node(server, handler=chunked_handler))
    wait_available(server, "node1")
    raw = http_request(server.port, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    head, body = raw.split(b"\r\n\r\n", 1)
    assert b"Transfer-Encoding" not in head
    assert body == b"".join(b"i am the number %d<br/>" % i for i in range(1, 100))


def test_end_closes_a_response_without_length(make_server, nodes):
    def handler(node, sid, mtype, body):
        if mtype == b"uwsgi":
            node.send(sid, b"headers", b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n")
            for part in (b"<h1>Hello World</h1>", b"<h2>Done !!!</h2>"):
                node.send(sid, b"body", part)
            node.send(sid, b"end", b"")

    server = make_server(VHOST).start()
    nodes.append(start_node(server, handler=handler))
    wait_available(server, "node1")
    raw = http_request(server.port, get(server.port))
    assert raw.endswith(b"<h1>Hello World</h1><h2>Done !!!</h2>")
    time.sleep(0.3)
    # The node ended the session itself: it is not sent `end` back.
    assert nodes[0].of_type(b"end") == []


def test_pipelined_requests_answered_in_order(make_server, nodes):
    outstanding = []
    overlap = []

    def handler(node, sid, mtype, body):
        if mtype != b"uwsgi":
            return
        if outstanding:
            overlap.append(True)
        outstanding.append(1)
        path = uwsgi_to_dict(body)[b"PATH_INFO"]

        def answer():
            time.sleep(random.uniform(0, 0.02))
            outstanding.pop()
            node.send(sid, b"headers", b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(path))
            node.send(sid, b"body", path)
        threading.Thread(target=answer).start()

    server = make_server(VHOST).start()
    nodes.append(start_node(server, handler=handler))
    wait_available(server, "node1")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"".join(get(server.port, "/p%d" % i) for i in range(10)))
        buf = b""
        for i in range(10):
            status, _, body, buf = read_response(s, buf)
            assert body == b"/p%d" % i
    assert not overlap


def test_streamed_body_and_100_continue(make_server, nodes):
    server = make_server(VHOST).start()
    node = start_node(server, handler=UploadDigest())
    nodes.append(node)
    wait_available(server, "node1")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /up HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n"
                  b"Expect: 100-continue\r\n\r\n")
        assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"01234")
        time.sleep(0.1)
        s.sendall(b"56789")
        status, _, body, _ = read_response(s)
        assert status == 200
        assert body == hashlib.sha256(b"0123456789").hexdigest().encode()
    assert b"".join(b for _, t, b in node.messages if t == b"body") == b"0123456789"
    env = uwsgi_to_dict(node.of_type(b"uwsgi")[-1][2])
    assert env[b"CONTENT_LENGTH"] == b"10"


def answer_at_body_end(node, sid, mtype, body):
    """Answers once the request body is complete (an empty `body` ends it)."""
    if mtype == b"body" and body == b"":
        hello_handler()(node, sid, b"uwsgi", b"")


def test_chunked_request_body_is_dechunked(make_server, nodes):
    server = make_server(VHOST).start()
    node = start_node(server, handler=answer_at_body_end)
    nodes.append(node)
    wait_available(server, "node1")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /c HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"5\r\nhello\r\n")
        time.sleep(0.1)
        s.sendall(b"6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n")
        status, _, _, _ = read_response(s)
        assert status == 200
    node.wait_for(lambda: node.of_type(b"body") and node.of_type(b"body")[-1][2] == b"")
    bodies = [b for _, t, b in node.messages if t == b"body"]
    assert b"".join(bodies) == b"hello world" and bodies[-1] == b""
    env = uwsgi_to_dict(node.of_type(b"uwsgi")[-1][2])
    assert b"CONTENT_LENGTH" not in env and env[b"HTTP_TRANSFER_ENCODING"] == b"chunked"


def test_large_uploads_from_many_clients_arrive_complete(make_server, nodes):
    handler = UploadDigest()

    server = make_server(VHOST).start()
    nodes.append(start_node(server, handler=handler))
    wait_available(server, "node1")
    results = []

    def client(i):
        payload = os.urandom(1 << 20)
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
            s.sendall(b"PUT /u HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n"
                      % len(payload) + payload)
            status, _, body, _ = read_response(s)
        results.append(body == hashlib.sha256(payload).hexdigest().encode())

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [True] * 16


def test_retry_goes_to_the_other_node_and_502_after_max_hops(make_server, nodes):
    def retrier(node, sid, mtype, body):
        if mtype == b"uwsgi":
            node.send(sid, b"retry", b"")

    server = make_server("[blastbeat:localhost]\nnode = a\nnode = b\n",
                         global_extra="max-hops = 3\n").start()
    a = start_node(server, "a", retrier)
    b = start_node(server, "b", hello_handler(b"from b"))
    nodes.extend([a, b])
    wait_available(server, "a")
    wait_available(server, "b")
    for _ in range(3):
        raw = http_request(server.port, b"POST / HTTP/1.1\r\nHost: localhost\r\n"
                           b"Content-Length: 4\r\nConnection: close\r\n\r\ndata")
        assert raw.endswith(b"from b")
    # b got the ENV and the body kept for the retry
    assert [m for m in b.messages if m[1] == b"body"][-1][2] == b"data"
    b.handler = retrier
    raw = http_request(server.port, get(server.port))
    assert raw.startswith(b"HTTP/1.1 502")
    # max-hops retries were made: 1 + 3 uwsgi messages in all
    assert len(a.of_type(b"uwsgi")) + len(b.of_type(b"uwsgi")) == 3 + 3 + 4


def test_node_dropped_without_pongs_and_back(make_server, nodes):
    server = make_server(VHOST).start()
    node = start_node(server)
    nodes.append(node)
    wait_available(server, "node1")
    after_check(server)
    node.answer_pings = False
    server.wait_log("node node1 is off", timeout=5)   # 3 x ping-freq (0.5 s)
    raw = http_request(server.port, get(server.port))
    assert raw.startswith(b"HTTP/1.1 503")
    node.answer_pings = True
    time.sleep(1.2)
    after_check(server)


def test_least_connections_spread(make_server, nodes):
    held = []

    def holder(node, sid, mtype, body):
        if mtype == b"uwsgi":
            held.append((node, sid))

    server = make_server("[blastbeat:localhost]\nnode = a\nnode = b\n").start()
    a = start_node(server, "a", holder)
    b = start_node(server, "b", holder)
    nodes.extend([a, b])
    wait_available(server, "a")
    wait_available(server, "b")
    socks = []
    for i in range(10):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        s.sendall(get(server.port))
        socks.append(s)
        deadline = time.time() + 5
        while len(held) < i + 1 and time.time() < deadline:
            time.sleep(0.01)
    assert len(a.of_type(b"uwsgi")) == 5 and len(b.of_type(b"uwsgi")) == 5
    for node, sid in held:
        node.send(sid, b"end")
    for s in socks:
        s.close()


def test_foreign_identity_gets_nothing_and_cannot_write(make_server, nodes):
    waiting = []

    def holder(node, sid, mtype, body):
        if mtype == b"uwsgi":
            waiting.append(sid)

    server = make_server(VHOST + "[blastbeat:other]\nnode = node2\n").start()
    node1 = start_node(server, "node1", holder)
    node2 = start_node(server, "node2")
    evil = start_node(server, "evil")
    nodes.extend([node1, node2, evil])
    wait_available(server, "node1")
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    s.sendall(get(server.port))
    node1.wait_for(lambda: waiting)
    sid = waiting[0]
    for intruder in (evil, node2):
        intruder.send(sid, b"headers", b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
        intruder.send(sid, b"body", b"EVIL")
        intruder.send(sid, b"end")
    time.sleep(0.5)
    node1.send(sid, b"headers", b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
    node1.send(sid, b"body", b"GOOD")
    status, _, body, _ = read_response(s)
    assert body == b"GOOD"
    s.close()
    time.sleep(0.5)
    assert evil.messages == [] and evil.pings == 0
    server.wait_log("for a session of node1 ignored")


def test_client_disconnect_sends_end_once(make_server, nodes):
    server = make_server(VHOST).start()
    node = start_node(server, handler=lambda *a: None)
    nodes.append(node)
    wait_available(server, "node1")
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    s.sendall(get(server.port))
    node.wait_for(lambda: node.of_type(b"uwsgi"))
    s.close()
    node.wait_for(lambda: node.of_type(b"end"))
    time.sleep(0.5)
    sid = node.of_type(b"uwsgi")[0][0]
    assert node.of_type(b"end") == [(sid, b"end", b"")]
    # Late messages for the ended sid are ignored without harm.
    node.send(sid, b"body", b"late")
    node.handler = hello_handler()
    after_check(server)


# -- errors of spec §6 -------------------------------------------------------------------

@pytest.mark.parametrize("raw,status", [
    (b"BLAH\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: nowhere\r\n\r\n", 404),
    (b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    (b"GET / HTTP/1.1\r\nHost: localhost\r\n" + b"X: y\r\n" * 70 + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: localhost\r\nX: " + b"y" * 70000 + b"\r\n\r\n", 431),
    (b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
])
def test_error_statuses(served, raw, status):
    server, node = served
    reply = http_request(server.port, raw)
    assert reply.startswith(b"HTTP/1.1 %d " % status), reply[:100]
    head, body = reply.split(b"\r\n\r\n", 1)
    assert b"Connection: close" in head and body.startswith(b"%d" % status)
    after_check(server)


def test_no_node_503_and_broken_head_502(make_server, nodes):
    server = make_server(VHOST).start()
    raw = http_request(server.port, get(server.port))
    assert raw.startswith(b"HTTP/1.1 503")

    def broken(node, sid, mtype, body):
        if mtype == b"uwsgi":
            node.send(sid, b"headers", b"this is not HTTP")

    nodes.append(start_node(server, handler=broken))
    wait_available(server, "node1")
    raw = http_request(server.port, get(server.port))
    assert raw.startswith(b"HTTP/1.1 502")


@pytest.mark.parametrize("where", ["vhost", "global"])
def test_sessions_limit_503(make_server, nodes, where):
    if where == "vhost":
        server = make_server("[blastbeat:localhost]\nnode = node1\nsessions = 1\n").start()
    else:
        server = make_server(VHOST, global_extra="sessions = 1\n").start()
    node = start_node(server, handler=lambda *a: None)
    nodes.append(node)
    wait_available(server, "node1")
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    s.sendall(get(server.port))
    node.wait_for(lambda: node.of_type(b"uwsgi"))
    raw = http_request(server.port, get(server.port))
    assert raw.startswith(b"HTTP/1.1 503") and b"session limit" in raw
    s.close()
    node.wait_for(lambda: node.of_type(b"end"))
    node.handler = hello_handler()
    after_check(server)


def test_idle_timeout_and_slowloris(make_server, nodes):
    server = make_server(VHOST, global_extra="timeout = 1\nheader-timeout = 1\n").start()
    nodes.append(start_node(server))
    wait_available(server, "node1")
    idle = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    slow = []
    for _ in range(50):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        s.sendall(b"GET / HTTP/1.1\r\n")
        slow.append(s)
    start = time.time()
    for _ in range(8):
        for s in slow:
            try:
                s.sendall(b"X")
            except OSError:
                pass
        after_check(server)         # others are served meanwhile
        time.sleep(0.2)
    assert idle.recv(100) == b""    # closed by the server
    for s in slow:
        s.settimeout(5)
        try:
            assert s.recv(100) == b""
        except ConnectionResetError:
            pass
        s.close()
    assert time.time() - start < 6
    idle.close()


def test_garbage_clients_do_not_hurt_others(served):
    server, node = served
    rnd = random.Random(7)
    for i in range(30):
        junk = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 3000)))
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            try:
                s.sendall(junk + b"\r\n\r\n")
                s.recv(1000)
            except OSError:
                pass
    after_check(server)


def slow_reader(server, path):
    """A client that asks for ``path`` and then never reads."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", server.port))
    s.sendall(get(server.port, path))
    return s


def test_slow_reader_closed_at_writequeue_buffer(make_server, nodes):
    big = b"x" * (8 << 20)

    def handler(node, sid, mtype, body):
        if mtype == b"uwsgi":
            node.send(sid, b"headers", b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big))
            for i in range(0, len(big), 1 << 16):
                node.send(sid, b"body", big[i:i + (1 << 16)])

    server = make_server(VHOST, global_extra="writequeue-buffer = 1048576\n").start()
    node = start_node(server, handler=handler)
    nodes.append(node)
    wait_available(server, "node1")
    s = slow_reader(server, "/")
    node.wait_for(lambda: node.of_type(b"end"), timeout=20)
    server.wait_log("over writequeue-buffer")
    s.close()
    node.handler = hello_handler()
    after_check(server)


def test_memory_limit_503(make_server, nodes):
    big = b"x" * (24 << 20)

    def handler(node, sid, mtype, body):
        if mtype == b"uwsgi":
            if uwsgi_to_dict(body)[b"PATH_INFO"] == b"/big":
                node.send(sid, b"headers",
                          b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big))
                node.send(sid, b"body", big)
            else:
                hello_handler()(node, sid, mtype, body)

    server = make_server(VHOST, global_extra="memory = 1\nwritequeue-buffer = 67108864\n").start()
    node = start_node(server, handler=handler)
    nodes.append(node)
    wait_available(server, "node1")
    s = slow_reader(server, "/big")
    time.sleep(1)
    raw = http_request(server.port, get(server.port))
    assert raw.startswith(b"HTTP/1.1 503") and b"memory" in raw
    s.close()
    time.sleep(0.5)
    after_check(server)


def test_thousand_concurrent_connections(served):
    server, node = served
    sel = selectors.DefaultSelector()
    socks = []
    for i in range(1000):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        socks.append(s)
    for s in socks:
        s.sendall(get(server.port))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, [b""])
    done = 0
    deadline = time.time() + 60
    while done < 1000 and time.time() < deadline:
        for key, _ in sel.select(1):
            data = key.fileobj.recv(65536)
            key.data[0] += data
            if key.data[0].endswith(b"hello"):
                done += 1
                sel.unregister(key.fileobj)
    for s in socks:
        s.close()
    assert done == 1000
    after_check(server)


def test_full_node_pipe_pauses_the_client_and_loses_nothing(make_server, nodes):
    """ROUTER_MANDATORY: zmq.Again is back-pressure, never a dropped message."""
    handler = UploadDigest()

    server = make_server(VHOST, global_extra="zmq-hwm = 4\nping-freq = 3\n").start()
    node = start_node(server, handler=handler, rcvhwm=4, paused=1.5)
    nodes.append(node)
    server.wait_log("node node1 is available")
    payload = os.urandom(8 << 20)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(b"PUT / HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n"
                  % len(payload) + payload)
        status, _, body, _ = read_response(s)
    assert body == hashlib.sha256(payload).hexdigest().encode()
    server.signal(__import__("signal").SIGUSR1)
    server.wait_log("zmq_backpressure=")
    assert int(re.search(r"zmq_backpressure=(\d+)", server.log()).group(1)) > 0
    node.handler = hello_handler()
    after_check(server)


def test_ipv6_listener(make_server, nodes):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no ::1 here")
    from conftest import free_port
    port6 = free_port()
    server = make_server(VHOST, global_extra="bind = ::1:%d\n" % port6).start()
    nodes.append(start_node(server))
    wait_available(server, "node1")
    with socket.create_connection(("::1", port6), timeout=10) as s:
        s.sendall(get(port6))
        status, _, body, _ = read_response(s)
    assert body == b"hello"
    env = uwsgi_to_dict(nodes[0].of_type(b"uwsgi")[-1][2])
    assert env[b"REMOTE_ADDR"] == b"::1"


def test_several_routers_and_a_vhost_with_its_own(make_server, nodes):
    from conftest import Node, free_port
    second = "tcp://127.0.0.1:%d" % free_port()
    private = "tcp://127.0.0.1:%d" % free_port()
    server = make_server(VHOST + "[blastbeat:private]\nnode = node1\nzmq = %s\n" % private,
                         global_extra="zmq = %s\n" % second).start()
    # node1 of the global vhost talks on the second global ROUTER
    public_node = Node(second, "node1", hello_handler(b"public"))
    # a node of the same name on the private ROUTER is another node
    private_node = Node(private, "node1", hello_handler(b"private"))
    for n in (public_node, private_node):
        n.start()
        n._ready.wait(5)
        nodes.append(n)
    time.sleep(1.5)
    assert http_request(server.port, get(server.port)).endswith(b"public")
    assert http_request(server.port, get(server.port, host="private")).endswith(b"private")
    assert public_node.pings > 0 and private_node.pings > 0


def test_204_and_304_keep_the_connection(make_server, nodes):
    def handler(node, sid, mtype, body):
        if mtype == b"uwsgi":
            path = uwsgi_to_dict(body)[b"PATH_INFO"]
            if path == b"/204":
                node.send(sid, b"headers", b"HTTP/1.1 204 No Content\r\n\r\n")
            elif path == b"/304":
                node.send(sid, b"headers", b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n")
            else:
                hello_handler()(node, sid, mtype, body)

    server = make_server(VHOST).start()
    nodes.append(start_node(server, handler=handler))
    wait_available(server, "node1")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        for path in ("/204", "/304"):
            s.sendall(get(server.port, path))
            data = b""
            while not data.endswith(b"\r\n\r\n"):
                data += s.recv(1000)
            assert data.split(b" ")[1] == path[1:].encode()
        s.sendall(get(server.port))
        assert read_response(s)[2] == b"hello"


def test_env_over_64k_gets_431(make_server, nodes):
    server = make_server(VHOST, global_extra="max-headers = 1000\n").start()
    nodes.append(start_node(server))
    wait_available(server, "node1")
    # 1000 headers: a 63 KB head (under the 64 KiB limit), a 68 KB env.
    big = b"".join(b"X-%s-%04d: v\r\n" % (b"n" * 51, i) for i in range(1000))
    assert len(big) < 65000
    raw = http_request(server.port, b"GET / HTTP/1.1\r\nHost: localhost\r\n" + big + b"\r\n")
    assert raw.startswith(b"HTTP/1.1 431")
    assert nodes[0].of_type(b"uwsgi") == []
    after_check(server)


def test_malformed_and_unknown_messages_are_counted_and_ignored(served):
    server, node = served
    node.send(b"", b"pong")     # keep it alive, then junk from the node thread
    with node._out_lock:
        node._out.extend([[b"only-one-part"][:1] + [b"x", b"y", b"z", b"w"],
                          [b"\x00" * 16, b"nonsense-type", b""],
                          [b"\x01" * 16, b"body", b"no such sid"]])
    time.sleep(0.5)
    server.signal(__import__("signal").SIGUSR1)
    server.wait_log("zmq_malformed=1 ")
    assert "zmq_unknown_sid=2" in server.log()
    after_check(server)


def test_vhost_with_own_bind_is_served_only_there(make_server, nodes):
    from conftest import free_port
    own = free_port()
    server = make_server(VHOST + "[blastbeat:mine]\nnode = node1\nbind = 127.0.0.1:%d\n" % own)
    server.start()
    server.wait_listening(own)
    nodes.append(start_node(server))
    wait_available(server, "node1")
    assert http_request(own, get(own, host="mine")).endswith(b"hello")
    assert http_request(server.port, get(server.port, host="mine")).startswith(b"HTTP/1.1 404")
    assert http_request(own, get(own, host="localhost")).startswith(b"HTTP/1.1 404")


def test_tiny_chunks_do_not_become_a_message_each(make_server, nodes):
    server = make_server(VHOST).start()
    node = start_node(server, handler=answer_at_body_end)
    nodes.append(node)
    wait_available(server, "node1")
    body = b"".join(b"1\r\n%c\r\n" % (65 + i % 26) for i in range(20000)) + b"0\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
                  + body)
        assert read_response(s)[0] == 200
    pieces = [b for _, t, b in node.messages if t == b"body"]
    assert b"".join(pieces) == bytes(65 + i % 26 for i in range(20000))
    assert len(pieces) < 100


def test_bad_request_after_a_pipelined_good_one(served):
    server, node = served
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(get(server.port) + b"BROKEN\r\n\r\n")
        status, _, body, rest = read_response(s)
        assert (status, body) == (200, b"hello")
        status, _, body, _ = read_response(s, rest)
        assert status == 400


def test_node_dying_mid_response_closes_its_clients_only(make_server, nodes):
    def half(node, sid, mtype, body):
        if mtype == b"uwsgi":
            node.send(sid, b"headers", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
            node.send(sid, b"body", b"12345")

    server = make_server("[blastbeat:localhost]\nnode = dying\n[blastbeat:other]\nnode = node1\n")
    server.start()
    dying = start_node(server, "dying", half)
    healthy = start_node(server, "node1")
    nodes.extend([dying, healthy])
    wait_available(server, "dying")
    wait_available(server, "node1")
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    s.sendall(get(server.port))
    dying.wait_for(lambda: dying.of_type(b"uwsgi"))
    dying.stop()                        # gone: no more pongs
    data = b""
    while True:
        chunk = s.recv(1000)
        if not chunk:
            break
        data += chunk
    assert data.endswith(b"12345")      # truncated, then closed: never hangs
    server.wait_log("node dying is off")
    raw = http_request(server.port, get(server.port, host="other"))
    assert raw.endswith(b"hello")
    raw = http_request(server.port, get(server.port))
    assert raw.startswith(b"HTTP/1.1 503")


def test_node_gone_with_many_requests_in_flight_retries_them_all(make_server, nodes):
    held = []

    def holder(node, sid, mtype, body):
        if mtype == b"uwsgi":
            held.append(sid)

    server = make_server("[blastbeat:localhost]\nnode = a\n[blastbeat:spare]\nnode = b\n")
    server.start()
    a = start_node(server, "a", holder)
    nodes.append(a)
    wait_available(server, "a")
    socks = []
    for _ in range(400):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=20)
        s.sendall(get(server.port))
        socks.append(s)
    a.wait_for(lambda: len(held) == 400, timeout=20)
    # b joins the vhost by reload, then a disappears with 400 requests held
    b = start_node(server, "b", hello_handler(b"from b"))
    nodes.append(b)
    server.rewrite("[blastbeat:localhost]\nnode = a\nnode = b\n")
    server.signal(__import__("signal").SIGHUP)
    server.wait_log("configuration reloaded")
    wait_available(server, "b")
    a.stop()
    for s in socks:
        status, _, body, _ = read_response(s)
        assert body == b"from b"
        s.close()
    assert "Traceback" not in server.log()
