"""HTTP mode: an HTTP/1.1 reverse proxy with per-request balancing.

Client side (``ClientConn``): httptools parses requests (pipelined ones are
queued and served in order); limits give 414/431/400/408 and never crash the
worker. Each request is served by :func:`serve`:

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
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any, cast

import httptools

from balancer import http
from balancer.core import Balancer, ServerRuntime

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
    __slots__ = ("attempted", "body_done", "body_size", "chunked", "content_length", "head_size",
                 "headers", "http10", "keep_alive", "kept", "method", "pending", "replayable",
                 "sink", "started", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: http.Headers = []
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
        self.rt.stats.bytes_in += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            ex.fail(AttemptFailed("upgrade not supported", retryable=False))
            self.close()
        except httptools.HttpParserError as e:
            ex.fail(AttemptFailed(f"invalid response: {e}", retryable=False))
            self.close()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self in self.rt.pool:
            self.rt.pool.remove(self)
        if self.exchange is not None:
            self.exchange.backend_lost(exc)

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

    def __init__(self, bal: Balancer, client: ClientConn, req: Request, rt: ServerRuntime,
                 conn: BackendConn, reused: bool) -> None:
        self.bal = bal
        self.client = client
        self.req = req
        self.rt = rt
        self.conn = conn
        self.reused = reused
        self.done: asyncio.Future[None] = bal.loop.create_future()
        self.got_bytes = False
        self.started = False  # response head written to the client
        self.finished = False
        self.status = 0
        self.resp_headers: http.Headers = []
        self.rechunk = False
        self.until_close = False
        self.client_keep_alive = True
        self.sent_bytes = 0
        self.timer: asyncio.TimerHandle | None = None

    # --- request ---------------------------------------------------------------
    def start(self) -> None:
        req = self.req
        conn = self.conn
        assert conn.transport is not None
        conn.exchange = self
        conn.uses += 1
        self.rt.inflight.add(self)
        host = f"{self.rt.server.host}:{self.rt.server.port}".encode()
        head = http.request_head(req.method, req.url, req.headers, client_ip=self.client.peer,
                                 proto=b"http", host_fallback=host,
                                 chunked=req.chunked)
        conn.transport.write(head)
        self.sent_bytes += len(head)
        for part in req.take_body():
            self.send_body(part)
        if req.body_done:
            self.end_body()
        else:
            req.sink = self
        self.arm(self.bal.config.timeouts.server)

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

    # --- timers ----------------------------------------------------------------
    def arm(self, seconds: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.bal.loop.call_later(seconds, self.on_timeout)

    def on_timeout(self) -> None:
        if self.started:
            self.fail(AttemptFailed("server timeout during response", retryable=False))
        else:
            self.fail(AttemptFailed("server timeout", retryable=False, status=504))
        self.conn.close()

    # --- response --------------------------------------------------------------
    def on_response_head(self, status: int) -> None:
        if 100 <= status < 200:
            if status != 101 and not self.req.http10:
                self.client.write(f"HTTP/1.1 {status} {http.REASONS.get(status, '')}\r\n\r\n"
                                  .encode())
            self.resp_headers = []
            self.status = -status  # interim: its message_complete is not the end
            return
        self.status = status
        head = http.analyse(self.resp_headers)
        no_body = self.req.method == b"HEAD" or status in (204, 304)
        self.until_close = (not no_body and head.content_length is None and not head.chunked)
        self.client_keep_alive = (self.req.keep_alive and not self.bal.draining
                                  and not self.client.closing
                                  and not (self.until_close and self.req.http10))
        self.rechunk = not no_body and (head.chunked or self.until_close) and not self.req.http10
        headers = self.resp_headers
        if head.chunked or self.until_close:
            headers = [(n, v) for n, v in headers if n.lower() != b"content-length"]
        self.client.write(http.response_head(
            status, http.REASONS.get(status, "Unknown").encode(), headers,
            keep_alive=self.client_keep_alive, client_http10=self.req.http10,
            chunked=self.rechunk))
        self.started = True
        self.arm(self.bal.config.timeouts.server)
        if self.req.method == b"HEAD":
            # httptools cannot be told that a HEAD response has no body: end here
            # and do not reuse this connection.
            self.conn.keep_alive = False
            self.finish()

    def on_response_body(self, data: bytes) -> None:
        if self.finished:
            return
        self.client.write(http.chunk(data) if self.rechunk else data)
        self.arm(self.bal.config.timeouts.server)

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
        if self.timer is not None:
            self.timer.cancel()
        self.rt.inflight.discard(self)
        self.conn.exchange = None
        if self.req.sink is self:
            self.req.sink = None
        self.rt.stats.bytes_out += self.sent_bytes

    def finish(self) -> None:
        if self.finished:
            return
        self._end()
        if not self.done.done():
            self.done.set_result(None)

    def fail(self, err: AttemptFailed) -> None:
        if self.finished:
            return
        self._end()
        self.conn.keep_alive = False
        if not self.done.done():
            self.done.set_exception(err)


class ClientConn(asyncio.Protocol):
    """One client connection in HTTP mode."""

    def __init__(self, bal: Balancer) -> None:
        self.bal = bal
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = "-"
        self.queue: collections.deque[Request] = collections.deque()
        self.req: Request | None = None  # being parsed
        self.in_head = False
        self.head_bytes = 0
        self.closing = False
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.paused = 0
        self.exchange: Exchange | None = None
        self.error: tuple[int, str] | None = None  # a limit hit inside a parser callback
        self.closing_requested = False  # the client half-closed: close once answered

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
        self.arm(self.bal.config.timeouts.client_header)

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
        self.closing_after_queue()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.bal.frontend.current -= 1
        self.bal.clients.discard(self)
        if self.timer is not None:
            self.timer.cancel()
        if self.exchange is not None and not self.exchange.finished:
            self.exchange.fail(AttemptFailed("client went away", retryable=False, passive=False))
            self.exchange.conn.close()
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
        self.arm(self.bal.config.timeouts.client_header)

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
        if self.timer is not None:
            self.timer.cancel()
        p = self.parser
        req.method = p.get_method()
        req.http10 = p.get_http_version() == "1.0"
        req.keep_alive = p.should_keep_alive()
        head = http.analyse(req.headers)
        req.chunked = head.chunked
        req.content_length = head.content_length
        if not req.has_body:
            req.body_done = True
        self.queue.append(req)
        self.bal.frontend.requests += 1
        if len(self.queue) > MAX_PIPELINE:
            self.pause_reading()
        if self.task is None or self.task.done():
            self.task = self.bal.loop.create_task(self.process())

    def on_body(self, body: bytes) -> None:
        if self.req is not None:
            self.req.on_body(body)

    def on_message_complete(self) -> None:
        if self.req is not None and not self.req.body_done:
            self.req.on_body_done()
        self.req = None

    # --- serving ---------------------------------------------------------------------
    async def process(self) -> None:
        while self.queue and not self.closing:
            req = self.queue[0]
            await serve(self.bal, self, req)
            self.queue.popleft()
            if self.paused and len(self.queue) <= MAX_PIPELINE // 2:
                self.resume_reading()
            if not req.keep_alive or self.bal.draining:
                self.close()
                return
        if self.closing_requested and not self.queue:
            self.close()
            return
        if not self.closing:
            self.arm(self.bal.config.timeouts.client)

    def closing_after_queue(self) -> None:
        self.closing_requested = True
        if not self.queue and (self.task is None or self.task.done()):
            self.close()

    # --- helpers ------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closing:
            self.transport.write(data)

    def arm(self, seconds: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.bal.loop.call_later(seconds, self.on_timeout)

    def on_timeout(self) -> None:
        if self.in_head:
            self.reject(408, "request not received in time")
        elif not self.queue and self.req is None:
            self.close()  # idle keep-alive connection
        # while a request is being served, the server timeout applies

    def reject(self, status: int, reason: str) -> None:
        self.bal.frontend.bad_requests += status < 500
        self.bal.frontend.generated[status] += 1
        self.bal.frontend.responses[f"{status // 100}xx"] += 1
        self.bal.log.info("bad_request", client=self.peer, status=status, reason=reason)
        self.write(http.error_response(status, reason))
        self.close()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.paused:
            self.transport.pause_reading()
        self.paused += 1

    def resume_reading(self) -> None:
        if self.paused:
            self.paused = 0
            if self.transport is not None and not self.closing:
                self.transport.resume_reading()

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        if self.timer is not None:
            self.timer.cancel()
        if self.transport is not None:
            self.transport.close()


async def connect(bal: Balancer, rt: ServerRuntime, reuse: bool) -> tuple[BackendConn, bool]:
    """A connection to the server: a pooled one if allowed, else a new one."""
    if reuse:
        while rt.pool:
            conn = rt.pool.pop()
            if not conn.closed and conn.transport is not None:
                return conn, True
    try:
        async with asyncio.timeout(bal.config.timeouts.connect):
            _, proto = await bal.loop.create_connection(
                lambda: BackendConn(bal, rt), rt.server.host, rt.server.port)
    except TimeoutError:
        raise AttemptFailed("connect timeout", retryable=True) from None
    except ConnectionRefusedError:
        raise AttemptFailed("connection refused", retryable=True) from None
    except OSError as e:
        raise AttemptFailed(e.strerror or type(e).__name__, retryable=True) from None
    return proto, False


def release_conn(bal: Balancer, rt: ServerRuntime, conn: BackendConn) -> None:
    if (conn.closed or not conn.keep_alive or bal.draining
            or len(rt.pool) >= bal.config.pool_size or rt not in bal.runtimes.values()
            or not rt.server.up):
        conn.close()
    else:
        rt.pool.append(conn)


async def serve(bal: Balancer, client: ClientConn, req: Request) -> None:
    cfg = bal.config
    tried: list[str] = []
    attempts = 0
    status = 0
    server_name = "-"
    last_error = ""
    while True:
        rt = await bal.choose(client.peer, tried if cfg.redispatch else ())
        if rt is None:
            status = 503
            full = any(s.usable for s in bal.scheduler.servers)
            msg = "all servers are busy" if full else "no server is available"
            respond_error(bal, client, req, 503, msg + last_error)
            break
        server_name = rt.name
        rt.stats.requests += 1
        ex: Exchange | None = None
        try:
            conn, reused = await connect(bal, rt, reuse=req.idempotent)
            if client.closing:
                release_conn(bal, rt, conn)
                return
            ex = Exchange(bal, client, req, rt, conn, reused)
            client.exchange = ex
            ex.start()
            await ex.done
            status = ex.status
            rt.stats.responses[f"{status // 100}xx"] += 1
            bal.frontend.responses[f"{status // 100}xx"] += 1
            bal.observe(rt, status not in RETRYABLE_STATUS_ERRORS, f"http {status}")
            release_conn(bal, rt, conn)
            if not ex.client_keep_alive:
                req.keep_alive = False
            break
        except AttemptFailed as err:
            if ex is None:
                rt.stats.connect_errors += 1
            elif err.passive:
                rt.stats.response_errors += 1
            if err.passive:
                bal.observe(rt, False, err.reason)
            if ex is not None:
                ex.conn.close()
            can_retry = err.retryable and attempts < cfg.retries and not client.closing
            bal.log.info("attempt_failed", server=rt.name, reason=err.reason,
                         retry=can_retry, client=client.peer)
            if can_retry:
                attempts += 1
                rt.stats.retries += 1
                tried.append(rt.name)
                last_error = f" (last error: server {rt.name}: {err.reason})"
                continue
            if ex is not None and ex.started:
                client.close()  # the response is cut: the client must see it
                status = -1
            elif ex is not None:
                status = err.status
                respond_error(bal, client, req, status, f"server {rt.name}: {err.reason}")
            else:
                status = 503
                respond_error(bal, client, req, status, "no server is available (last error: "
                              f"server {rt.name}: {err.reason})")
            break
        finally:
            client.exchange = None
            bal.release(rt)
    if cfg.access_log:
        bal.log.info("request", client=client.peer, method=req.method.decode(errors="replace"),
                     path=req.url.decode(errors="replace")[:200], status=status,
                     server=server_name, retries=attempts,
                     ms=round((time.monotonic() - req.started) * 1000, 1))


def respond_error(bal: Balancer, client: ClientConn, req: Request, status: int,
                  reason: str) -> None:
    bal.frontend.generated[status] += 1
    bal.frontend.responses[f"{status // 100}xx"] += 1
    keep = req.keep_alive and req.body_done and not bal.draining
    client.write(http.error_response(status, reason, keep_alive=keep))
    if not keep:
        req.keep_alive = False


def factory(bal: Balancer) -> Any:
    return lambda: ClientConn(bal)
