"""A demo node: answers every request with a small page, echoes WebSockets.

Run it beside the server (``python3 -m bb.demo_node``) to see BlastBeat
answer; it is the node of the README's first command.  It does what
the seed's Ruby example does, in Python 3: decode the uwsgi env, answer
``ping``, send ``headers`` + ``body``, echo ``websocket`` messages.
"""

import argparse
import sys

import zmq

from .uwsgi import decode as uwsgi_to_dict


def main(argv=None):
    p = argparse.ArgumentParser(description="BlastBeat demo node")
    p.add_argument("--connect", default="tcp://127.0.0.1:5000",
                   help="the server's zmq endpoint (default: tcp://127.0.0.1:5000)")
    p.add_argument("--identity", default="demo", help="node name (default: demo)")
    p.add_argument("--body", default=None,
                   help="fixed response body (default: a short page naming the path)")
    args = p.parse_args(argv)

    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.IDENTITY, args.identity.encode())
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(args.connect)
    socket.send_multipart([b"", b"pong", b""])   # available at once
    fixed = args.body.encode() if args.body is not None else None
    print("demo node %r connected to %s" % (args.identity, args.connect), file=sys.stderr)
    recv, send = socket.recv_multipart, socket.send_multipart
    while True:
        sid, msg_type, msg_body = recv()
        if msg_type == b"ping":
            send([sid, b"pong", b""])
        elif msg_type == b"uwsgi":
            if fixed is not None:
                body = fixed
                protocol = b"HTTP/1.1"
            else:
                env = uwsgi_to_dict(msg_body)
                if env.get(b"HTTP_UPGRADE", b"").lower() == b"websocket":
                    continue
                protocol = env.get(b"SERVER_PROTOCOL", b"HTTP/1.1")
                body = b"Hello from BlastBeat node %s: %s %s\n" % (
                    args.identity.encode(), env.get(b"REQUEST_METHOD", b""),
                    env.get(b"PATH_INFO", b""))
            send([sid, b"headers", protocol + b" 200 OK\r\nContent-Type: text/plain\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body)])
            send([sid, b"body", body])
        elif msg_type in (b"websocket", b"websocket/binary"):
            send([sid, msg_type, msg_body])


if __name__ == "__main__":
    main()
