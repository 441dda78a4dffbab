"""Configuration (spec §2) and the command line (spec §1)."""

import os
import subprocess
import sys

import pytest

from bb import config as configmod
from certs import CA
from conftest import ROOT

ORIGINAL = """[blastbeat]
; set a priority of 17 for clustering
bind = 127.0.0.1:8080 17
bind = 127.0.0.1:8082
bind = 127.0.0.1:8083
bind = ::1:8085

timeout = 61

zmq = tcp://127.0.0.1:5000

ping-freq = 3
stats-freq = 10
uid = www-data
gid = 1000
max-hops = 17

sessions = 100

; 10 mbytes per-connection
writequeue-buffer = 10485760

[blastbeat:quantal64.local:8443]
bind-ssl = 127.0.0.1:8443
certificate = quantal.crt
key = quantal.key
node = FOOBAR1
node = FOOBAR2
node = FOOBAR3
node = FOOBAR4
node = FOOBAR5
cache = 2

[blastbeat:quantal64.local:8080]
node = FOOBAR1
sessions = 17
alias = 127.0.0.1:8080
alias = 127.0.0.1:8082
alias = 127.0.0.1:8083
; 1 MB cache
cache = 1
;timeout = 3

; 100 kbit/s
bandwidth = 100

[blastbeat:127.0.0.1:8081]
certificate = quantal.crt
key = quantal.key
node = FOOBAR6
bind-ssl = 127.0.0.1:8081
zmq = tcp://127.0.0.1:5001

[blastbeat:localhost]
node = FOOBAR7
alias = 127.0.0.1:8084
"""


def run_cli(*args, cwd=None, env=None):
    full_env = dict(os.environ, PYTHONPATH=ROOT)
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, "-m", "bb"] + list(args), cwd=cwd,
                          capture_output=True, text=True, env=full_env, timeout=30)


@pytest.fixture
def original(tmp_path):
    ca = CA()
    ca.write_leaf(tmp_path, "quantal", ["quantal64.local", "127.0.0.1"])
    path = tmp_path / "original.ini"
    path.write_text(ORIGINAL)
    return path


def test_original_sample_config_loads(original, monkeypatch):
    monkeypatch.chdir(original.parent)
    cfg = configmod.load(str(original))
    assert [str(b) for b in cfg.binds] == ["127.0.0.1:8080", "127.0.0.1:8082",
                                           "127.0.0.1:8083", "[::1]:8085"]
    assert cfg.timeout == 61 and cfg.max_hops == 17 and cfg.sessions == 100
    assert cfg.writequeue_buffer == 10485760 and cfg.uid == "www-data" and cfg.gid == "1000"
    names = [v.name for v in cfg.vhosts]
    assert names == ["quantal64.local:8443", "quantal64.local:8080", "127.0.0.1:8081",
                     "localhost"]
    q = cfg.vhosts[0]
    assert q.nodes == ["FOOBAR1", "FOOBAR2", "FOOBAR3", "FOOBAR4", "FOOBAR5"]
    assert [str(b) for b in q.ssl_binds] == ["127.0.0.1:8443"] and q.cache == 2
    v8080 = cfg.vhosts[1]
    assert v8080.aliases == ["127.0.0.1:8080", "127.0.0.1:8082", "127.0.0.1:8083"]
    assert v8080.sessions == 17 and v8080.bandwidth == 100 and v8080.timeout == 61
    assert cfg.vhosts[2].zmq == "tcp://127.0.0.1:5001"


def test_original_sample_config_passes_dash_t(original):
    result = run_cli("-t", str(original), cwd=str(original.parent))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "CONFIG: ok"


@pytest.mark.parametrize("text,line,fragment", [
    ("[blastbeat]\nbind = nowhere\nzmq = tcp://127.0.0.1:1\n", 2, "expected ADDR:PORT"),
    ("[blastbeat]\nbind = 1.2.3.4:99999\nzmq = tcp://127.0.0.1:1\n", 2, "port number"),
    ("[blastbeat]\nbind = :80\nzmq = foo\n", 3, "ZeroMQ endpoint"),
    ("[blastbeat]\nbind = :80\nzmq = tcp://a:1\nmax-hops = many\n", 4, "whole number"),
    ("[blastbeat]\nbind = :80\nzmq = tcp://a:1\nping-freq = -1\n", 4, "at least"),
    ("[blastbeat]\nbind = :80\nzmq = tcp://a:1\nthis is not ini\n", 4, "syntax error"),
    ("[blastbeat]\nbind = :80\nzmq = tcp://a:1\n[blastbeat:a]\nnode = x\n"
     "[blastbeat:b]\nnode = y\nalias = a\n", 6, "already used"),
    ("[blastbeat]\nbind = :80\nzmq = tcp://a:1\n[blastbeat:a]\nalias = b\n", 4, "no node"),
    ("[blastbeat]\nbind = :80\nzmq = tcp://a:1\n[blastbeat:a]\nnode = x\n[blastbeat:a]\n", 6,
     "twice"),
])
def test_errors_name_file_line_and_what_was_expected(tmp_path, text, line, fragment):
    path = tmp_path / "bad.ini"
    path.write_text(text)
    with pytest.raises(configmod.ConfigError) as e:
        configmod.load(str(path))
    assert str(e.value).startswith("%s:%d:" % (path, line)), str(e.value)
    assert fragment in str(e.value)


def test_unknown_options_and_sections_warn(tmp_path):
    path = tmp_path / "w.ini"
    path.write_text("[blastbeat]\nbind = :80\nzmq = tcp://a:1\nfrobnicate = 1\n"
                    "[other]\nx = 1\n[blastbeat:a]\nnode = n # comment\nnode = m ; comment\n")
    cfg = configmod.load(str(path))
    assert any(":4: [blastbeat] unknown option 'frobnicate'" in w for w in cfg.warnings)
    assert any("unknown section [other]" in w for w in cfg.warnings)
    assert cfg.vhosts[0].nodes == ["n", "m"]


def test_addresses():
    assert configmod.parse_address("[::1]:8080") == ("::1", 8080, None)
    assert configmod.parse_address("::1:8080") == ("::1", 8080, None)
    assert configmod.parse_address("[fe80::1%eth0]:80") == ("fe80::1", 80, "eth0")
    assert configmod.parse_address("fe80::1%lo:80") == ("fe80::1", 80, "lo")
    assert configmod.parse_address("*:80") == ("0.0.0.0", 80, None)
    with pytest.raises(ValueError):
        configmod.parse_address("1.2.3.4%eth0:80")


def test_tls_checks(tmp_path):
    ca = CA()
    good = ca.write_leaf(tmp_path, "good", ["a.test"])
    _, other_key = ca.write_leaf(tmp_path, "other", ["a.test"])
    expired = ca.write_leaf(tmp_path, "old", ["a.test"], days=-1, not_before_days=-10)
    soon = ca.write_leaf(tmp_path, "soon", ["a.test"], days=5)
    base = "[blastbeat]\nbind-ssl = 127.0.0.1:8443\nzmq = tcp://a:1\n[blastbeat:a.test]\nnode = n\n"
    cases = [
        ("certificate = %s\nkey = %s\n" % (good[0], other_key), "does not match"),
        ("certificate = %s\nkey = %s\n" % expired, "expired"),
        ("certificate = %s/missing.crt\nkey = %s\n" % (tmp_path, good[1]), "cannot read"),
        ("", "no certificate"),
    ]
    for extra, fragment in cases:
        path = tmp_path / "t.ini"
        path.write_text(base + extra)
        result = run_cli("-t", str(path))
        assert result.returncode == 1
        assert fragment in result.stderr and "a.test" in result.stderr, result.stderr
    path.write_text(base + "certificate = %s\nkey = %s\n" % soon)
    result = run_cli("-t", str(path))
    assert result.returncode == 0 and "expires on" in result.stderr
    path.write_text(base.replace("a.test]", "b.test]") + "certificate = %s\nkey = %s\n" % good)
    result = run_cli("-t", str(path))
    assert result.returncode == 0 and "not among the names" in result.stderr


def test_cli_exit_codes(tmp_path):
    assert run_cli().returncode == 2
    assert run_cli("--bogus", "x.ini").returncode == 2
    assert run_cli("--version").stdout.startswith("blastbeat ")
    bad = tmp_path / "bad.ini"
    bad.write_text("[blastbeat]\nbind = x\n")
    result = run_cli(str(bad))
    assert result.returncode == 78 and "bad.ini:2" in result.stderr
    result = run_cli("--ini", str(bad), env={"UWSGI_EMPEROR_FD": "99"})
    assert result.returncode == 26
    assert run_cli("-t", str(tmp_path / "missing.ini")).returncode == 1
    # address already in use: a run-time failure
    import socket
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    ok = tmp_path / "busy.ini"
    ok.write_text("[blastbeat]\nbind = 127.0.0.1:%d\nzmq = tcp://127.0.0.1:0\n"
                  "[blastbeat:a]\nnode = n\n" % busy.getsockname()[1])
    result = run_cli(str(ok))
    busy.close()
    assert result.returncode == 1 and "cannot listen" in result.stderr


def test_shipped_example_config_is_valid():
    result = run_cli("-t", os.path.join(ROOT, "conf", "blastbeat.ini"))
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(os.getuid() != 0, reason="checked only when run as root")
def test_unknown_user_is_a_config_error(tmp_path):
    path = tmp_path / "u.ini"
    path.write_text("[blastbeat]\nbind = :80\nzmq = tcp://a:1\nuid = no-such-user-here\n"
                    "[blastbeat:a]\nnode = n\n")
    result = run_cli("-t", str(path))
    assert result.returncode == 1 and "u.ini:4: [blastbeat] uid: no such user" in result.stderr
