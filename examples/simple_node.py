"""The seed README's simple backend, in Python 3: print what arrives.

It never answers, so requests wait; it is the first step of every node.
BB_ZMQ and BB_NODE choose the endpoint and the identity.
"""
import os

import zmq

context = zmq.Context()
# create the dealer socket
socket = context.socket(zmq.DEALER)
# authorize it setting the identity
socket.setsockopt(zmq.IDENTITY, os.environ.get("BB_NODE", "foobar1").encode())
# connect to blastbeat
socket.connect(os.environ.get("BB_ZMQ", "tcp://127.0.0.1:5000"))

# start receiving messages
while True:
    sid, msg_type, msg_body = socket.recv_multipart()
    print("received a message of type %s" % msg_type.decode(), flush=True)
