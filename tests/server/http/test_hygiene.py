"""Operational hygiene against a real `pomstream serve` process: secrets never reach the
log, a client that hangs up mid-body is one info line (not a traceback), HEAD works where
GET does."""

from __future__ import annotations

import json
import logging
import socket
import time

import httpx
import pytest
from websockets.sync.client import connect

from pomstream.server.logs import JsonFormatter, redact
from tests.server.http.test_live import Live
from tests.support.redis import free_port
from tests.support.servers import ServerProcess, wait_for

SECRET = "s3cret-key-for-the-log-test"


@pytest.fixture(scope="module")
def server(tiny_model_file, tmp_path_factory):
    proc = ServerProcess("serve", tmp_path_factory.mktemp("hygiene"), tiny_model_file,
                         port=free_port(), env={"POMSTREAM_API_KEYS": SECRET})
    proc.start().wait_ready()
    yield proc
    assert proc.stop() == 0, proc.log()


def test_api_keys_in_urls_never_reach_the_log(server):
    url = server.url.replace("http", "ws") + f"/v1/sessions?api_key={SECRET}&x=1"
    with connect(url, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "start", "prompt": "digit 1"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "session"
    server.wait_log("api_key=[redacted]&x=1")  # uvicorn's "WebSocket ... [accepted]" line
    assert SECRET not in server.log()


def test_the_formatter_redacts_any_record():
    record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1,
                               '%s - "WebSocket %s" [accepted]',
                               ("127.0.0.1:5", "/v1/sessions?api_key=abc&b=2"), None)
    assert "abc" not in JsonFormatter().format(record)
    assert redact("GET /x?API_KEY=zz") == "GET /x?API_KEY=[redacted]"
    assert redact("GET /x?api%5Fkey=zz&y") == "GET /x?api%5Fkey=[redacted]&y"


def test_a_client_hanging_up_mid_body_is_one_info_line(server):
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"POST /v1/videos HTTP/1.1\r\nHost: x\r\n"
                         b"Authorization: Bearer " + SECRET.encode() + b"\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                         b'{"prompt": ')
    wait_for(lambda: server.log().count("api.client_disconnected") >= 3, 20,
             what="three disconnect lines")
    assert "Traceback" not in server.log()
    lines = [json.loads(line) for line in server.log().splitlines() if "client_disc" in line]
    assert all(line["level"] == "info" for line in lines)


def test_head_works_where_get_does(server):
    auth = {"Authorization": f"Bearer {SECRET}"}
    video = httpx.post(f"{server.url}/v1/videos", json={"prompt": "digit 2"},
                       headers=auth).json()
    for path in ("/healthz", "/v1/videos", f"/v1/videos/{video['id']}", "/v1/models"):
        get, head = (httpx.request(m, server.url + path, headers=auth) for m in ("GET", "HEAD"))
        assert head.status_code == get.status_code == 200, path
        assert head.content == b"" and head.headers["content-type"] == get.headers[
            "content-type"]
    missing = httpx.head(f"{server.url}/v1/videos/video_nope", headers=auth)
    assert missing.status_code == 404 and missing.content == b""


@pytest.fixture(scope="module")
def tight(tiny_model_file, tmp_path_factory):
    """A server with small connection limits (settings, as an operator sets them)."""
    proc = ServerProcess("serve", tmp_path_factory.mktemp("tight"), tiny_model_file,
                         port=free_port(), env={"POMSTREAM_MAX_CONNECTIONS": "4",
                                                "POMSTREAM_BODY_TIMEOUT_S": "1",
                                                "POMSTREAM_KEEP_ALIVE_S": "1",
                                                "POMSTREAM_HEADER_TIMEOUT_S": "2"})
    proc.start().wait_ready()
    yield proc
    assert proc.stop() == 0, proc.log()


def test_a_body_that_never_arrives_is_a_408(tight):
    with socket.create_connection(("127.0.0.1", tight.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/videos HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                     b"\r\nContent-Length: 100\r\n\r\n{")
        reply = b""
        while b"request_timeout" not in reply and (chunk := sock.recv(4096)):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 408") and b"request_timeout" in reply


def test_connections_beyond_the_cap_get_503_and_idle_ones_close(tight):
    idle = [socket.create_connection(("127.0.0.1", tight.port), timeout=10) for _ in range(6)]
    try:
        wait_for(lambda: httpx.get(f"{tight.url}/healthz").status_code == 503, 10,
                 what="the connection cap")
    finally:
        for sock in idle:
            sock.close()
    wait_for(lambda: httpx.get(f"{tight.url}/healthz").status_code == 200, 10,
             what="the cap to free up")
    with socket.create_connection(("127.0.0.1", tight.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = b""
        while b'"ok"' not in reply and (chunk := sock.recv(4096)):
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 200")
        sock.settimeout(5)
        assert sock.recv(4096) == b""  # the idle keep-alive connection is closed after 1 s


def read_all(sock: socket.socket) -> bytes:
    reply = b""
    while chunk := sock.recv(4096):
        reply += chunk
    return reply


def test_a_request_head_that_never_completes_is_closed(tight):
    """Slowloris: a head sent a byte at a time (each byte would reset a keep-alive timer)
    is cut after POMSTREAM_HEADER_TIMEOUT_S, first request or next one alike."""
    with socket.create_connection(("127.0.0.1", tight.port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        try:
            for _ in range(20):  # a header line trickling in, never finished
                sock.sendall(b"X")
                time.sleep(0.25)
        except OSError:  # closed under us: what should happen
            pass
        assert read_all(sock) == b"" and time.monotonic() - started < 6
    with socket.create_connection(("127.0.0.1", tight.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # a whole one: served
        reply = b""
        while b'"ok"' not in reply:
            reply += sock.recv(4096)
        assert reply.startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # then the next head trickles
        for _ in range(3):
            time.sleep(0.3)
            sock.sendall(b"X")
        assert read_all(sock) == b""
    with socket.create_connection(("127.0.0.1", tight.port), timeout=10) as sock:
        # answered before its body was read (413), then the body dribbles: cut all the same
        sock.sendall(b"POST /v1/videos HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                     b"\r\nContent-Length: 999999999\r\n\r\n{")
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += sock.recv(4096)
        assert reply.startswith(b"HTTP/1.1 413")
        started = time.monotonic()
        try:
            for _ in range(20):
                sock.sendall(b"x")
                time.sleep(0.25)
        except OSError:
            pass
        read_all(sock)  # closed (a rest of the 413's body may come first)
        assert time.monotonic() - started < 6
    assert "api.header_timeout" in tight.log()


def test_a_websocket_outlives_the_header_timeout(tight):
    """Once upgraded, a connection is a WebSocket: the header timeout (2 s here) is not
    its business (a live session runs for as long as its viewer likes)."""
    live = Live(tight)
    live.send(type="start", prompt="digit 3", seed=3)
    live.until("session")
    started = time.monotonic()
    while time.monotonic() - started < 5:
        live.collect(1)
    live.send(type="stop")
    live.until("end")
    live.close()
