#!/usr/bin/env python3
"""BlastBeat benchmark: wrk against the real server and a hello-world node.

    python3 bench/run.py [--duration 10] [--only http,ws,tls,memory]

Measures requests/s and p50/p99 latency (50 and 500 keep-alive
connections, a new connection per request, 64 KiB responses, 1 MiB
uploads), the server's CPU time per request, memory per idle keep-alive
connection and per idle WebSocket, WebSocket echo messages/s (50 clients,
one small message in flight each) and 1 MiB echo throughput, TLS
handshakes/s and keep-alive requests/s over TLS against plain HTTP.
Needs wrk (Debian package "wrk").  Only loopback is used; every run is
bounded in time.
"""

import argparse
import os
import re
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from bb import ws  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Setup:
    """Server + nodes on a temporary config."""

    def __init__(self, node_args=(), extra="", tls=False):
        self.dir = tempfile.mkdtemp(prefix="bb-bench-")
        os.chmod(self.dir, 0o755)
        self.port = free_port()
        self.zmq = "tcp://127.0.0.1:%d" % free_port()
        self.tls_port = free_port() if tls else None
        cert = ""
        if tls:
            from certs import CA
            from pathlib import Path
            ca = CA()
            crt, key = ca.write_leaf(Path(self.dir), "bench", ["localhost", "127.0.0.1"])
            os.chmod(key, 0o644)
            cert = "bind-ssl = 127.0.0.1:%d\ncertificate = %s\nkey = %s\n" % (
                self.tls_port, crt, key)
        conf = os.path.join(self.dir, "bench.ini")
        with open(conf, "w") as f:
            f.write("[blastbeat]\nbind = 127.0.0.1:%d\nzmq = %s\nstats-freq = 0\n"
                    "uid = %s\ngid = %s\nwritequeue-buffer = 67108864\n%s%s\n"
                    "[blastbeat:localhost]\nnode = hello\nalias = 127.0.0.1:%d\n%s" % (
                        self.port, self.zmq, "root" if os.getuid() == 0 else os.getlogin(),
                        "root" if os.getuid() == 0 else "nogroup", cert, extra, self.port,
                        "alias = 127.0.0.1:%d\n" % self.tls_port if tls else ""))
        env = dict(os.environ, PYTHONPATH=ROOT)
        self.log = open(os.path.join(self.dir, "server.log"), "wb")
        self.server = subprocess.Popen([sys.executable, "-m", "bb", conf], env=env,
                                       stdout=self.log, stderr=self.log)
        self.node = subprocess.Popen([sys.executable, os.path.join(HERE, "hello_node.py"),
                                      "--connect", self.zmq] + list(node_args), env=env)
        deadline = time.time() + 10
        while time.time() < deadline:
            with open(os.path.join(self.dir, "server.log")) as f:
                log = f.read()
            if "node hello is available" in log:
                break
            if self.server.poll() is not None:
                self.node.kill()
                raise SystemExit("server exited:\n" + log)
            time.sleep(0.1)
        else:
            self.close()
            raise SystemExit("server or node did not come up")

    def close(self):
        for proc in (self.node, self.server):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def wrk(url, connections, duration, script=None, headers=()):
    cmd = ["wrk", "-t1", "-c%d" % connections, "-d%ds" % duration, "--latency",
           "--timeout", "10s"]
    for h in headers:
        cmd += ["-H", h]
    if script:
        cmd += ["-s", script]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=duration + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    lat = {}
    for pct in ("50", "99"):
        m = re.search(r"\s%s%%\s+([\d.]+)(us|ms|s)\b" % pct, out)
        value, unit = float(m.group(1)), m.group(2)
        lat[pct] = value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "total": total, "p50": lat["50"], "p99": lat["99"],
            "non2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": socket_errors.group(1) if socket_errors else ""}


def http_scenario(name, setup, url, connections, duration, **kw):
    before = cpu_seconds(setup.server.pid)
    result = wrk(url, connections, duration, **kw)
    used = cpu_seconds(setup.server.pid) - before
    result["cpu_us"] = used / max(result["total"], 1) * 1e6
    print("%-34s %9.0f req/s  p50 %6.2f ms  p99 %7.2f ms  server CPU %5.1f us/req%s" % (
        name, result["rps"], result["p50"], result["p99"], result["cpu_us"],
        "  (non-2xx %d, %s)" % (result["non2xx"], result["socket_errors"])
        if result["non2xx"] or result["socket_errors"] else ""), flush=True)
    return result


def bench_http(duration):
    print("== HTTP (wrk -t1, hello-world node answering headers + body)")
    setup = Setup()
    try:
        url = "http://127.0.0.1:%d/" % setup.port
        http_scenario("keep-alive, 50 connections", setup, url, 50, duration)
        http_scenario("keep-alive, 500 connections", setup, url, 500, duration)
        http_scenario("new connection per request, 50", setup, url, 50, duration,
                      headers=["Connection: close"])
    finally:
        setup.close()
    setup = Setup(["--size", "65536"])
    try:
        r = http_scenario("64 KiB responses, 50 connections", setup,
                          "http://127.0.0.1:%d/" % setup.port, 50, duration)
        print("%-34s %9.1f MiB/s" % ("", r["rps"] * 65536 / 2**20))
    finally:
        setup.close()
    setup = Setup(["--upload"])
    script = os.path.join(setup.dir, "upload.lua")
    with open(script, "w") as f:
        f.write('wrk.method = "POST"\nwrk.body = string.rep("x", 1048576)\n'
                'wrk.headers["Content-Type"] = "application/octet-stream"\n')
    try:
        http_scenario("1 MiB uploads, 16 connections", setup,
                      "http://127.0.0.1:%d/" % setup.port, 16, duration, script=script)
    finally:
        setup.close()


def bench_memory():
    print("== memory per idle connection")
    setup = Setup()
    try:
        for kind in ("keep-alive", "websocket"):
            base = rss_kib(setup.server.pid)
            socks = []
            count = 5000
            for i in range(count):
                s = socket.create_connection(("127.0.0.1", setup.port))
                if kind == "keep-alive":
                    s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                else:
                    s.sendall(b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                              b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
                socks.append(s)
                if len(socks) % 500 == 0:
                    for t in socks[-500:]:
                        t.recv(4096)
            time.sleep(1)
            used = rss_kib(setup.server.pid) - base
            print("%-34s %9.2f KiB per connection (%d open, RSS +%d KiB)" % (
                "idle " + kind, used / count, count, used), flush=True)
            for s in socks:
                s.close()
            time.sleep(1)
    finally:
        setup.close()


def ws_echo(port, clients, size, duration):
    """Echo with ``clients`` raw WebSocket clients, one message in flight each."""
    sel = selectors.DefaultSelector()
    payload = os.urandom(size // 2).hex().encode()[:size]
    frame = b"".join(ws.encode_frame(ws.OP_BINARY, payload, mask=b"\x01\x02\x03\x04"))
    conns = []
    for _ in range(clients):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = s.recv(4096)
            if not data:
                raise SystemExit("WebSocket handshake refused")
            buf += data
        s.setblocking(False)
        conns.append(s)
        sel.register(s, selectors.EVENT_READ, [ws.FrameParser(require_mask=False,
                                                              max_message=1 << 30)])
    for s in conns:
        s.sendall(frame)
    done = 0
    end = time.time() + duration
    while time.time() < end:
        for key, _ in sel.select(1):
            s = key.fileobj
            try:
                data = s.recv(1 << 20)
            except BlockingIOError:
                continue
            for event in key.data[0].feed(data):
                done += 1
                s.setblocking(True)
                s.sendall(frame)
                s.setblocking(False)
    for s in conns:
        s.close()
    return done / duration


def bench_ws(duration):
    print("== WebSocket echo (raw client, one message in flight per client)")
    setup = Setup()
    try:
        for clients, size, label in ((50, 16, "50 clients, 16-byte messages"),
                                     (4, 1 << 20, "4 clients, 1 MiB messages")):
            s0, n0 = cpu_seconds(setup.server.pid), cpu_seconds(setup.node.pid)
            rate = ws_echo(setup.port, clients, size, duration)
            s1, n1 = cpu_seconds(setup.server.pid), cpu_seconds(setup.node.pid)
            extra = ""
            if size > 1000:
                extra = "  %.1f MiB/s" % (rate * size / 2**20)
            print("%-34s %9.0f msg/s%s  CPU: server %.0f%%, node %.0f%%" % (
                label, rate, extra, (s1 - s0) / duration * 100, (n1 - n0) / duration * 100),
                flush=True)
    finally:
        setup.close()


def bench_tls(duration):
    print("== TLS (ECDSA P-256 certificate) against plain HTTP in the same run")
    setup = Setup(tls=True)
    try:
        plain = http_scenario("plain keep-alive, 50 connections", setup,
                              "http://127.0.0.1:%d/" % setup.port, 50, duration)
        tls = http_scenario("TLS keep-alive, 50 connections", setup,
                            "https://127.0.0.1:%d/" % setup.tls_port, 50, duration)
        print("%-34s %9.0f%% of plain" % ("", tls["rps"] / plain["rps"] * 100))
        http_scenario("TLS handshake per request, 50", setup,
                      "https://127.0.0.1:%d/" % setup.tls_port, 50, duration,
                      headers=["Connection: close"])
        for resume in (False, True):
            before = cpu_seconds(setup.server.pid)
            rate = tls_handshakes(setup, duration, resume)
            used = cpu_seconds(setup.server.pid) - before
            print("%-34s %9.0f handshakes/s (one Python client, sequential), "
                  "server CPU %.0f us each" % (
                      "resumed sessions" if resume else "full handshakes", rate,
                      used / (rate * duration) * 1e6), flush=True)
    finally:
        setup.close()


def tls_handshakes(setup, duration, resume):
    """Sequential connect + request + close, with or without session reuse."""
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    session = None
    done = reused = 0
    end = time.time() + duration
    while time.time() < end:
        raw = socket.create_connection(("127.0.0.1", setup.tls_port))
        s = ctx.wrap_socket(raw, server_hostname="localhost",
                            session=session if resume else None)
        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        while s.recv(65536):
            pass
        reused += s.session_reused
        if resume:
            session = s.session
        s.close()
        done += 1
    if resume and reused < done // 2:
        print("  (only %d of %d sessions were resumed)" % (reused, done))
    return done / duration


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--only", default="http,ws,tls,memory")
    args = p.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")
    print("python %s, %d cores" % (sys.version.split()[0], os.cpu_count()), flush=True)
    only = args.only.split(",")
    if "http" in only:
        bench_http(args.duration)
    if "ws" in only:
        bench_ws(args.duration)
    if "tls" in only:
        bench_tls(args.duration)
    if "memory" in only:
        bench_memory()


if __name__ == "__main__":
    main()
