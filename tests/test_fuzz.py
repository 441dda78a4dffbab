"""Seeded random mutations of valid input: parsers fail only with their own
errors (which carry the client's answer), never with anything else."""

import random

import pytest

from bb import http, uwsgi, ws
from test_http import VALID

SEEDS = range(4)


def mutate(rnd, data):
    data = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        op = rnd.randrange(4)
        pos = rnd.randrange(len(data) + 1)
        if op == 0 and data:
            data[min(pos, len(data) - 1)] = rnd.randrange(256)
        elif op == 1:
            data[pos:pos] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 8)))
        elif op == 2 and data:
            del data[pos:pos + rnd.randint(1, 8)]
        else:
            data[pos:pos] = rnd.choice([b"\r\n", b"\n", b":", b" ", b"\x00", b"0x",
                                        b"Content-Length: 5\r\n", b"chunked", b"\r\n\r\n"])
    return bytes(data)


def pieces(rnd, data):
    out, pos = [], 0
    while pos < len(data):
        n = rnd.randint(1, 40)
        out.append(data[pos:pos + n])
        pos += n
    return out


@pytest.mark.parametrize("seed", SEEDS)
def test_request_heads_bodies_and_env(seed):
    rnd = random.Random(seed)
    for _ in range(1500):
        raw = mutate(rnd, rnd.choice(VALID))
        reader = http.HeadReader()
        try:
            head = None
            for piece in pieces(rnd, raw):
                head = reader.feed(piece)
                if head is not None:
                    break
            if head is None:
                continue
            uwsgi.request_env(head, b"h", b"80", b"1.2.3.4", b"1", False)
            if head.chunked:
                body = http.ChunkedReader()
            else:
                body = http.LengthBodyReader(head.content_length or 0)
            body.feed(reader.rest)
        except http.HTTPError as e:
            assert 400 <= e.status < 600
        except uwsgi.PacketTooLarge:
            pass


@pytest.mark.parametrize("seed", SEEDS)
def test_node_response_heads(seed):
    rnd = random.Random(seed)
    base = [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            b"HTTP/1.0 404 Not Found\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"]
    for _ in range(1500):
        try:
            http.parse_response_head(mutate(rnd, rnd.choice(base)))
        except http.BadResponse:
            pass


def frames():
    mask = b"\x11\x22\x33\x44"
    return [b"".join(ws.encode_frame(op, payload, fin=fin, mask=mask))
            for op, payload, fin in ((ws.OP_TEXT, "κόσμε".encode(), True),
                                     (ws.OP_BINARY, b"\x00" * 300, False),
                                     (ws.OP_CONT, b"x" * 70000, True),
                                     (ws.OP_PING, b"p", True),
                                     (ws.OP_CLOSE, b"\x03\xe8ok", True))]


@pytest.mark.parametrize("seed", SEEDS)
def test_websocket_frames(seed):
    rnd = random.Random(seed)
    sources = frames()
    for _ in range(400):
        raw = b"".join(mutate(rnd, rnd.choice(sources)) for _ in range(rnd.randint(1, 3)))
        parser = ws.FrameParser(max_message=100000,
                                deflate=ws.Deflate() if rnd.random() < 0.5 else None)
        try:
            for piece in pieces(rnd, raw):
                parser.feed(piece)
        except ws.ProtocolError as e:
            assert e.code in (1002, 1007, 1009)
