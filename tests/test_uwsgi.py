"""The uwsgi env of spec §4.1-4.2, checked with the seed's own decoder."""

import pytest

from bb import http, uwsgi
from conftest import uwsgi_to_dict


def env_of(raw, server_name=b"example.com", server_port=b"80", https=False):
    reader = http.HeadReader()
    req = reader.feed(raw)
    packet = uwsgi.request_env(req, server_name, server_port, b"10.0.0.1", b"54321", https)
    return packet, uwsgi_to_dict(packet)


def test_header_and_size_include_the_four_bytes():
    packet, env = env_of(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert packet[0] == 0 and packet[3] == 0
    assert int.from_bytes(packet[1:3], "little") == len(packet)
    # The seed's decoder reads every key (it stops at the size field).
    assert env == uwsgi.decode(packet)


def test_spec_keys():
    _, env = env_of(b"POST /a%20b/%C3%A9?x=1&y=%20 HTTP/1.1\r\nHost: Example.com\r\n"
                    b"Content-Type: text/plain\r\nContent-Length: 3\r\nX-Forwarded-For: 1\r\n"
                    b"Accept: a\r\naccept: b\r\n\r\n", https=True, server_port=b"443")
    assert env[b"REQUEST_METHOD"] == b"POST"
    assert env[b"REQUEST_URI"] == b"/a%20b/%C3%A9?x=1&y=%20"
    assert env[b"SCRIPT_NAME"] == b""
    assert env[b"PATH_INFO"] == b"/a b/\xc3\xa9"
    assert env[b"QUERY_STRING"] == b"x=1&y=%20"
    assert env[b"SERVER_NAME"] == b"example.com"
    assert env[b"SERVER_PORT"] == b"443"
    assert env[b"SERVER_PROTOCOL"] == b"HTTP/1.1"
    assert env[b"REMOTE_ADDR"] == b"10.0.0.1"
    assert env[b"REMOTE_PORT"] == b"54321"
    assert env[b"CONTENT_TYPE"] == b"text/plain"
    assert env[b"CONTENT_LENGTH"] == b"3"
    assert env[b"HTTPS"] == b"on"
    assert env[b"HTTP_HOST"] == b"Example.com"
    assert env[b"HTTP_X_FORWARDED_FOR"] == b"1"
    assert env[b"HTTP_ACCEPT"] == b"a, b"


def test_chunked_request_has_no_content_length():
    _, env = env_of(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert b"CONTENT_LENGTH" not in env
    assert env[b"HTTP_TRANSFER_ENCODING"] == b"chunked"
    assert b"HTTPS" not in env


def test_packet_over_64k_refused():
    # A 60 KB head (under the 64 KiB head limit) whose env grows past 64 KiB.
    big = b"".join(b"X%04d: v\r\n" % i for i in range(6000))
    reader = http.HeadReader(max_headers=10000)
    req = reader.feed(b"GET / HTTP/1.1\r\nHost: a\r\n" + big + b"\r\n")
    with pytest.raises(uwsgi.PacketTooLarge):
        uwsgi.request_env(req, b"a", b"80", b"1", b"2", False)


def test_encode_dict_roundtrip():
    env = {b"A": b"1", b"B" * 300: b"x" * 1000, b"C": b""}
    assert uwsgi.decode(uwsgi.encode_dict(env)) == env
