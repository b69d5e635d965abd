"""Bounded fuzzing of the balancer in both directions, and its memory under body floods.

Issue 13's proof: mutated requests (client -> balancer) and mutated responses (server ->
balancer), a fixed number of each from a fixed seed, so a failure replays exactly (the
case number and its bytes are in the assertion message). Mutations of valid messages:
byte flips, inserted CR / LF / NUL / space / tab / VT / colon / comma / 0xff, deleted
spans, duplicated header lines, extra framing lines, truncation, huge numbers in
Content-Length and chunk sizes, case swaps.

After a run, against a warmed-up baseline: the worker is the same process and alive
(``workers = 1``: the daemon is the worker), it logged no traceback, its RSS
(/proc/PID/status VmRSS) grew by less than 16 MB, its open descriptors (/proc/PID/fd)
are back to the baseline once the server has closed its idle connections, and a normal
request still works. Throughout: every answer the client got is well-formed HTTP/1.1, and
everything the server got is well-formed requests (never a byte of a client's garbage).

The floods (spec: "Memory, timeouts"): 300 MB of chunked body after the server already
answered 413, and 300 MB of Content-Length body while its request waits in the pipeline
behind a slow one; the worker's peak RSS stays within 16 MB of where it started.
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.poll import wait_until

from .backends import Running, running
from .rawpeers import (
    RecordingBackend,
    Reply,
    head_problems,
    listed,
    parse_responses,
    read_all,
    response,
    talk,
)

SEED = 13
REQUESTS = 300
RESPONSES = 150
MB = 1 << 20
RSS_SLACK = 16 * MB
FLOOD = 300 * MB
T = 3.0
CONFIG = ("[timeouts]\nclient_header = 1000\nclient = 1000\nserver = 500\n"
          "[backend]\nerror_limit = 0\nretries = 0\n")


# --- the worker, seen from /proc --------------------------------------------------------

def rss(pid: int) -> int:
    """Resident set size in bytes."""
    text = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    assert m, text
    return int(m.group(1)) * 1024


def fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def quiet_fds(pid: int) -> int:
    """The fewest descriptors seen over 10 samples (a health check in flight holds one
    for a moment)."""
    samples: list[int] = []

    def enough() -> bool:
        samples.append(fds(pid))
        return len(samples) >= 10

    wait_until(enough, 5, "10 descriptor samples", interval=0.05)
    return min(samples)


class Peak:
    """The highest RSS of ``pid`` while it runs (sampled every 10 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.max = rss(pid)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.01):
            with contextlib.suppress(OSError, AssertionError):
                self.max = max(self.max, rss(self.pid))

    def __enter__(self) -> Peak:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=2)


# --- fixtures -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, RecordingBackend]]:
    backend = RecordingBackend("fz").start()
    try:
        with running(tmp_path_factory.mktemp("fuzz"), listed(backend), extra=CONFIG,
                     access_log=False) as r:
            yield r, backend
    finally:
        backend.stop()


@pytest.fixture(scope="module")
def flood(tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[Running, RecordingBackend]]:
    """Its own daemon: a slow server (1.5 s) well within the server timeout."""
    backend = RecordingBackend("fz").start()
    try:
        with running(tmp_path_factory.mktemp("flood"), listed(backend), access_log=False,
                     extra="[timeouts]\nserver = 10000\nclient = 10000\n") as r:
            yield r, backend
    finally:
        backend.stop()


def pid_of(lb: Running) -> int:
    assert lb.proc is not None and lb.alive(), lb.log.read_text()[-2000:]
    return lb.proc.pid


def normal_request_works(lb: Running, backend: RecordingBackend) -> None:
    got = talk(lb.port, b"GET /normal HTTP/1.1\r\nHost: x\r\n\r\n", timeout=T)
    rs = got.responses()
    assert [r.status for r in rs] == [200] and rs[0].body == b"fz GET /normal 0\n", got.data


def upstream_is_clean(backend: RecordingBackend, mark: int) -> None:
    """Whatever the clients sent, the server got only well-formed requests; a request
    cut short only as the last one on a connection the balancer closed."""
    for c in backend.since(mark):
        assert not c.leftover, (c.index, bytes(c.data[:500]))
        for r in c.requests:
            assert not head_problems(r), (head_problems(r), r.head)
        cut = [r for r in c.requests if not r.complete]
        if cut:
            assert cut == c.requests[-1:], [r.head for r in cut]
            wait_until(lambda c=c: c.closed, T,  # type: ignore[misc]
                       f"server connection {c.index} with a request cut short closed")


def settle(lb: Running, backend: RecordingBackend, pid: int, base_fds: int) -> None:
    """The server closes its idle connections; the worker's descriptors go back to the
    baseline (lingering client connections end within 2 s)."""
    backend.drop_all()
    wait_until(lambda: fds(pid) <= base_fds, 8,
               f"the worker's descriptors back to {base_fds} (now {fds(pid)})")


def no_traceback(lb: Running) -> None:
    log = lb.log.read_text(errors="replace")
    assert "Traceback" not in log and "worker_died" not in log, log[-3000:]


# --- mutations ----------------------------------------------------------------------------

REQUEST_CORPUS = [
    b"GET /{t} HTTP/1.1\r\nHost: x\r\nUser-Agent: fz\r\nAccept: */*\r\n\r\n",
    b"POST /{t} HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\nContent-Type: text/plain\r\n\r\n"
    b"hello world",
    b"POST /{t} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    b"6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
    b"GET /{t}-a HTTP/1.1\r\nHost: x\r\n\r\nPOST /{t}-b HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: 3\r\n\r\nabcGET /{t}-c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /{t} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET http://h.example/{t}?a=1 HTTP/1.1\r\nHost: h.example\r\nX-Forwarded-For: 192.0.2.1"
    b"\r\nForwarded: for=192.0.2.1\r\n\r\n",
    b"GET /{t} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"POST /{t} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\nabcd",
    b"PUT /{t} HTTP/1.1\r\nHost: x\r\nConnection: content-length\r\nContent-Length: 36\r\n\r\n"
    b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
]

RESPONSE_CORPUS = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;e=1\r\n world\r\n"
    b"0\r\nX-T: 1\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nETag: \"e\"\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Until: close\r\n\r\nbody until close",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok",
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
]

INSERTS = [b"\r", b"\n", b"\x00", b" ", b"\t", b"\r\n", b":", b",", b"\x0b", b"\xff", b"\r\n "]
HUGE = [b"99999999999999999999", b"18446744073709551616", b"-1", b"4294967296",
        b"1" + b"0" * 30, b"0x10", b"+5", b"5, 5"]
HUGE_HEX = [b"ffffffffffffffffffff", b"8000000000000000", b"1" * 40, b"-1", b"0x5",
            b"fffffff"]
EXTRA_LINES = [b"Transfer-Encoding: chunked\r\n", b"Content-Length: 5\r\n", b"Host: y\r\n",
               b"Connection: content-length\r\n", b"Transfer-Encoding: identity\r\n",
               b"Content-Length: 0\r\n"]


def _flip(rng: random.Random, d: bytes) -> bytes:
    if not d:
        return d
    i = rng.randrange(len(d))
    return d[:i] + bytes([d[i] ^ (1 << rng.randrange(8))]) + d[i + 1:]


def _insert(rng: random.Random, d: bytes) -> bytes:
    i = rng.randrange(len(d) + 1)
    return d[:i] + rng.choice(INSERTS) + d[i:]


def _delete(rng: random.Random, d: bytes) -> bytes:
    if not d:
        return d
    i = rng.randrange(len(d))
    return d[:i] + d[i + rng.randint(1, 4):]


def _head_lines(d: bytes) -> list[tuple[int, int]]:
    """(start, end incl. CRLF) of the field lines of the first head."""
    end = d.find(b"\r\n\r\n")
    first = d.find(b"\r\n")
    if end < 0 or first < 0 or first >= end:
        return []
    out = []
    pos = first + 2
    while pos < end + 2:
        nxt = d.find(b"\r\n", pos)
        out.append((pos, nxt + 2))
        pos = nxt + 2
    return out


def _dup_line(rng: random.Random, d: bytes) -> bytes:
    lines = _head_lines(d)
    if not lines:
        return _insert(rng, d)
    a, b = rng.choice(lines)
    return d[:b] + d[a:b] + d[b:]


def _extra_line(rng: random.Random, d: bytes) -> bytes:
    lines = _head_lines(d)
    if not lines:
        return _insert(rng, d)
    a, _ = rng.choice(lines)
    return d[:a] + rng.choice(EXTRA_LINES) + d[a:]


def _truncate(rng: random.Random, d: bytes) -> bytes:
    return d[: rng.randrange(len(d) + 1)]


def _huge_length(rng: random.Random, d: bytes) -> bytes:
    m = re.search(rb"Content-Length: ?([^\r]*)", d)
    if not m:
        return _extra_line(rng, d)
    return d[: m.start(1)] + rng.choice(HUGE) + d[m.end(1):]


def _huge_chunk(rng: random.Random, d: bytes) -> bytes:
    sizes = list(re.finditer(rb"\r\n([0-9a-fA-F]+)(;[^\r]*)?\r\n", d))
    if not sizes:
        return _huge_length(rng, d)
    m = rng.choice(sizes)
    return d[: m.start(1)] + rng.choice(HUGE_HEX) + d[m.end(1):]


def _swap_case(rng: random.Random, d: bytes) -> bytes:
    if not d:
        return d
    i = rng.randrange(len(d))
    j = min(len(d), i + rng.randint(1, 12))
    return d[:i] + d[i:j].swapcase() + d[j:]


MUTATORS: list[Callable[[random.Random, bytes], bytes]] = [
    _flip, _insert, _delete, _dup_line, _extra_line, _truncate, _huge_length, _huge_chunk,
    _swap_case,
]


def mutate(rng: random.Random, d: bytes) -> bytes:
    for _ in range(rng.randint(1, 3)):
        d = rng.choice(MUTATORS)(rng, d)
    return d


def check_answer(case: int, sent: bytes, data: bytes, closed: bool) -> None:
    """What the client got is nothing or well-formed HTTP/1.1 responses."""
    assert data == b"" or data.startswith(b"HTTP/1.1 "), (case, sent, data[:300])
    if b"HEAD" in sent.upper():  # a HEAD answer's length says nothing of what follows
        return
    rs, rest = parse_responses(data, eof=closed)
    assert rest == b"" and not any(r.malformed for r in rs), (case, sent, data[:600])


# --- the runs -------------------------------------------------------------------------------

def run_requests(lb: Running, rng: random.Random, count: int, first: int) -> None:
    for n in range(first, first + count):
        base = rng.choice(REQUEST_CORPUS).replace(b"{t}", b"fz%d" % n)
        sent = mutate(rng, base)
        got = talk(lb.port, sent, timeout=T)
        assert got.closed, (n, "the balancer kept a half-closed connection open", sent)
        check_answer(n, sent, got.data, got.closed)


def run_responses(lb: Running, backend: RecordingBackend, rng: random.Random, count: int,
                  first: int) -> None:
    replies: dict[str, Reply] = {}
    backend.policy = lambda req, conn: replies.get(req.path)
    for n in range(first, first + count):
        path = f"/rz{n}"
        sent = mutate(rng, rng.choice(RESPONSE_CORPUS))
        replies[path] = Reply(data=sent, close=rng.random() < 0.5)
        version = rng.choice([b"1.1", b"1.1", b"1.0"])
        got = talk(lb.port, b"GET %s HTTP/%s\r\nHost: x\r\n\r\n" % (path.encode(), version),
                   timeout=T)
        if not got.closed:  # the server kept its connection: the balancer waits for more
            assert got.data.startswith(b"HTTP/1.1 ") or got.data == b"", (n, sent, got.data)
            continue
        check_answer(n, sent, got.data, got.closed)
        assert b"smuggled" not in got.data


def test_fuzz_requests(fz: tuple[Running, RecordingBackend]) -> None:
    lb, backend = fz
    pid = pid_of(lb)
    run_requests(lb, random.Random(SEED + 1000), 60, 100_000)  # warm-up: same code paths
    backend.drop_all()
    base_rss, base_fds = rss(pid), quiet_fds(pid)
    mark = backend.mark()
    t0 = time.monotonic()
    run_requests(lb, random.Random(SEED), REQUESTS, 0)
    took = time.monotonic() - t0
    assert pid_of(lb) == pid
    no_traceback(lb)
    upstream_is_clean(backend, mark)
    settle(lb, backend, pid, base_fds)
    assert rss(pid) - base_rss < RSS_SLACK, (base_rss, rss(pid))
    normal_request_works(lb, backend)
    assert took < 60, took


def test_fuzz_responses(fz: tuple[Running, RecordingBackend]) -> None:
    lb, backend = fz
    pid = pid_of(lb)
    run_responses(lb, backend, random.Random(SEED + 2000), 40, 100_000)  # warm-up
    backend.drop_all()
    base_rss, base_fds = rss(pid), quiet_fds(pid)
    t0 = time.monotonic()
    try:
        run_responses(lb, backend, random.Random(SEED), RESPONSES, 0)
    finally:
        backend.policy = None
    took = time.monotonic() - t0
    assert pid_of(lb) == pid
    no_traceback(lb)
    settle(lb, backend, pid, base_fds)
    assert rss(pid) - base_rss < RSS_SLACK, (base_rss, rss(pid))
    normal_request_works(lb, backend)
    assert took < 60, took


# --- floods -------------------------------------------------------------------------------

def _send_all(s: socket.socket, head: bytes, piece: bytes, total: int, sent: list[int],
              deadline: float) -> None:
    """Send ``head``, then ``piece`` until ``total`` bytes of it, an error or the deadline."""
    try:
        s.sendall(head)
        while sent[0] < total and time.monotonic() < deadline:
            s.sendall(piece)
            sent[0] += len(piece)
    except OSError:
        pass


def test_flood_after_an_early_413_keeps_the_worker_flat(
        flood: tuple[Running, RecordingBackend]) -> None:
    """300 MB of chunked body after the server answered 413 at the head: the client gets
    the 413 (Connection: close), the rest is read and dropped for <= 2 s or until it
    ends, and the worker's RSS never grows by 16 MB."""
    lb, backend = flood
    pid = pid_of(lb)
    backend.policy = lambda req, conn: (Reply(data=response(413, b"too large\n"), at_head=True)
                                        if req.path == "/flood" else None)
    try:
        backend.drop_all()
        normal_request_works(lb, backend)
        base = rss(pid)
        data = b"x" * 65536
        piece = b"%x\r\n%s\r\n" % (len(data), data)
        sent = [0]
        with Peak(pid) as peak, socket.create_connection(("127.0.0.1", lb.port),
                                                         timeout=30) as s:
            sender = threading.Thread(target=_send_all, daemon=True, args=(
                s, b"POST /flood HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
                piece, FLOOD, sent, time.monotonic() + 30))
            sender.start()
            got = read_all(s, 30)
            sender.join(timeout=35)
        rs = parse_responses(got.data, eof=got.closed)[0]
        assert [r.status for r in rs] == [413] and rs[0].closes, got.data[:300]
        assert peak.max - base < RSS_SLACK, (base, peak.max, sent[0])
        assert rss(pid) - base < RSS_SLACK
        assert pid_of(lb) == pid
        normal_request_works(lb, backend)
    finally:
        backend.policy = None


def test_body_pipelined_behind_a_slow_request_is_capped(
        flood: tuple[Running, RecordingBackend]) -> None:
    """A POST with 300 MB of body pipelined behind a slow GET: while it waits its body is
    not read beyond ~64 KiB (backpressure), then it streams; both are answered and the
    worker's RSS never grows by 16 MB."""
    lb, backend = flood
    pid = pid_of(lb)
    backend.policy = lambda req, conn: Reply(delay=1.5) if req.path == "/slow" else None
    try:
        backend.drop_all()
        normal_request_works(lb, backend)
        base = rss(pid)
        piece = b"y" * 262144
        sent = [0]
        head = (b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
                b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % FLOOD)
        with Peak(pid) as peak, socket.create_connection(("127.0.0.1", lb.port),
                                                         timeout=60) as s:
            sender = threading.Thread(target=_send_all, daemon=True, args=(
                s, head, piece, FLOOD, sent, time.monotonic() + 60))
            sender.start()
            got = read_all(s, 60, responses=2)
            sender.join(timeout=5)
        rs = parse_responses(got.data, eof=got.closed)[0]
        assert [r.status for r in rs] == [200, 200], got.data[:500]
        assert rs[0].value("X-Seen-Path") == b"/slow"
        assert rs[1].value("X-Seen-Body-Length") == b"%d" % FLOOD, rs[1].raw[:300]
        assert peak.max - base < RSS_SLACK, (base, peak.max, sent[0])
        assert pid_of(lb) == pid
    finally:
        backend.policy = None
