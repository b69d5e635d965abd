"""Raw-socket peers for the balancer's conformance tests: they see and send exact bytes.

``RecordingBackend`` is a threaded TCP server on 127.0.0.1 standing in for a server behind
the balancer. Per connection it records exactly the bytes it received (``Conn.data``,
capped at ``record_cap``; ``Conn.received`` counts them all) and the requests it framed
from them (``Conn.requests``). It frames the balancer's requests minimally: the head up to
CRLFCRLF, then a ``Transfer-Encoding: chunked`` body (TE wins over Content-Length, as
RFC 9112 6.3 says and as a real server would: a balancer that forwarded both would desync
this server, which is the point) or a ``Content-Length`` body. What it answers is up to
its ``policy``: by default a well-formed HTTP/1.1 response per request::

    HTTP/1.1 200 OK
    Content-Length: ...
    X-Seen-Path: <the target it received>
    X-Seen-Method: <the method>
    X-Seen-Body-Length: <body bytes>
    X-Request-Id: <backend>/<connection>/<request>

    <backend> <method> <target> <body length>

and ``GET /healthz`` -> 200 ``ok`` (``healthy = False``: 503), so that the balancer's
health checks keep it UP. A policy can answer anything instead (``Reply``): raw bytes
(malicious responses), at once after the head (an early 413), after a delay, then close.

The client side: ``talk`` sends bytes (optionally in pieces), reads until the balancer
closes, a timeout, or a given number of responses; ``parse_responses`` frames a byte
string into responses, minimally and strictly (a status line that is not
``HTTP/1.x NNN ...`` is reported, never guessed).

Everything is bounded: socket timeouts, a stop event, capped records, capped threads.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

from harness.poll import wait_until

from .backends import Backend

CRLF = b"\r\n"
MAX_HEAD = 256 * 1024  # a head longer than this without CRLFCRLF is garbage
TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")  # RFC 9110 5.5 (obs-text allowed)
STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3}) ([\t\x20-\x7e\x80-\xff]*)")


# --- what a backend saw ---------------------------------------------------------------------

class Fields:
    """Header lookups of a message seen raw (a request or a response)."""

    headers: list[tuple[bytes, bytes]]

    def values(self, name: str) -> list[bytes]:
        """The values of every header line named ``name`` (case-insensitive)."""
        n = name.lower().encode()
        return [v for k, v in self.headers if k.lower() == n]

    def value(self, name: str) -> bytes | None:
        vs = self.values(name)
        return vs[0] if vs else None


@dataclass
class SeenRequest(Fields):
    """One request as the backend framed it."""

    head: bytes  # request line and header lines, CRLFCRLF included
    method: bytes = b""
    target: bytes = b""
    version: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    framing: str = "none"  # "none" | "length" | "chunked" | "bad": no framing it could use
    body: bytearray = field(default_factory=bytearray)  # decoded, capped at record_cap
    body_length: int = 0  # decoded body bytes, all of them
    raw_body: bytearray = field(default_factory=bytearray)  # as received, capped
    chunk_lines: list[bytes] = field(default_factory=list)  # chunk-size lines (capped)
    trailers: list[bytes] = field(default_factory=list)
    complete: bool = False
    malformed: str = ""  # why the head could not be parsed ("" if it could)

    @property
    def path(self) -> str:
        return self.target.decode("latin-1")


def head_problems(req: SeenRequest) -> list[str]:
    """What makes a head the balancer sent unambiguous-or-not: the request line is
    ``METHOD SP target SP HTTP/1.1``; every field line is ``token ":" OWS value`` with a
    valid value; exactly one Host; exactly one framing line (or none for an empty body),
    ``Content-Length`` of digits equal to the body, or ``Transfer-Encoding: chunked``."""
    out: list[str] = []
    if req.malformed:
        return [f"malformed head: {req.malformed}"]
    lines = req.head[:-4].split(CRLF)
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not TOKEN.fullmatch(parts[0]) or parts[2] != b"HTTP/1.1" \
            or not parts[1] or not re.fullmatch(rb"[\x21-\x7e]+", parts[1]):
        out.append(f"request line {lines[0]!r}")
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not TOKEN.fullmatch(name):
            out.append(f"field line {line!r}")
        elif not FIELD_VALUE.fullmatch(value) or b"\n" in value or b"\r" in value:
            out.append(f"field value {line!r}")
    hosts = req.values("host")
    if len(hosts) != 1:
        out.append(f"{len(hosts)} Host lines")
    cls = req.values("content-length")
    tes = req.values("transfer-encoding")
    if cls and tes:
        out.append("both Content-Length and Transfer-Encoding")
    if len(cls) > 1 or len(tes) > 1:
        out.append(f"{len(cls)} Content-Length and {len(tes)} Transfer-Encoding lines")
    if cls and not re.fullmatch(rb" ?[0-9]+ ?", cls[0]):
        out.append(f"Content-Length {cls[0]!r}")
    elif cls and int(cls[0]) != req.body_length and req.complete:
        out.append(f"Content-Length {cls[0]!r} for {req.body_length} body bytes")
    if tes and tes[0].strip() != b"chunked":
        out.append(f"Transfer-Encoding {tes[0]!r}")
    if not cls and not tes and req.body_length:
        out.append("a body without framing")
    return out


@dataclass
class Conn:
    """One connection the balancer opened to the backend."""

    index: int
    data: bytearray = field(default_factory=bytearray)  # what arrived, capped
    received: int = 0  # what arrived, all of it
    requests: list[SeenRequest] = field(default_factory=list)
    leftover: bytes = b""  # bytes it could not frame (after a malformed head)
    sent: bytearray = field(default_factory=bytearray)
    closed: bool = False  # the thread is done: the balancer closed or we dropped it
    peer_closed: bool = False  # the balancer closed its side (EOF or reset)
    replies: int = 0

    def real(self) -> list[SeenRequest]:
        """Its requests but the health checks."""
        return [r for r in self.requests if not r.target.startswith(b"/healthz")]


@dataclass
class Reply:
    """How the backend answers one request.

    ``data``: the exact bytes (None: the default answer); ``at_head``: as soon as the
    head is framed, before the body; ``delay``: seconds to wait first; ``close``: FIN
    after it (the connection is still read, so what follows is recorded); ``silent``:
    no answer at all."""

    data: bytes | None = None
    at_head: bool = False
    delay: float = 0.0
    close: bool = False
    silent: bool = False


Policy = Callable[[SeenRequest, Conn], Reply | None]


def default_answer(name: str, req: SeenRequest, conn: Conn) -> bytes:
    target = safe(req.target)
    body = f"{name} {safe(req.method)} {target} {req.body_length}\n".encode()
    lines = [
        b"HTTP/1.1 200 OK",
        b"Content-Length: %d" % (0 if req.method == b"HEAD" else len(body)),
        b"X-Seen-Path: " + target.encode(),
        b"X-Seen-Method: " + safe(req.method).encode(),
        b"X-Seen-Body-Length: %d" % req.body_length,
        f"X-Request-Id: {name}/{conn.index}/{len(conn.requests)}".encode(),
    ]
    if any(v.strip().lower() == b"close" for v in req.values("connection")):
        lines.append(b"Connection: close")
    return CRLF.join(lines) + CRLF + CRLF + (b"" if req.method == b"HEAD" else body)


def safe(raw: bytes) -> str:
    """Printable ASCII, anything else %XX (it goes into a header value)."""
    return "".join(chr(b) if 0x21 <= b < 0x7F and b != 0x25 else f"%{b:02X}" for b in raw)


def response(status: int, body: bytes = b"", *headers: str, reason: str = "X") -> bytes:
    """A well-formed response with a Content-Length (for policies)."""
    head = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


# --- the backend --------------------------------------------------------------------------

class RecordingBackend:
    """A raw HTTP server on 127.0.0.1 that records what it receives (see the module)."""

    def __init__(self, name: str, policy: Policy | None = None, *, record_cap: int = 1 << 20,
                 max_conns: int = 256) -> None:
        self.name = name
        self.policy = policy
        self.healthy = True
        self.record_cap = record_cap
        self.max_conns = max_conns
        self.conns: list[Conn] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._socks: dict[int, socket.socket] = {}
        self._threads: dict[int, threading.Thread] = {}
        self._dropping: set[int] = set()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self._acceptor: threading.Thread | None = None

    # lifecycle
    def start(self) -> RecordingBackend:
        self.sock.listen(512)
        self.sock.settimeout(0.1)
        self._acceptor = threading.Thread(target=self._accept, daemon=True,
                                          name=f"rec-{self.name}")
        self._acceptor.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        with contextlib.suppress(OSError):
            self.sock.close()
        with self.lock:
            socks = list(self._socks.values())
            threads = list(self._threads.values())
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for t in [*threads, *([self._acceptor] if self._acceptor else [])]:
            t.join(timeout=2)

    def mark(self) -> int:
        """The index the next connection will get (see ``since``)."""
        with self.lock:
            return len(self.conns)

    def since(self, mark: int) -> list[Conn]:
        """The connections opened since ``mark``."""
        with self.lock:
            return list(self.conns[mark:])

    def requests(self, mark: int = 0) -> list[SeenRequest]:
        """Every request but the health checks on the connections since ``mark``."""
        return [r for c in self.since(mark) for r in c.real()]

    def open_conns(self) -> list[Conn]:
        with self.lock:
            return [c for c in self.conns if not c.closed]

    def drop_all(self, timeout: float = 3.0) -> None:
        """Close every open connection the clean way (FIN) and wait until the balancer
        closed its side too, so that it holds no pooled connection to us any more; a
        connection still open at the deadline is reset."""
        with self.lock:
            items = [(i, s) for i, s in self._socks.items() if not self.conns[i].closed]
            self._dropping.update(i for i, _ in items)
        for _, s in items:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_WR)
        with contextlib.suppress(AssertionError):
            wait_until(lambda: all(self.conns[i].closed for i, _ in items), timeout,
                       "the balancer closing its connections to us")
        for i, s in items:
            if not self.conns[i].closed:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
        with self.lock:
            threads = [self._threads[i] for i, _ in items if i in self._threads]
        for t in threads:
            t.join(timeout=2)

    # serving
    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                s, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                busy = sum(1 for c in self.conns if not c.closed)
                conn = Conn(len(self.conns))
                self.conns.append(conn)
                if busy >= self.max_conns:
                    conn.closed = True
                    s.close()
                    continue
                self._socks[conn.index] = s
                t = threading.Thread(target=self._serve, args=(s, conn), daemon=True,
                                     name=f"rec-{self.name}-{conn.index}")
                self._threads[conn.index] = t
            t.start()

    def _send(self, s: socket.socket, conn: Conn, data: bytes) -> bool:
        if conn.index in self._dropping:
            return False
        try:
            s.settimeout(10)  # a balancer applying backpressure: wait for it, boundedly
            s.sendall(data)
        except OSError:
            return False
        finally:
            with contextlib.suppress(OSError):
                s.settimeout(0.1)
        if len(conn.sent) < self.record_cap:
            conn.sent += data[: self.record_cap - len(conn.sent)]
        return True

    def _answer(self, s: socket.socket, conn: Conn, req: SeenRequest,
                reply: Reply | None) -> bool:
        """Send the answer; False: stop answering on this connection."""
        if reply is not None and reply.silent:
            return True
        if reply is not None and reply.delay and self.stopping.wait(reply.delay):
            return False
        if reply is not None and reply.data is not None:
            data = reply.data
        elif req.target.startswith(b"/healthz"):
            ok = self.healthy
            data = response(200 if ok else 503, b"ok\n" if ok else b"down\n",
                            "Connection: close", reason="OK" if ok else "Unavailable")
        else:
            data = default_answer(self.name, req, conn)
        conn.replies += 1
        if not self._send(s, conn, data):
            return False
        close = (reply is not None and reply.close) or b"Connection: close\r\n" in data.split(
            b"\r\n\r\n", 1)[0] + CRLF
        if close:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_WR)
            return False
        return True

    def _serve(self, s: socket.socket, conn: Conn) -> None:
        s.settimeout(0.1)
        framer = _Framer(self.record_cap)
        answering = True
        try:
            while not self.stopping.is_set():
                try:
                    data = s.recv(262144)
                except TimeoutError:
                    continue
                except OSError:
                    conn.peer_closed = True
                    break
                if not data:
                    conn.peer_closed = True
                    break
                conn.received += len(data)
                if len(conn.data) < self.record_cap:
                    conn.data += data[: self.record_cap - len(conn.data)]
                for event, req in framer.feed(data):
                    if event == "head":
                        conn.requests.append(req)
                        reply = self._policy(req, conn)
                        framer.pending_reply = reply
                        if answering and reply is not None and reply.at_head:
                            answering = self._answer(s, conn, req, reply)
                            framer.pending_reply = Reply(silent=True)
                    elif event == "complete" and answering:
                        answering = self._answer(s, conn, req, framer.pending_reply)
                    elif event == "malformed":
                        if req not in conn.requests:
                            conn.requests.append(req)
                        if not answering:
                            continue
                        self._send(s, conn, response(400, b"bad\n", "Connection: close"))
                        with contextlib.suppress(OSError):
                            s.shutdown(socket.SHUT_WR)
                        answering = False
                conn.leftover = bytes(framer.garbage[:4096])
        finally:
            with contextlib.suppress(OSError):
                s.close()
            with self.lock:
                conn.closed = True
                self._socks.pop(conn.index, None)

    def _policy(self, req: SeenRequest, conn: Conn) -> Reply | None:
        if self.policy is None or req.target.startswith(b"/healthz"):
            return None
        return self.policy(req, conn)


def listed(*peers: RecordingBackend) -> list[Backend]:
    """For ``backends.running`` / ``config_text``, which read only ``.name`` and ``.port``."""
    return cast("list[Backend]", list(peers))


class _Framer:
    """Incremental request framing: head, then a chunked or Content-Length body."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.buf = bytearray()
        self.state = "head"
        self.req: SeenRequest | None = None
        self.left = 0
        self.garbage = bytearray()  # after a malformed head: everything, capped
        self.pending_reply: Reply | None = None

    def _keep(self, req: SeenRequest, decoded: bytes, raw: bytes) -> None:
        req.body_length += len(decoded)
        if len(req.body) < self.cap:
            req.body += decoded[: self.cap - len(req.body)]
        if len(req.raw_body) < self.cap:
            req.raw_body += raw[: self.cap - len(req.raw_body)]

    def feed(self, data: bytes) -> list[tuple[str, SeenRequest]]:
        if self.state == "garbage":
            if len(self.garbage) < self.cap:
                self.garbage += data[: self.cap - len(self.garbage)]
            return []
        self.buf += data
        events: list[tuple[str, SeenRequest]] = []
        while True:
            step = self._step(events)
            if not step:
                return events

    def _step(self, events: list[tuple[str, SeenRequest]]) -> bool:
        """One framing step on ``buf``; False: more bytes are needed."""
        buf = self.buf
        if self.state == "head":
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    self._garbage(events, SeenRequest(head=bytes(buf[:200])), "no end of head")
                return False
            req = parse_head(bytes(buf[: end + 4]))
            del buf[: end + 4]
            self.req = req
            if req.malformed:
                self._garbage(events, req, req.malformed)
                return False
            events.append(("head", req))
            if req.framing == "chunked":
                self.state = "size"
            elif req.framing == "length":
                self.left = int(req.values("content-length")[0])
                self.state = "length"
            else:
                self._complete(events)
            return True
        cur = self.req
        assert cur is not None
        return self._body_step(cur, buf, events)

    def _take(self, req: SeenRequest, buf: bytearray) -> None:
        """Up to ``left`` body bytes from the front of ``buf``."""
        take = min(self.left, len(buf))
        part = bytes(buf[:take])
        del buf[:take]
        self._keep(req, part, part)
        self.left -= take

    def _body_step(self, req: SeenRequest, buf: bytearray,
                   events: list[tuple[str, SeenRequest]]) -> bool:
        if self.state == "length":
            if not buf and self.left:
                return False
            self._take(req, buf)
            if self.left == 0:
                self._complete(events)
                return True
            return False
        if self.state in ("size", "trailer"):
            end = buf.find(CRLF)
            if end < 0:
                if len(buf) > MAX_HEAD:
                    self._garbage(events, req, "no end of chunk line")
                return False
            line = bytes(buf[:end])
            del buf[: end + 2]
            self._keep(req, b"", line + CRLF)
            if self.state == "trailer":
                if line:
                    req.trailers.append(line)
                else:
                    self._complete(events)
                return True
            if len(req.chunk_lines) < 10000:
                req.chunk_lines.append(line)
            size = line.split(b";", 1)[0].strip(b" \t")
            if not re.fullmatch(rb"[0-9A-Fa-f]{1,16}", size):
                self._garbage(events, req, f"chunk size {line[:40]!r}")
                return False
            self.left = int(size, 16)
            self.state = "data" if self.left else "trailer"
            return True
        if self.state == "data":
            if not buf:
                return False
            self._take(req, buf)
            if self.left == 0:
                self.state = "crlf"
            return bool(buf)
        if self.state == "crlf":
            if len(buf) < 2:
                return False
            if bytes(buf[:2]) != CRLF:
                self._garbage(events, req, f"no CRLF after chunk data: {bytes(buf[:10])!r}")
                return False
            del buf[:2]
            self._keep(req, b"", CRLF)
            self.state = "size"
            return True
        return False

    def _complete(self, events: list[tuple[str, SeenRequest]]) -> None:
        assert self.req is not None
        self.req.complete = True
        events.append(("complete", self.req))
        self.req = None
        self.state = "head"

    def _garbage(self, events: list[tuple[str, SeenRequest]], req: SeenRequest,
                 why: str) -> None:
        req.malformed = req.malformed or why
        events.append(("malformed", req))
        self.state = "garbage"
        self.garbage += bytes(self.buf[: self.cap])
        self.buf.clear()


def parse_head(head: bytes) -> SeenRequest:
    """Frame a request head (CRLFCRLF included), minimally; problems go to ``malformed``."""
    req = SeenRequest(head=head)
    lines = head[:-4].split(CRLF)
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        req.malformed = f"request line {lines[0][:100]!r}"
        return req
    req.method, req.target, req.version = parts
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            req.malformed = f"field line {line[:100]!r}"
            return req
        req.headers.append((name, value.strip(b" \t")))
    tes = req.values("transfer-encoding")
    cls = req.values("content-length")
    if tes:
        codings = [c.strip().lower() for v in tes for c in v.split(b",")]
        req.framing = "chunked" if codings[-1] == b"chunked" else "bad"
    elif cls:
        ok = len(set(cls)) == 1 and re.fullmatch(rb"[0-9]{1,18}", cls[0]) is not None
        req.framing = "length" if ok else "bad"
    if req.framing == "bad":
        req.malformed = "framing it cannot use"
    return req


# --- the client -------------------------------------------------------------------------

@dataclass
class Received:
    data: bytes
    closed: bool  # the balancer closed (EOF or reset) before the timeout
    reset: bool = False

    def responses(self, methods: Sequence[bytes] = ()) -> list[Response]:
        return parse_responses(self.data, eof=self.closed, methods=methods)[0]


def talk(port: int, data: bytes | Sequence[bytes], *, shut: bool = True,
         timeout: float = 3.0, responses: int | None = None,
         methods: Sequence[bytes] = ()) -> Received:
    """Send ``data`` (a list: one send each) on a new connection to 127.0.0.1:port, then
    half-close if ``shut``; read until the balancer closes, ``timeout`` passes or (if
    given) ``responses`` final responses are complete."""
    pieces = [data] if isinstance(data, bytes) else list(data)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(OSError):
            for p in pieces:
                s.sendall(p)
            if shut:
                s.shutdown(socket.SHUT_WR)
        return read_all(s, timeout, responses, methods)


def read_all(s: socket.socket, timeout: float, responses: int | None = None,
             methods: Sequence[bytes] = ()) -> Received:
    """Read from ``s`` until EOF, ``timeout`` or ``responses`` complete final responses."""
    deadline = time.monotonic() + timeout
    out = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return Received(bytes(out), closed=False)
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            return Received(bytes(out), closed=False)
        except OSError:
            return Received(bytes(out), closed=True, reset=True)
        if not chunk:
            return Received(bytes(out), closed=True)
        out += chunk
        if responses is not None:
            got, _ = parse_responses(bytes(out), eof=False, methods=methods)
            if sum(1 for r in got if r.complete and r.status >= 200) >= responses:
                return Received(bytes(out), closed=False)


@dataclass
class Response(Fields):
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    raw: bytes
    complete: bool
    malformed: str = ""

    @property
    def closes(self) -> bool:
        return any(t.strip().lower() == b"close" for v in self.values("connection")
                   for t in v.split(b","))


def parse_responses(data: bytes, *, eof: bool = True, methods: Sequence[bytes] = ()
                    ) -> tuple[list[Response], bytes]:
    """Responses framed from ``data`` (RFC 9112 6.3, strictly): (responses, unparsed rest).

    A final response to the i-th of ``methods`` that is ``HEAD`` has no body. A
    response without Content-Length or Transfer-Encoding runs to the end of ``data``,
    complete only if ``eof``. The last one may be incomplete; a malformed one ends it."""
    out: list[Response] = []
    pos = 0
    finals = 0
    while pos < len(data):
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            out.append(Response(0, b"", [], b"", data[pos:], complete=False))
            return out, b""
        head = data[pos:end]
        lines = head.split(CRLF)
        m = STATUS_LINE.fullmatch(lines[0])
        headers = []
        bad = "" if m else f"status line {lines[0][:80]!r}"
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not TOKEN.fullmatch(name):
                bad = bad or f"field line {line[:80]!r}"
            headers.append((name, value.strip(b" \t")))
        status = int(m.group(1)) if m else 0
        r = Response(status, m.group(2) if m else b"", headers, b"", b"", complete=False,
                     malformed=bad)
        body_at = end + 4
        if bad:
            r.raw = data[pos:]
            out.append(r)
            return out, data[pos:]
        is_head = status >= 200 and finals < len(methods) and methods[finals] == b"HEAD"
        tes = r.values("transfer-encoding")
        cls = r.values("content-length")
        if 100 <= status < 200 or status in (204, 304) or is_head:
            stop = body_at
            r.complete = True
        elif tes:
            stop, body = _dechunk(data, body_at)
            r.complete = stop >= 0
            if stop < 0:
                stop = len(data)
            r.body = body
        elif cls:
            if len(set(cls)) != 1 or not cls[0].isdigit():
                r.malformed = f"Content-Length {cls!r}"
                r.raw = data[pos:]
                out.append(r)
                return out, data[pos:]
            stop = min(len(data), body_at + int(cls[0]))
            r.body = data[body_at:stop]
            r.complete = stop == body_at + int(cls[0])
        else:
            stop = len(data)
            r.body = data[body_at:]
            r.complete = eof
        r.raw = data[pos:stop]
        out.append(r)
        if status >= 200:
            finals += 1
        if not r.complete:
            return out, b""
        pos = stop
    return out, b""


def _dechunk(data: bytes, pos: int) -> tuple[int, bytes]:
    """(end of the chunked body or -1 if incomplete/invalid, the body decoded so far)."""
    body = bytearray()
    while True:
        end = data.find(CRLF, pos)
        if end < 0:
            return -1, bytes(body)
        size_text = data[pos:end].split(b";", 1)[0].strip()
        if not re.fullmatch(rb"[0-9A-Fa-f]{1,16}", size_text):
            return -1, bytes(body)
        size = int(size_text, 16)
        pos = end + 2
        if size == 0:
            while True:  # trailers, then the empty line
                end = data.find(CRLF, pos)
                if end < 0:
                    return -1, bytes(body)
                line = data[pos:end]
                pos = end + 2
                if not line:
                    return pos, bytes(body)
        if len(data) < pos + size + 2:
            body += data[pos: pos + size]
            return -1, bytes(body)
        body += data[pos: pos + size]
        if data[pos + size: pos + size + 2] != CRLF:
            return -1, bytes(body)
        pos += size + 2

