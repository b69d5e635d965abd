"""What a hostile peer can make the balancer hold, and whose fault a slow exchange is.

Each test is an attack found by a review of issue 13's change, run against the daemon on
loopback: a client that never reads its response (its connection must go, whatever is
left to write), `Expect: 100-continue` and a slow upload (not the server's fault), a retry that
must send the whole body, endless trailers and chunk lines, and a flood of pipelined or
Upgrade requests in one read.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from balancer import http
from balancer.request import MAX_QUEUED, Request
from harness.poll import wait_until

from .backends import Backend, Running, free_port, running
from .rawpeers import RecordingBackend, Reply, listed, response, talk
from .test_balancer_fuzz import Peak

BIG = 24 << 20  # a response bigger than any socket buffer on the way


def big_or_default(req: object, conn: object) -> Reply | None:
    path = getattr(req, "target", b"")
    if path.startswith(b"/big"):
        return Reply(data=response(200, b"x" * BIG))
    return None


@pytest.fixture(scope="module")
def lb(tmp_path_factory: pytest.TempPathFactory
       ) -> Iterator[tuple[Running, RecordingBackend, int]]:
    backend = RecordingBackend("web", big_or_default).start()
    admin = free_port()
    try:
        with running(tmp_path_factory.mktemp("bounds"), listed(backend), admin_port=admin,
                     access_log=False, extra="[timeouts]\nclient = 1000\nserver = 1000\n"
                     '[health]\ncheck = "tcp"\n') as r:
            yield r, backend, admin
    finally:
        backend.stop()


def stats(admin: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats.json", timeout=5) as f:
        snap: dict[str, object] = json.load(f)
    return snap


def current(admin: int) -> object:
    fe = stats(admin)["frontend"]
    assert isinstance(fe, dict)
    return fe["current"]


def server(admin: int) -> dict[str, object]:
    servers = stats(admin)["servers"]
    assert isinstance(servers, list)
    s: dict[str, object] = servers[0]
    return s


def pid(lb: Running) -> int:
    assert lb.proc is not None
    return lb.proc.pid


def not_reading(port: int) -> socket.socket:
    """A client with a tiny receive window that will not read."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    return s


def test_a_client_that_never_reads_is_cut_after_its_timeout(
        lb: tuple[Running, RecordingBackend, int]) -> None:
    """Closing politely waits for the client to read what is left: a client that never
    does would hold its descriptor and its place under maxconn for good."""
    r, _, admin = lb
    wait_until(lambda: current(admin) == 0, 5, "no client connection")
    s = not_reading(r.port)
    try:
        s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_until(lambda: current(admin) == 1, 5, "the client connected")
        # client timeout 1 s: it is cut after that (and a sweep), not a response later
        wait_until(lambda: current(admin) == 0, 5, "the connection that never reads gone")
    finally:
        s.close()
    assert server(admin)["response_errors"] == 0


def test_expect_100_continue_and_a_slow_upload_do_not_blame_the_server(
        tmp_path: Path) -> None:
    """The server answers 100 Continue at once; the client sends its body a byte every
    0.4 s, past the server timeout (1 s). The server is waiting for the client: no 504,
    no error counted, never DOWN."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(10)
    port = int(listener.getsockname()[1])

    def serve() -> None:
        while True:
            try:
                c, _ = listener.accept()
            except OSError:
                return
            with c:
                c.settimeout(10)
                data = b""
                while b"\r\n\r\n" not in data:
                    data += c.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                if b"expect: 100-continue" not in head.lower():
                    continue  # (a health check)
                c.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                while len(body) < 4:
                    more = c.recv(65536)
                    if not more:
                        return
                    body += more
                c.sendall(response(200, b"got " + body))

    threading.Thread(target=serve, daemon=True).start()
    admin = free_port()
    fake = cast(Backend, SimpleNamespace(name="web", port=port))  # (name and port are used)
    try:
        with running(tmp_path, [fake], admin_port=admin, access_log=False,
                     extra="[timeouts]\nserver = 1000\nclient = 5000\n"
                     '[health]\ncheck = "tcp"\n[backend]\nerror_limit = 1\n') as r:
            with socket.create_connection(("127.0.0.1", r.port), timeout=10) as c:
                c.sendall(b"PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                          b"Expect: 100-continue\r\n\r\n")
                assert c.recv(100).startswith(b"HTTP/1.1 100 ")
                for byte in b"abcd":
                    time.sleep(0.4)  # the slow client is the test's premise
                    c.sendall(bytes([byte]))
                got = b""
                while b"got abcd" not in got:
                    more = c.recv(65536)
                    assert more, got
                    got += more
            s = server(admin)
            assert (s["state"], s["response_errors"], s["downs"]) == ("UP", 0, 0)
    finally:
        listener.close()


def test_a_retry_sends_the_whole_body() -> None:
    """The first attempt failed with 10 KB sent; 60 KB more arrive before the retry
    starts (past the 64 KiB kept for retries): the retry must send all 70 KB."""
    req = Request()
    req.head = http.request(b"PUT", b"/", "1.1", [(b"Host", b"x"),
                                                  (b"Content-Length", b"70000")])
    req.on_body(b"a" * 10_000)
    assert sum(map(len, req.take_body())) == 10_000  # the first attempt
    req.rewind()  # it failed before any response: a retry
    req.on_body(b"b" * 60_000)
    assert b"".join(req.take_body()) == b"a" * 10_000 + b"b" * 60_000


def test_a_trailer_that_never_ends_is_refused_at_once(
        lb: tuple[Running, RecordingBackend, int]) -> None:
    r, _, _ = lb
    with Peak(pid(r)) as peak:
        base = peak.max
        got = talk(r.port, [b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"1\r\na\r\n0\r\nX-Trailer: "] + [b"t" * 65536] * 512,
                   shut=False, timeout=5, responses=1)
    assert got.responses()[-1].status == 400  # (not 408: a client sending all the time)
    assert peak.max - base < 16 << 20


def test_chunk_extensions_that_never_end_are_refused(
        lb: tuple[Running, RecordingBackend, int]) -> None:
    r, _, _ = lb
    got = talk(r.port, [b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"1;ext="] + [b"e" * 65536] * 64, shut=False, timeout=5, responses=1)
    assert got.responses()[-1].status == 400


@pytest.mark.parametrize("upgrade", [False, True], ids=["plain", "upgrade"])
def test_one_read_of_many_pipelined_requests_is_capped(
        lb: tuple[Running, RecordingBackend, int], upgrade: bool) -> None:
    """Thousands of small requests in one write: at most MAX_QUEUED are taken, then a
    400 after their answers; the worker neither recurses nor keeps them all."""
    r, _, _ = lb
    one = (b"GET /u HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"
           if upgrade else b"GET /p HTTP/1.1\r\nHost: x\r\n\r\n")
    got = talk(r.port, one * 2000, timeout=10)
    rs = got.responses()
    assert [x.status for x in rs] == [200] * MAX_QUEUED + [400], [x.status for x in rs][-5:]
    assert got.closed


def test_an_upgrade_request_with_a_body_near_the_head_limit_is_served(
        lb: tuple[Running, RecordingBackend, int]) -> None:
    r, _, _ = lb
    head = (b"POST /near HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: h2c\r\n"
            b"Content-Length: 3\r\n")
    pad = 16384 - len(head) - 20
    got = talk(r.port, head + b"X-Pad: " + b"p" * pad + b"\r\n\r\nabc", timeout=5)
    rs = got.responses()
    assert [x.status for x in rs] == [200], got.data[:200]
    assert rs[0].body.endswith(b" 3\n")  # the backend saw the 3 bytes of body
    assert r.alive()
    assert "Traceback" not in r.log.read_text()
