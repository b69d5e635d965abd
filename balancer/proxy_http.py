"""HTTP mode: an HTTP/1.1 reverse proxy with per-request balancing.

Client side (``ClientConn``): httptools parses requests (pipelined ones are
queued and served in order); limits give 414/431/400/408 and never crash the
worker. Each request is dispatched by ``ClientConn.dispatch``:

1. the balancer chooses a server (queueing while all are at maxconn;
   503 with a clear body when none is usable)
2. an idle pooled keep-alive connection to it is reused for idempotent
   requests; other requests get a new connection, so a non-idempotent request
   is never lost to the keep-alive race
3. the request head is rewritten (hop-by-hop headers dropped,
   X-Forwarded-For/-Proto added) and the body streamed (chunked bodies
   re-chunked); up to 64 KiB of body is kept for a retry
4. the response is streamed back as it arrives (``Exchange``)

Retries: a connect error, or a failure before any response byte of an
idempotent request whose body was kept, is retried (``retries`` times, on
another server with ``redispatch``); the client never sees it. When a server
goes DOWN, its requests that have no response yet are moved the same way.

The hot path (a pooled connection is free) runs entirely in protocol
callbacks: no task, future or timer per request. Writes to the client are
corked while a server's bytes are parsed, so a response head and body leave
in one system call. Timeouts are deadlines checked by the balancer's sweeper.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any, cast

import httptools

from balancer import http
from balancer.core import Balancer, ServerRuntime
from balancer.scheduler import Verdict

RETRY_BUFFER = 64 * 1024
MAX_PIPELINE = 32
RETRYABLE_STATUS_ERRORS = frozenset({502, 503, 504})


class AttemptFailed(Exception):
    """A try on one server failed; ``retryable`` if the client saw nothing yet."""

    def __init__(self, reason: str, retryable: bool, passive: bool = True,
                 status: int = 502) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.passive = passive  # counts against the server's health
        self.status = status


class Request:
    __slots__ = ("attempted", "attempts", "body_done", "body_size", "chunked", "content_length",
                 "head", "head_size", "headers", "http10", "keep_alive", "kept", "last_error",
                 "method", "pending", "replayable", "server", "sink", "started", "tried", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: http.Headers = []
        self.head = http.Head()
        self.head_size = 0
        self.method = b""
        self.http10 = False
        self.keep_alive = True
        self.chunked = False
        self.content_length: int | None = None
        self.pending: list[bytes] = []  # body received while no exchange was sending it
        self.kept: list[bytes] = []  # the whole body, while it is small enough to replay
        self.body_size = 0
        self.body_done = False
        self.replayable = True
        self.attempted = False
        self.sink: Exchange | None = None  # the exchange streaming this body now
        self.started = time.monotonic()
        self.tried: list[str] = []  # servers whose attempt failed
        self.attempts = 0
        self.last_error = ""
        self.server = "-"

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    @property
    def idempotent(self) -> bool:
        return self.method in http.IDEMPOTENT

    def on_body(self, data: bytes) -> None:
        self.body_size += len(data)
        if self.replayable:
            self.kept.append(data)
            if self.body_size > RETRY_BUFFER:
                self.replayable = False
                self.kept = []
        if self.sink is not None:
            self.sink.send_body(data)
        else:
            self.pending.append(data)

    def take_body(self) -> list[bytes]:
        """What a new attempt must send first: all of it on a retry, else what waited."""
        parts = self.kept if self.attempted else self.pending
        self.pending = []
        self.attempted = True
        return list(parts)

    def on_body_done(self) -> None:
        self.body_done = True
        if self.sink is not None:
            self.sink.end_body()


class BackendConn(asyncio.Protocol):
    """A keep-alive connection to a server; one exchange at a time."""

    def __init__(self, bal: Balancer, rt: ServerRuntime) -> None:
        self.bal = bal
        self.rt = rt
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.closed = False
        self.keep_alive = True
        self.uses = 0

    # asyncio
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None:  # nobody asked: not a server we can trust with the next request
            self.close()
            return
        ex.got_bytes = True
        ex.deadline = self.bal.loop.time() + self.bal.config.timeouts.server
        self.rt.stats.bytes_in += len(data)
        client = ex.client
        client.corked = True  # everything this read produces leaves in one write
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            ex.fail(AttemptFailed("upgrade not supported", retryable=False))
            self.close()
        except httptools.HttpParserError as e:
            if self.exchange is not None:
                self.exchange.fail(AttemptFailed(f"invalid response: {e}", retryable=False))
            self.close()
        finally:
            client.uncork()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self in self.rt.pool:
            self.rt.pool.remove(self)
        ex = self.exchange
        if ex is not None:
            ex.client.corked = True
            try:
                ex.backend_lost(exc)
            finally:
                ex.client.uncork()

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.client.pause_reading()

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.client.resume_reading()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if self.exchange is not None:
            self.exchange.resp_headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.exchange is not None:
            self.keep_alive = self.parser.should_keep_alive()
            self.exchange.on_response_head(self.parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        if self.exchange is not None:
            self.exchange.on_response_body(body)

    def on_message_complete(self) -> None:
        if self.exchange is not None:
            self.exchange.on_response_complete()


class Exchange:
    """One request on one server connection: sends it, streams the response back."""

    __slots__ = (
        "bal",
        "client",
        "client_keep_alive",
        "conn",
        "deadline",
        "finished",
        "got_bytes",
        "rechunk",
        "req",
        "resp_headers",
        "reused",
        "rt",
        "sent_bytes",
        "started",
        "status",
        "until_close",
    )

    def __init__(self, bal: Balancer, client: ClientConn, req: Request, rt: ServerRuntime,
                 conn: BackendConn, reused: bool) -> None:
        self.bal = bal
        self.client = client
        self.req = req
        self.rt = rt
        self.conn = conn
        self.reused = reused
        self.got_bytes = False
        self.started = False  # response head written to the client
        self.finished = False
        self.status = 0
        self.resp_headers: http.Headers = []
        self.rechunk = False
        self.until_close = False
        self.client_keep_alive = True
        self.sent_bytes = 0
        self.deadline = bal.loop.time() + bal.config.timeouts.server

    # --- request ---------------------------------------------------------------
    def start(self) -> None:
        req = self.req
        conn = self.conn
        assert conn.transport is not None
        conn.exchange = self
        conn.uses += 1
        self.rt.inflight.add(self)
        self.client.exchange = self
        srv = self.rt.server
        out = [http.request_head(req.method, req.url, req.head, client_ip=self.client.peer,
                                 proto=b"http", host_fallback=f"{srv.host}:{srv.port}".encode())]
        for part in req.take_body():
            if part:
                out.append(http.chunk(part) if req.chunked else part)
        if req.body_done:
            if req.chunked:
                out.append(http.LAST_CHUNK)
        else:
            req.sink = self
        data = b"".join(out)
        self.sent_bytes += len(data)
        conn.transport.write(data)

    def send_body(self, data: bytes) -> None:
        if self.finished or self.conn.transport is None or not data:
            return
        payload = http.chunk(data) if self.req.chunked else data
        self.conn.transport.write(payload)
        self.sent_bytes += len(payload)

    def end_body(self) -> None:
        self.req.sink = None
        if self.req.chunked and not self.finished and self.conn.transport is not None:
            self.conn.transport.write(http.LAST_CHUNK)

    def on_timeout(self, now: float) -> None:
        if self.started:
            self.fail(AttemptFailed("server timeout during response", retryable=False))
        else:
            self.fail(AttemptFailed("server timeout", retryable=False, status=504))
        self.conn.close()

    # --- response --------------------------------------------------------------
    def on_response_head(self, status: int) -> None:
        req = self.req
        if 100 <= status < 200:
            if status != 101 and not req.http10:
                self.client.write(f"HTTP/1.1 {status} {http.REASONS.get(status, '')}\r\n\r\n"
                                  .encode())
            self.resp_headers = []
            self.status = -status  # interim: its message_complete is not the end
            return
        self.status = status
        head = http.analyse(self.resp_headers)
        no_body = req.method == b"HEAD" or status in (204, 304)
        self.until_close = (not no_body and head.content_length is None and not head.chunked)
        self.client_keep_alive = (req.keep_alive and not self.bal.draining
                                  and not self.client.closing
                                  and not (self.until_close and req.http10))
        self.rechunk = not no_body and (head.chunked or self.until_close) and not req.http10
        self.client.write(http.response_head(
            status, REASON_BYTES.get(status) or b"Unknown", head,
            keep_alive=self.client_keep_alive, client_http10=req.http10,
            chunked=self.rechunk))
        self.started = True
        if not no_body and (head.chunked or head.content_length):
            # the body usually follows in the server's next segment: send the
            # head with it, one write instead of two
            self.client.hold = True
        if req.method == b"HEAD":
            # httptools cannot be told that a HEAD response has no body: end here
            # and do not reuse this connection.
            self.conn.keep_alive = False
            self.finish()

    def on_response_body(self, data: bytes) -> None:
        if not self.finished:
            self.client.hold = False
            self.client.write(http.chunk(data) if self.rechunk else data)

    def on_response_complete(self) -> None:
        if self.status < 0:  # an interim 1xx response
            self.status = 0
            return
        if self.finished:
            return
        if self.rechunk:
            self.client.write(http.LAST_CHUNK)
        self.finish()

    def backend_lost(self, exc: Exception | None) -> None:
        if self.finished:
            return
        if self.started and self.until_close:
            self.on_response_complete()
            return
        reason = f"connection lost: {exc}" if exc else "server closed the connection"
        if self.started:
            self.fail(AttemptFailed(reason, retryable=False))
        else:
            # a reused connection closed by the server is the keep-alive race,
            # not a fault of the server
            self.fail(AttemptFailed(reason, retryable=self.retryable(),
                                    passive=not (self.reused and not self.got_bytes)))

    def retryable(self) -> bool:
        return (not self.got_bytes and not self.started and self.req.idempotent
                and self.req.replayable)

    def redispatch(self, reason: str) -> bool:
        """The server went away (DOWN, maintenance): move the request if it is safe."""
        if self.finished or not self.retryable():
            return False
        self.fail(AttemptFailed(reason, retryable=True, passive=False))
        self.conn.close()
        return True

    # --- the end -----------------------------------------------------------------
    def _end(self) -> None:
        self.finished = True
        self.client.hold = False
        self.rt.inflight.discard(self)
        self.conn.exchange = None
        if self.req.sink is self:
            self.req.sink = None
        if self.client.exchange is self:
            self.client.exchange = None
        self.rt.stats.bytes_out += self.sent_bytes

    def finish(self) -> None:
        if not self.finished:
            self._end()
            self.client.exchange_done(self)

    def fail(self, err: AttemptFailed) -> None:
        if not self.finished:
            self._end()
            self.conn.keep_alive = False
            self.client.attempt_failed(self.req, self.rt, self, err)


class ClientConn(asyncio.Protocol):
    """One client connection in HTTP mode: parses requests and serves them in order."""

    def __init__(self, bal: Balancer) -> None:
        self.bal = bal
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = "-"
        self.queue: collections.deque[Request] = collections.deque()
        self.req: Request | None = None  # being parsed
        self.active: Request | None = None  # being served (queue[0])
        self.in_head = False
        self.head_bytes = 0
        self.closing = False
        self.task: asyncio.Task[None] | None = None  # connecting or queueing, off the hot path
        self.deadline = float("inf")  # checked by the balancer's sweeper
        self.paused = 0
        self.exchange: Exchange | None = None
        self.error: tuple[int, str] | None = None  # a limit hit inside a parser callback
        self.closing_requested = False  # the client half-closed: close once answered
        self.lingering = False  # answered and half-closed: reading what is left (reject)
        self.corked = False
        self.hold = False  # keep a response head back until its body arrives
        self.out: list[bytes] = []

    # --- asyncio ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else "-"
        fe = self.bal.frontend
        fe.connections += 1
        fe.current += 1
        self.bal.clients.add(self)
        if self.bal.draining:
            self.close()
            return
        if fe.current > self.bal.config.maxconn:
            self.bal.over_maxconn()
            self.reject(503, "too many connections", quiet=True)
            return
        self.set_deadline(self.bal.config.timeouts.client_header)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if self.in_head or self.req is None:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # no tunnelling: the request is served without Upgrade, then we close
            self.closing_after_queue()
        except httptools.HttpParserError as e:
            if self.error is None:
                self.reject(400, f"malformed request: {e}")
            else:
                self.reject(*self.error)
            return
        if self.error is not None:
            return
        if self.in_head and self.head_bytes > self.bal.config.max_header_size:
            self.reject(431, "request header section too large")

    def eof_received(self) -> bool:
        # The client finished sending: answer what was asked, then close.
        if self.lingering:
            self.lingering = False
            return False  # (the transport closes: nothing left unread, no RST)
        self.closing_after_queue()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.bal.frontend.current -= 1
        self.bal.clients.discard(self)
        ex = self.exchange
        if ex is not None and not ex.finished:
            ex.conn.close()
            ex.fail(AttemptFailed("client went away", retryable=False, passive=False))
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def pause_writing(self) -> None:
        ex = self.exchange
        if ex is not None and ex.conn.transport is not None:
            ex.conn.transport.pause_reading()

    def resume_writing(self) -> None:
        ex = self.exchange
        if ex is not None and ex.conn.transport is not None:
            ex.conn.transport.resume_reading()

    # --- httptools callbacks --------------------------------------------------------
    def on_message_begin(self) -> None:
        self.req = Request()
        self.in_head = True
        self.set_deadline(self.bal.config.timeouts.client_header)

    def on_url(self, url: bytes) -> None:
        assert self.req is not None
        self.req.url += url
        if len(self.req.url) > self.bal.config.max_url_size:
            self.error = (414, "request target too long")
            raise httptools.HttpParserError(self.error[1])

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self.req
        assert req is not None
        req.headers.append((name, value))
        req.head_size += len(name) + len(value) + 4
        if req.head_size + len(req.url) > self.bal.config.max_header_size:
            self.error = (431, "request header section too large")
            raise httptools.HttpParserError(self.error[1])

    def on_headers_complete(self) -> None:
        req = self.req
        assert req is not None
        self.in_head = False
        self.head_bytes = 0
        self.deadline = float("inf")
        p = self.parser
        req.method = p.get_method()
        req.http10 = p.get_http_version() == "1.0"
        req.keep_alive = p.should_keep_alive()
        head = req.head = http.analyse(req.headers)
        req.chunked = head.chunked
        req.content_length = head.content_length
        if not req.has_body:
            req.body_done = True
        self.queue.append(req)
        self.bal.frontend.requests += 1
        if len(self.queue) > MAX_PIPELINE:
            self.pause_reading()
        if self.active is None:
            self.next_request()

    def on_body(self, body: bytes) -> None:
        if self.req is not None:
            self.req.on_body(body)

    def on_message_complete(self) -> None:
        if self.req is not None and not self.req.body_done:
            self.req.on_body_done()
        self.req = None

    # --- serving -----------------------------------------------------------------
    def next_request(self) -> None:
        if self.closing or not self.queue:
            return
        self.active = self.queue[0]
        self.dispatch(self.active)

    def dispatch(self, req: Request) -> None:
        """Choose a server for ``req`` and start an attempt on it."""
        bal = self.bal
        exclude = req.tried if bal.config.redispatch else ()
        pick = bal.scheduler.pick(bal.loop.time(), self.peer, exclude)
        if pick.verdict is Verdict.OK:
            self.attempt(req, bal.take(pick))
        elif pick.verdict is Verdict.NONE:
            self.respond_error(req, 503, "no server is available" + req.last_error)
        else:  # every usable server is at maxconn: wait in the queue (off the hot path)
            self.task = bal.loop.create_task(self._queued(req))

    async def _queued(self, req: Request) -> None:
        rt = await self.bal.choose(self.peer, req.tried if self.bal.config.redispatch else ())
        if self.closing:
            if rt is not None:
                self.bal.release(rt)
        elif rt is None:
            busy = any(s.usable for s in self.bal.scheduler.servers)
            self.respond_error(req, 503, ("all servers are busy" if busy
                                          else "no server is available") + req.last_error)
        else:
            self.attempt(req, rt)

    def attempt(self, req: Request, rt: ServerRuntime) -> None:
        rt.stats.requests += 1
        req.server = rt.name
        if req.idempotent:
            pool = rt.pool
            while pool:
                conn = pool.pop()
                if not conn.closed and conn.transport is not None:
                    Exchange(self.bal, self, req, rt, conn, reused=True).start()
                    return
        self.task = self.bal.loop.create_task(self._connect(req, rt))

    async def _connect(self, req: Request, rt: ServerRuntime) -> None:
        bal = self.bal
        try:
            async with asyncio.timeout(bal.config.timeouts.connect):
                _, conn = await bal.loop.create_connection(
                    lambda: BackendConn(bal, rt), rt.server.host, rt.server.port)
        except TimeoutError:
            self.attempt_failed(req, rt, None, AttemptFailed("connect timeout", retryable=True))
            return
        except OSError as e:
            reason = ("connection refused" if isinstance(e, ConnectionRefusedError)
                      else e.strerror or type(e).__name__)
            self.attempt_failed(req, rt, None, AttemptFailed(reason, retryable=True))
            return
        if self.closing:
            conn.close()
            bal.release(rt)
            return
        Exchange(bal, self, req, rt, conn, reused=False).start()

    def exchange_done(self, ex: Exchange) -> None:
        bal = self.bal
        rt = ex.rt
        status = ex.status
        cls = CLASSES.get(status // 100, "other")
        rt.stats.responses[cls] += 1
        bal.frontend.responses[cls] += 1
        bal.observe(rt, status not in RETRYABLE_STATUS_ERRORS, "")
        release_conn(bal, rt, ex.conn)
        bal.release(rt)
        if not ex.client_keep_alive:
            ex.req.keep_alive = False
        self.request_done(ex.req, status)

    def attempt_failed(self, req: Request, rt: ServerRuntime, ex: Exchange | None,
                       err: AttemptFailed) -> None:
        bal = self.bal
        if ex is None:
            rt.stats.connect_errors += 1
        elif err.passive:
            rt.stats.response_errors += 1
        if ex is not None:
            ex.conn.close()
        bal.release(rt)
        if err.passive:
            bal.observe(rt, False, err.reason)
        if self.closing:
            return
        retry = err.retryable and req.attempts < bal.config.retries
        bal.log.info("attempt_failed", server=rt.name, reason=err.reason, retry=retry,
                     client=self.peer)
        if retry:
            req.attempts += 1
            rt.stats.retries += 1
            req.tried.append(rt.name)
            req.last_error = f" (last error: server {rt.name}: {err.reason})"
            self.dispatch(req)
        elif ex is not None and ex.started:
            self.close()  # the response is cut short: the client must see that
            self.request_done(req, -1)
        elif ex is not None:
            self.respond_error(req, err.status, f"server {rt.name}: {err.reason}")
        else:
            self.respond_error(req, 503, "no server is available (last error: "
                               f"server {rt.name}: {err.reason})")

    def respond_error(self, req: Request, status: int, reason: str) -> None:
        fe = self.bal.frontend
        fe.generated[status] += 1
        fe.responses[CLASSES.get(status // 100, "other")] += 1
        keep = req.keep_alive and req.body_done and not self.bal.draining
        self.write(http.error_response(status, reason, keep_alive=keep))
        if not keep:
            req.keep_alive = False
        self.request_done(req, status)

    def request_done(self, req: Request, status: int) -> None:
        bal = self.bal
        if bal.config.access_log:
            bal.log.info("request", client=self.peer,
                         method=req.method.decode(errors="replace"),
                         path=req.url.decode(errors="replace")[:200], status=status,
                         server=req.server, retries=req.attempts,
                         ms=round((time.monotonic() - req.started) * 1000, 1))
        if self.queue and self.queue[0] is req:
            self.queue.popleft()
        self.active = None
        if self.paused and len(self.queue) <= MAX_PIPELINE // 2:
            self.resume_reading()
        if self.closing:
            return
        if not req.keep_alive or bal.draining:
            self.close()
        elif self.queue:
            self.next_request()
        elif self.closing_requested:
            self.close()
        elif self.req is None:
            self.set_deadline(bal.config.timeouts.client)

    def closing_after_queue(self) -> None:
        self.closing_requested = True
        if not self.queue and self.active is None:
            self.close()

    # --- helpers ------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.corked or self.hold:
            self.out.append(data)
        elif self.transport is not None and not self.closing:
            self.transport.write(data)

    def uncork(self) -> None:
        self.corked = False
        if self.out and not self.hold:
            data = b"".join(self.out)
            self.out = []
            if self.transport is not None and not self.closing:
                self.transport.write(data)

    def set_deadline(self, seconds: float) -> None:
        self.deadline = self.bal.loop.time() + seconds

    def on_timeout(self, now: float) -> None:
        self.deadline = float("inf")
        if self.lingering:
            self.lingering = False
            if self.transport is not None:
                self.transport.close()
        elif self.in_head:
            self.reject(408, "request not received in time")
        elif self.active is None and self.req is None:
            self.close()  # idle keep-alive connection

    def reject(self, status: int, reason: str, quiet: bool = False) -> None:
        fe = self.bal.frontend
        fe.bad_requests += status < 500
        fe.generated[status] += 1
        fe.responses[CLASSES.get(status // 100, "other")] += 1
        if not quiet:
            self.bal.log.info("bad_request", client=self.peer, status=status, reason=reason)
        self.write(http.error_response(status, reason))
        self.linger()

    def linger(self) -> None:
        """Close after an answer given before the request had all arrived (a limit hit,
        garbage), as nginx's lingering close: the answer, then FIN; the client's bytes
        still on their way are read and dropped until it closes too or LINGER passes.
        Closing at once would answer those bytes with a RST, and a RST makes the
        client's kernel drop the answer it has not read yet."""
        transport = self.transport
        if transport is None or self.closing or not transport.can_write_eof():
            self.close()
            return
        self.resume_reading()  # (while not yet closing: the leftovers must be read)
        self._last_output()
        self.lingering = True
        transport.write_eof()
        self.deadline = self.bal.loop.time() + LINGER

    def pause_reading(self) -> None:
        if self.transport is not None and not self.paused:
            self.transport.pause_reading()
        self.paused += 1

    def resume_reading(self) -> None:
        if self.paused:
            self.paused = 0
            if self.transport is not None and not self.closing:
                self.transport.resume_reading()

    def _last_output(self) -> None:
        """What is held back goes out; from now on nothing is parsed or written."""
        self.hold = False
        self.uncork()
        self.closing = True

    def close(self) -> None:
        if self.closing:
            return
        self._last_output()
        self.deadline = float("inf")
        if self.transport is not None:
            self.transport.close()


CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
LINGER = 2.0  # s: at most this long reading a rejected client's leftovers (nginx: 5)
REASON_BYTES = {code: text.encode() for code, text in http.REASONS.items()}


def release_conn(bal: Balancer, rt: ServerRuntime, conn: BackendConn) -> None:
    """Back to the pool if it can carry another request, else closed."""
    if (conn.closed or not conn.keep_alive or bal.draining
            or len(rt.pool) >= bal.config.pool_size or not rt.server.up
            or bal.runtimes.get(rt.name) is not rt):
        conn.close()
    else:
        rt.pool.append(conn)


def factory(bal: Balancer) -> Any:
    return lambda: ClientConn(bal)
