"""The seed README's ping/pong consumer and chunked example, in Python 3."""
import os

import zmq

context = zmq.Context()
socket = context.socket(zmq.DEALER)
socket.setsockopt(zmq.IDENTITY, os.environ.get("BB_NODE", "foobar1").encode())
socket.connect(os.environ.get("BB_ZMQ", "tcp://127.0.0.1:5000"))

while True:
    # receive a blastbeat message
    sid, msg_type, msg_body = socket.recv_multipart()
    if msg_type == b"ping":
        socket.send(sid, zmq.SNDMORE)
        socket.send(b"pong", zmq.SNDMORE)
        socket.send(b"")
    elif msg_type == b"uwsgi":
        headers = "\r\n".join(["HTTP/1.1 200 OK", "Content-Type: text/html",
                               "Transfer-Encoding: chunked"]) + "\r\n\r\n"
        socket.send(sid, zmq.SNDMORE)
        socket.send(b"headers", zmq.SNDMORE)
        socket.send(headers.encode())
        for i in range(1, 100):
            socket.send(sid, zmq.SNDMORE)
            socket.send(b"chunk", zmq.SNDMORE)
            socket.send(b"i am the number %d<br/>" % i)
        # to end a chunked response just send an empty chunk
        socket.send(sid, zmq.SNDMORE)
        socket.send(b"chunk", zmq.SNDMORE)
        socket.send(b"")
