"""HTTPS and wss:// end to end, with certificates made by the test."""

import asyncio
import hashlib
import os
import signal
import socket
import ssl
import time

import pytest
import websockets

from certs import CA
from conftest import (UploadDigest, hello_handler, read_response, start_node, uwsgi_to_dict,
                      wait_available)


@pytest.fixture
def pki(tmp_path):
    ca = CA()
    ca_path = ca.write(tmp_path / "ca.pem")
    a = ca.write_leaf(tmp_path, "a", ["a.test"])
    b = ca.write_leaf(tmp_path, "b", ["b.test"])
    return ca_path, a, b, ca


def client_context(ca_path):
    ctx = ssl.create_default_context(cafile=ca_path)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def tls_connect(port, ctx, server_name):
    raw = socket.create_connection(("127.0.0.1", port), timeout=15)
    return ctx.wrap_socket(raw, server_hostname=server_name)


def big_handler():
    uploads = UploadDigest()

    def handler(node, sid, mtype, body):
        if mtype == b"uwsgi":
            env = uwsgi_to_dict(body)
            if env[b"REQUEST_METHOD"] == b"GET":
                path = env[b"PATH_INFO"]
                if path == b"/big":
                    data = bytes(range(256)) * (65536 * 4)    # 16 MiB
                else:
                    data = b"%s %s %s" % (env.get(b"HTTPS", b"-"), env[b"SERVER_NAME"],
                                          env[b"SERVER_PORT"])
                node.send(sid, b"headers", b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n"
                          % len(data))
                for i in range(0, len(data), 1 << 16):
                    node.send(sid, b"body", data[i:i + (1 << 16)])
            else:
                uploads(node, sid, mtype, body)
        elif mtype == b"body":
            uploads(node, sid, mtype, body)
        elif mtype in (b"websocket", b"websocket/binary"):
            node.send(sid, mtype, body)
    return handler


@pytest.fixture
def tls_server(make_server, nodes, pki):
    ca_path, a, b, ca = pki
    tls_port = __import__("conftest").free_port()
    body = ("[blastbeat:a.test]\nnode = na\ncertificate = %s\nkey = %s\n"
            "[blastbeat:b.test]\nnode = nb\ncertificate = %s\nkey = %s\n"
            "[blastbeat:plain]\nnode = na\nbind = 127.0.0.1:{port}\n" % (a + b))
    # The node pushes 16 MiB at once: the queue for one client must hold it.
    global_extra = "bind-ssl = 127.0.0.1:%d\nwritequeue-buffer = 67108864\n" % tls_port
    server = make_server(body, global_extra=global_extra)
    server.tls_port = tls_port
    server.ca, server.a_files, server.body, server.global_extra = ca, a, body, global_extra
    server.start()
    server.wait_listening(tls_port)
    na = start_node(server, "na", big_handler())
    nb = start_node(server, "nb", hello_handler(b"from b"))
    nodes.extend([na, nb])
    wait_available(server, "na")
    wait_available(server, "nb")
    return server, ca_path, na, nb


def test_https_keep_alive_and_env(tls_server):
    server, ca_path, na, nb = tls_server
    ctx = client_context(ca_path)
    with tls_connect(server.tls_port, ctx, "a.test") as s:
        assert s.selected_alpn_protocol() == "http/1.1"
        assert s.version() in ("TLSv1.2", "TLSv1.3")
        buf = b""
        for _ in range(3):
            s.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
            status, _, body, buf = read_response(s, buf)
            assert body == b"on a.test %d" % server.tls_port
    assert len({sid for sid, t, _ in na.messages if t == b"uwsgi"}) == 1


def test_sni_picks_certificate_and_vhost(tls_server):
    server, ca_path, na, nb = tls_server
    ctx = client_context(ca_path)
    for name, expected in (("a.test", b"on a.test"), ("b.test", b"from b")):
        with tls_connect(server.tls_port, ctx, name) as s:
            cn = dict(x[0] for x in s.getpeercert()["subject"])["commonName"]
            assert cn == name
            s.sendall(b"GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % name.encode())
            body = read_response(s)[2]
            assert body.startswith(expected)
    # no SNI: the first vhost's certificate
    noverify = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    noverify.check_hostname = False
    noverify.verify_mode = ssl.CERT_NONE
    with noverify.wrap_socket(socket.create_connection(("127.0.0.1", server.tls_port))) as s:
        der = s.getpeercert(binary_form=True)
        from cryptography import x509
        cert = x509.load_der_x509_certificate(der)
        assert "a.test" in cert.subject.rfc4514_string()
        # unknown Host over TLS gets 404 like plain HTTP
        s.sendall(b"GET / HTTP/1.1\r\nHost: unknown.test\r\n\r\n")
        assert read_response(s)[0] == 404


def test_tls12_minimum(tls_server):
    server, ca_path, _, _ = tls_server
    ctx = client_context(ca_path)
    with pytest.warns(DeprecationWarning):
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, OSError)):
        tls_connect(server.tls_port, ctx, "a.test").close()


def test_http10_large_response_and_upload_over_tls(tls_server):
    server, ca_path, na, nb = tls_server
    ctx = client_context(ca_path)
    with tls_connect(server.tls_port, ctx, "a.test") as s:
        s.sendall(b"GET / HTTP/1.0\r\nHost: a.test\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"a.test %d" % server.tls_port)
    with tls_connect(server.tls_port, ctx, "a.test") as s:
        s.sendall(b"GET /big HTTP/1.1\r\nHost: a.test\r\n\r\n")
        body = read_response(s)[2]
        assert hashlib.sha256(body).digest() == \
            hashlib.sha256(bytes(range(256)) * (65536 * 4)).digest()
        payload = os.urandom(16 << 20)
        s.sendall(b"PUT /up HTTP/1.1\r\nHost: a.test\r\nContent-Length: %d\r\n\r\n"
                  % len(payload))
        s.sendall(payload)
        assert read_response(s)[2] == hashlib.sha256(payload).hexdigest().encode()


def test_wss_echo(tls_server):
    server, ca_path, na, nb = tls_server

    async def talk():
        async with websockets.connect("wss://a.test:%d/ws" % server.tls_port,
                                      ssl=client_context(ca_path), max_size=None,
                                      host="127.0.0.1", port=server.tls_port,
                                      server_hostname="a.test") as c:
            for m in ("hello", b"\x01" * 100000, "x" * (1 << 20)):
                await c.send(m)
                assert await c.recv() == m

    asyncio.run(asyncio.wait_for(talk(), 30))


def plain_latency(port):
    start = time.time()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: plain\r\n\r\n")
        status, _, body, _ = read_response(s)
    assert status == 200
    return time.time() - start


def test_hostile_tls_clients_do_not_stall_plain_http(tls_server):
    server, ca_path, na, nb = tls_server
    port = server.tls_port
    hostile = []
    # plain HTTP to the TLS port, random bytes
    for junk in (b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n", os.urandom(2000)):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(junk)
        hostile.append(s)
    # a ClientHello and then silence
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_context(ca_path).wrap_bio(incoming, outgoing, server_hostname="a.test")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(hello)
    hostile.append(s)
    # 500 parallel stalled handshakes
    for _ in range(500):
        hostile.append(socket.create_connection(("127.0.0.1", port), timeout=5))
    worst = max(plain_latency(server.port) for _ in range(20))
    assert worst < 0.5, worst
    # a good TLS client still gets through once threads free up (10 s limit)
    ctx = client_context(ca_path)
    for s in hostile[:3]:
        s.settimeout(12)
        try:
            s.recv(100)
        except OSError:
            pass
    for s in hostile:
        s.close()
    with tls_connect(port, ctx, "a.test") as c:
        c.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        assert read_response(c)[0] == 200
    server.wait_log("TLS handshake with")


def test_reload_switches_certificates(tls_server):
    server, ca_path, na, nb = tls_server
    ctx = client_context(ca_path)

    def serial():
        with tls_connect(server.tls_port, ctx, "a.test") as s:
            return s.getpeercert()["serialNumber"]

    before = serial()
    # a new certificate for a.test from the same CA, in new files
    crt, key = server.ca.write_leaf(server.tmp_path, "a2", ["a.test"])
    server.rewrite(server.body.replace(server.a_files[0], crt).replace(server.a_files[1], key),
                   global_extra=server.global_extra)
    server.signal(signal.SIGHUP)
    server.wait_log("configuration reloaded")
    assert serial() != before
