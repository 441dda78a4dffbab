"""The seed README's examples, ported to Python 3 (examples/), run as nodes."""

import asyncio
import os
import socket
import subprocess
import sys
import time

import pytest
import websockets

from conftest import ROOT, http_request, read_response

EXAMPLES = os.path.join(ROOT, "examples")


@pytest.fixture
def example(make_server):
    procs = []

    def run(name, identity="foobar1"):
        server = make_server("[blastbeat:localhost]\nnode = %s\n" % identity).start()
        env = dict(os.environ, BB_ZMQ=server.zmq, BB_NODE=identity, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen([sys.executable, os.path.join(EXAMPLES, name)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(proc)
        return server, proc

    yield run
    for proc in procs:
        proc.kill()
        proc.wait()


def test_simple_backend_receives_messages(example):
    server, proc = example("simple_node.py")
    # It never answers pings, but a node that sent any valid message... it
    # sends none: requests wait for it to come up, so send once it connected.
    time.sleep(1.5)
    reply = http_request(server.port, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", timeout=2)
    assert reply.startswith(b"HTTP/1.1 503")     # not available: it never pongs
    line = proc.stdout.readline()
    assert line == b"received a message of type ping\n"


def test_threaded_dispatcher(example):
    server, proc = example("threaded_node.py")
    server.wait_log("node foobar1 is available")
    socks = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(5)]
    for i, s in enumerate(socks):
        s.sendall(b"GET /w%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % i)
    for i, s in enumerate(socks):
        status, _, body, _ = read_response(s)
        assert body == b"worker for /w%d" % i
        s.sendall(b"GET /again HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert read_response(s)[2] == b"worker for /again"
        s.close()


def test_ping_pong_consumer_and_chunked(example):
    server, proc = example("chunked_node.py")
    server.wait_log("node foobar1 is available")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        status, headers, body, _ = read_response(s)
    assert headers[b"transfer-encoding"] == b"chunked"
    assert body == b"".join(b"i am the number %d<br/>" % i for i in range(1, 100))


def test_ruby_example_page_and_websocket_echo(example):
    server, proc = example("echo_node.py", identity="FOOBAR1")
    server.wait_log("node FOOBAR1 is available")
    reply = http_request(server.port, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 OK")
    assert b"Server: tremolo.py" in reply
    assert reply.endswith(b"<h1>Hello World</h1><h2>Done !!!</h2><h3>Done !!!</h3>"
                          b"<h4>Done !!!</h4>")

    async def talk():
        async with websockets.connect("ws://localhost:%d/" % server.port) as ws:
            for message in ("hello", b"\x00\x01binary", "x" * 100000):
                await ws.send(message)
                assert await ws.recv() == message

    asyncio.run(asyncio.wait_for(talk(), 20))
