"""The seed README's high-concurrency example, with threads instead of gevent.

A consumer receives BlastBeat messages; for each new sid it starts a worker
thread waiting on a queue for that session's messages.  Sockets are not
thread-safe, so workers hand their answers back to the consumer's thread
through an outgoing queue (the consumer polls both).
"""
import os
import queue
import struct
import threading

import zmq

context = zmq.Context()
# create the dealer socket
socket = context.socket(zmq.DEALER)
# authorize it setting the identity
socket.setsockopt(zmq.IDENTITY, os.environ.get("BB_NODE", "foobar1").encode())
# connect to blastbeat
socket.connect(os.environ.get("BB_ZMQ", "tcp://127.0.0.1:5000"))

# our sessions dictionary
sessions = {}
outgoing = queue.Queue()


def uwsgi_to_dict(msg):
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


def worker(sid, q):
    # wait for messages forwarded by the consumer
    while True:
        msg_type, msg_body = q.get()
        print("received a message of type", msg_type.decode(), flush=True)
        if msg_type == b"uwsgi":
            env = uwsgi_to_dict(msg_body)
            body = b"worker for " + env[b"PATH_INFO"]
            outgoing.put([sid, b"headers", b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n"
                          % len(body)])
            outgoing.put([sid, b"body", body])
        elif msg_type == b"end":
            return


def consumer():
    poller = zmq.Poller()
    poller.register(socket, zmq.POLLIN)
    while True:
        while not outgoing.empty():
            socket.send_multipart(outgoing.get())
        if not poller.poll(10):
            continue
        # receive a blastbeat message
        sid, msg_type, msg_body = socket.recv_multipart()
        if msg_type == b"ping":
            socket.send_multipart([sid, b"pong", b""])
            continue
        # if a session for that sid is not available create it
        if sid not in sessions:
            # create a queue
            q = queue.Queue()
            # spawn a thread for the new client
            t = threading.Thread(target=worker, args=(sid, q), daemon=True)
            sessions[sid] = {"queue": q, "thread": t}
            t.start()
        current_session = sessions[sid]
        current_session["queue"].put((msg_type, msg_body))
        if msg_type == b"end":
            del sessions[sid]


# start the consumer
consumer()
