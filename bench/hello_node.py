"""The benchmark's hello-world node: answers every request, echoes WebSockets.

Written the way a careful node author would for speed: it drains the
DEALER in batches and uses pyzmq's Cython send/recv directly, so that the
node costs less than the server it is measuring.
"""

import argparse
import struct

import zmq

_send = zmq.backend.Socket.send
_recv = zmq.backend.Socket.recv
NOBLOCK = int(zmq.NOBLOCK)
MORE = int(zmq.SNDMORE)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--connect", required=True)
    p.add_argument("--identity", default="hello")
    p.add_argument("--size", type=int, default=5, help="response body size")
    p.add_argument("--upload", action="store_true",
                   help="answer when the request body (CONTENT_LENGTH) has arrived")
    args = p.parse_args(argv)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, args.identity.encode())
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(args.connect)
    sock.send_multipart([b"", b"pong", b""])
    body = b"x" * args.size if args.size != 5 else b"hello"
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body)
    pending = {}
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)

    def answer(sid):
        _send(sock, sid, MORE)
        _send(sock, b"headers", MORE)
        _send(sock, head)
        _send(sock, sid, MORE)
        _send(sock, b"body", MORE)
        _send(sock, body)

    while True:
        poller.poll()
        while True:
            try:
                sid = _recv(sock, NOBLOCK)
            except zmq.Again:
                break
            mtype = _recv(sock)
            data = _recv(sock)
            if mtype == b"uwsgi":
                if args.upload:
                    size = _content_length(data)
                    if size:
                        pending[sid] = size
                        continue
                answer(sid)
            elif mtype == b"body" and sid in pending:
                pending[sid] -= len(data)
                if pending[sid] <= 0:
                    del pending[sid]
                    answer(sid)
            elif mtype == b"ping":
                sock.send_multipart([sid, b"pong", b""])
            elif mtype in (b"websocket", b"websocket/binary"):
                _send(sock, sid, MORE)
                _send(sock, mtype, MORE)
                _send(sock, data)


def _content_length(packet):
    pos = packet.find(b"\x0e\x00CONTENT_LENGTH")
    if pos < 0:
        return 0
    pos += 16
    (n,) = struct.unpack("<H", packet[pos:pos + 2])
    return int(packet[pos + 2:pos + 2 + n])


if __name__ == "__main__":
    main()
