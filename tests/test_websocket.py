"""WebSocket end to end: the real daemon, a real client library, raw hostile clients."""

import asyncio
import base64
import os
import socket
import time

import pytest
import websockets

from bb import ws
from conftest import http_request, start_node, uwsgi_to_dict, wait_available

VHOST = "[blastbeat:localhost]\nnode = node1\n"


def echo_handler(node, sid, mtype, body):
    if mtype in (b"websocket", b"websocket/binary"):
        node.send(sid, mtype, body)


@pytest.fixture
def ws_server(make_server, nodes):
    server = make_server(VHOST, global_extra="websocket-max-message = 20000000\n").start()
    nodes.append(start_node(server, handler=echo_handler))
    wait_available(server, "node1")
    return server, nodes[0]


def url(server, path="/ws"):
    return "ws://localhost:%d%s" % (server.port, path)


def run(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.mark.parametrize("compression", [None, "deflate"])
def test_echo_with_a_real_client(ws_server, compression):
    server, node = ws_server

    async def talk():
        async with websockets.connect(url(server), compression=compression,
                                      max_size=None) as c:
            messages = ["hello", "κόσμε", b"\x00\xff" * 10, "x" * (1 << 20),
                        os.urandom(1 << 20), b"y" * (16 << 20)]
            for m in messages:
                await c.send(m)
                assert await c.recv() == m
            # a fragmented message, sent as an iterable of frames
            await c.send(["frag", "ment", "ed"])
            assert await c.recv() == "fragmented"
            await c.ping(b"are you there")      # answered by the server itself

    run(talk())
    kinds = [t for _, t, _ in node.messages]
    assert kinds[0] == b"uwsgi"
    env = uwsgi_to_dict(node.messages[0][2])
    assert env[b"PATH_INFO"] == b"/ws" and env[b"HTTP_UPGRADE"].lower() == b"websocket"
    assert b"websocket/binary" in kinds and kinds[-1] == b"end"


def test_close_from_client_and_from_node(ws_server):
    server, node = ws_server

    async def client_closes():
        async with websockets.connect(url(server)) as c:
            await c.send("x")
            await c.recv()
        return c.close_code

    assert run(client_closes()) == 1000
    node.wait_for(lambda: node.of_type(b"end"))

    async def node_closes():
        async with websockets.connect(url(server)) as c:
            await c.send("x")
            await c.recv()
            sid = node.of_type(b"websocket")[-1][0]
            node.send(sid, b"end")
            with pytest.raises(websockets.ConnectionClosedOK):
                await c.recv()
            return c.close_code

    ends = len(node.of_type(b"end"))
    assert run(node_closes()) == 1000
    time.sleep(0.3)
    assert len(node.of_type(b"end")) == ends   # the node ended it: no `end` back


def test_thousand_concurrent_websockets(ws_server):
    server, node = ws_server

    async def one(i):
        async with websockets.connect(url(server), open_timeout=60) as c:
            for j in range(3):
                await c.send("%d-%d" % (i, j))
                assert await c.recv() == "%d-%d" % (i, j)
        return True

    async def many():
        results = []
        for start in range(0, 1000, 250):
            results += await asyncio.gather(*(one(i) for i in range(start, start + 250)))
        return results

    assert run(many(), timeout=180) == [True] * 1000


class RawClient:
    """A hand-driven WebSocket client for hostile cases."""

    def __init__(self, server, extra=b""):
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        key = base64.b64encode(os.urandom(16))
        self.sock.sendall(b"GET /raw HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                          b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key +
                          b"\r\nSec-WebSocket-Version: 13\r\n" + extra + b"\r\n")
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += self.sock.recv(4096)
        head, self.rest = buf.split(b"\r\n\r\n", 1)
        self.head = head
        assert head.startswith(b"HTTP/1.1 101"), head
        assert ws.accept_key(key) in head
        self.parser = ws.FrameParser(require_mask=False)

    def send(self, raw):
        self.sock.sendall(raw)

    def events(self, timeout=10):
        """Events until the server closes the TCP connection."""
        events = self.parser.feed(self.rest)
        self.sock.settimeout(timeout)
        while True:
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not data:
                break
            events += self.parser.feed(data)
        return events


def masked(opcode, payload, fin=True, rsv=0):
    raw = b"".join(ws.encode_frame(opcode, payload, fin=fin, mask=os.urandom(4)))
    return bytes([raw[0] | rsv]) + raw[1:] if rsv else raw


@pytest.mark.parametrize("raw,code", [
    (b"".join(ws.encode_frame(ws.OP_TEXT, b"unmasked")), 1002),
    (masked(0x5, b"bad opcode"), 1002),
    (masked(ws.OP_PING, b"x" * 126), 1002),
    (masked(ws.OP_TEXT, b"x", rsv=0x20), 1002),
    (masked(ws.OP_TEXT, b"caf\xc3"), 1007),
    (masked(ws.OP_TEXT, b"ok", fin=False) + masked(ws.OP_CONT, b"\xed\xa0\x80"), 1007),
])
def test_hostile_clients_get_the_right_close_code(ws_server, raw, code):
    server, node = ws_server

    async def bystander(stop):
        async with websockets.connect(url(server)) as c:
            n = 0
            while not stop.is_set():
                await c.send("still here %d" % n)
                assert await c.recv() == "still here %d" % n
                n += 1
            return n

    async def scenario():
        stop = asyncio.Event()
        task = asyncio.ensure_future(bystander(stop))
        await asyncio.sleep(0.1)
        client = RawClient(server)
        client.send(masked(ws.OP_TEXT, b"before"))
        client.send(raw)
        events = await asyncio.get_running_loop().run_in_executor(None, client.events)
        stop.set()
        return events, await task

    events, exchanged = run(scenario())
    assert events[0] == (ws.MESSAGE, False, b"before")
    assert events[-1][0] == ws.CLOSE and events[-1][1] == code
    assert exchanged > 0


def test_never_ending_fragmented_message_1009(make_server, nodes):
    server = make_server(VHOST, global_extra="websocket-max-message = 100000\n").start()
    nodes.append(start_node(server, handler=echo_handler))
    wait_available(server, "node1")
    client = RawClient(server)
    client.send(masked(ws.OP_BINARY, b"x" * 1000, fin=False))
    try:
        for _ in range(200):
            client.send(masked(ws.OP_CONT, b"x" * 1000, fin=False))
    except OSError:
        pass
    events = client.events()
    assert events[-1][:2] == (ws.CLOSE, 1009)
    nodes[0].wait_for(lambda: nodes[0].of_type(b"end"))


def test_server_pings_idle_clients_and_closes_silent_ones(make_server, nodes):
    server = make_server(VHOST, global_extra="timeout = 2\n").start()
    nodes.append(start_node(server, handler=echo_handler))
    wait_available(server, "node1")
    client = RawClient(server)
    start = time.time()
    events = client.events(timeout=10)     # never answers the server's pings
    assert (ws.PING, b"bb") in events
    assert events[-1][:2] == (ws.CLOSE, 1008)
    assert 1.5 < time.time() - start < 6

    async def answering():
        async with websockets.connect(url(server), ping_interval=None) as c:
            await asyncio.sleep(4)      # the library answers pings: stays open
            await c.send("alive")
            return await c.recv()

    assert run(answering()) == "alive"


def test_client_that_does_not_read_is_closed(make_server, nodes):
    flood = b"z" * 65536

    def handler(node, sid, mtype, body):
        if mtype == b"websocket":
            for _ in range(200):
                node.send(sid, b"websocket/binary", flood)

    server = make_server(VHOST, global_extra="writequeue-buffer = 1048576\n").start()
    node = start_node(server, handler=handler)
    nodes.append(node)
    wait_available(server, "node1")
    client = RawClient(server)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.send(masked(ws.OP_TEXT, b"flood me"))
    node.wait_for(lambda: node.of_type(b"end"), timeout=20)
    server.wait_log("over writequeue-buffer")
    client.sock.close()


@pytest.mark.parametrize("extra,status", [
    (b"Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", 426),
    (b"Sec-WebSocket-Version: 13\r\n", 400),
    (b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: tooshort\r\n", 400),
])
def test_bad_handshakes(ws_server, extra, status):
    server, node = ws_server
    raw = http_request(server.port, b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                       b"Connection: Upgrade\r\n" + extra + b"\r\n")
    assert raw.startswith(b"HTTP/1.1 %d" % status)
    if status == 426:
        assert b"Sec-WebSocket-Version: 13\r\n" in raw


def test_dropped_tcp_connection_sends_end(ws_server):
    server, node = ws_server
    client = RawClient(server)
    client.send(masked(ws.OP_TEXT, b"hi"))
    node.wait_for(lambda: node.of_type(b"websocket"))
    client.sock.close()                 # no close frame
    node.wait_for(lambda: node.of_type(b"end"))
    sid = node.of_type(b"websocket")[-1][0]
    assert [m for m in node.of_type(b"end") if m[0] == sid] == [(sid, b"end", b"")]


def test_permessage_deflate_is_negotiated_when_offered(ws_server):
    server, node = ws_server
    plain = RawClient(server)
    assert b"Sec-WebSocket-Extensions" not in plain.head
    offered = RawClient(server, b"Sec-WebSocket-Extensions: permessage-deflate; "
                                b"client_max_window_bits\r\n")
    assert b"\r\nSec-WebSocket-Extensions: permessage-deflate\r\n" in offered.head + b"\r\n"
    # a compressed message from the node comes back with RSV1 and inflates
    parser = ws.FrameParser(require_mask=False, deflate=ws.Deflate())
    text = b"compress me " * 50
    offered.send(masked(ws.OP_TEXT, text))
    offered.sock.settimeout(5)
    events = []
    while not events:
        events = parser.feed(offered.sock.recv(65536))
    assert events == [(ws.MESSAGE, False, text)]
    plain.sock.close()
    offered.sock.close()
