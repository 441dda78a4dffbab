"""The seed README's Ruby EventMachine example, in Python 3.

Answers every request with a page in several ``body`` messages closed by
``end`` (no Content-Length), and echoes WebSocket messages.  On a WebSocket
session the page it sends for the upgrade's env is ignored by the server.
"""
import os
import struct

import zmq


def uwsgi_to_hash(pkt):
    ulen, = struct.unpack("<H", pkt[1:3])
    pos = 4
    h = {}
    while pos < ulen:
        klen, = struct.unpack("<H", pkt[pos:pos + 2])
        k = pkt[pos + 2:pos + 2 + klen]
        pos += 2 + klen
        vlen, = struct.unpack("<H", pkt[pos:pos + 2])
        v = pkt[pos + 2:pos + 2 + vlen]
        pos += 2 + vlen
        h[k] = v
    return h


ctx = zmq.Context()
dealer = ctx.socket(zmq.DEALER)
dealer.setsockopt(zmq.IDENTITY, os.environ.get("BB_NODE", "FOOBAR1").encode())
dealer.connect(os.environ.get("BB_ZMQ", "tcp://127.0.0.1:5000"))

while True:
    sid, command, body = dealer.recv_multipart()
    if command == b"ping":
        dealer.send_multipart([sid, b"pong", b""])
    elif command == b"uwsgi":
        env = uwsgi_to_hash(body)
        headers = [env[b"SERVER_PROTOCOL"] + b" 200 OK", b"Content-Type: text/html",
                   b"Server: tremolo.py"]
        dealer.send_multipart([sid, b"headers", b"\r\n".join(headers) + b"\r\n\r\n"])
        dealer.send_multipart([sid, b"body", b"<h1>Hello World</h1>"])
        dealer.send_multipart([sid, b"body", b"<h2>Done !!!</h2>"])
        dealer.send_multipart([sid, b"body", b"<h3>Done !!!</h3>"])
        dealer.send_multipart([sid, b"body", b"<h4>Done !!!</h4>"])
        dealer.send_multipart([sid, b"end", b""])
    elif command in (b"websocket", b"websocket/binary"):
        dealer.send_multipart([sid, command, body])
