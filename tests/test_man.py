"""The man pages: lint-clean, complete, and their example node works."""

import os
import re
import shutil
import subprocess
import sys

import pytest

from bb import config as configmod
from bb.router import NODE_TYPES
from conftest import ROOT, http_request

MAN = os.path.join(ROOT, "man")
PAGES = ["blastbeat.8", "blastbeat.ini.5", "blastbeat-protocol.7"]


def text(page):
    with open(os.path.join(MAN, page)) as f:
        return f.read()


def plain(page):
    """The page's words with roff escapes undone (\\- becomes -)."""
    return text(page).replace("\\-", "-").replace("\\(dq", '"').replace("\\e", "\\")


@pytest.mark.parametrize("page", PAGES)
def test_groff_reports_nothing(page):
    if not shutil.which("groff"):
        pytest.skip("groff not installed")
    result = subprocess.run(["groff", "-man", "-ww", "-z", os.path.join(MAN, page)],
                            capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == "" and result.stdout == ""


@pytest.mark.parametrize("page", PAGES)
def test_mandoc_lint_reports_nothing(page):
    if not shutil.which("mandoc"):
        pytest.skip("mandoc not installed")
    result = subprocess.run(["mandoc", "-Tlint", os.path.join(MAN, page)],
                            capture_output=True, text=True)
    assert result.stdout == "" and result.stderr == ""


def test_every_option_is_documented_in_page_5_and_the_example_config():
    page = plain("blastbeat.ini.5")
    with open(os.path.join(ROOT, "conf", "blastbeat.ini")) as f:
        example = f.read()
    for option in list(configmod.GLOBAL_OPTIONS) + list(configmod.VHOST_OPTIONS):
        assert re.search(r"\.BI %s " % re.escape(option), page), option
        assert re.search(r"^;?%s = " % re.escape(option), example, re.M), option


def test_command_line_signals_and_exit_codes_in_page_8():
    page = plain("blastbeat.8")
    for word in ("-t", "--check", "--ini", "--log-level", "--version", "--help",
                 "SIGHUP", "SIGTERM", "SIGINT", "SIGQUIT", "SIGUSR1",
                 "UWSGI_EMPEROR_FD", "EXIT STATUS", "SCALING OUT", "/etc/blastbeat.ini"):
        assert word in page, word
    for code in ("0", "1", "2", "78", "26"):
        assert re.search(r"^\.B %s$" % code, page, re.M), code


def test_every_message_type_in_page_7():
    page = plain("blastbeat-protocol.7")
    for mtype in list(NODE_TYPES) + [b"uwsgi", b"ping", b"pong"]:
        assert re.search(r"^\.B %s$" % re.escape(mtype.decode()), page, re.M), mtype


def test_the_protocol_page_example_node_works(make_server, tmp_path):
    page = plain("blastbeat-protocol.7")
    example = page.split(".SH EXAMPLE", 1)[1].split(".nf\n", 1)[1].split("\n.fi", 1)[0]
    server = make_server("[blastbeat:localhost]\nnode = foobar1\n").start()
    script = tmp_path / "node.py"
    script.write_text(example.replace("tcp://127.0.0.1:5000", server.zmq))
    proc = subprocess.Popen([sys.executable, str(script)])
    try:
        server.wait_log("node foobar1 is available")
        reply = http_request(server.port, b"GET /man HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert reply.endswith(b"Hello from /man")
    finally:
        proc.kill()
        proc.wait()
