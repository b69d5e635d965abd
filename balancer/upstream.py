"""The upstream side of HTTP mode: connections to a server and the exchanges on them.

A :class:`BackendConn` is a connection to one server (new, or an idle pooled keep-alive
one: :func:`pooled`, :func:`release_conn`); an :class:`Exchange` is one request on it:
it writes a new request head from the decision (``http.request_head``: one Host, our
framing, X-Forwarded-*), streams the body (chunked bodies re-chunked) and streams the
response back as it arrives, its framing decided by ``http.response`` (502 when it is
ambiguous).

Every byte is hostile, so a server connection goes back to the pool only when its
response was complete, the whole request had been sent, and nothing followed the
response. The server's timeout (``timeouts.server``) runs once the request has been
sent; only it, connect errors and bad responses count against a server's health.
Writes to the client are corked while a server's bytes are parsed, so a response head
and body leave in one system call.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, cast

import httptools

from balancer import http, retry
from balancer.request import BODY, SERVER_FULL, Request
from balancer.retry import AttemptFailed
from balancer.runtime import Balancer, ServerRuntime
from daemonkit.check import out_of_fds


class Client(Protocol):
    """What an exchange needs of the client connection it answers (``client.ClientConn``):
    its writes (corked while a server's bytes are parsed, a head held back until its body
    arrives) and flow control, and what it is told when the exchange ends."""

    peer: str  # the client's address, for the request head and the log
    exchange: Exchange | None  # the exchange writing to it now
    corked: bool
    hold: bool
    closing: bool
    not_reading: bool  # our writes to it are paused: it does not read

    def write(self, data: bytes) -> None: ...
    def uncork(self) -> None: ...
    def pause(self, why: int) -> None: ...
    def resume(self, why: int) -> None: ...
    def abort(self) -> None: ...
    def log_client(self, event: str, reason: str, status: int = 0) -> None: ...
    def exchange_done(self, ex: Exchange) -> None: ...
    def attempt_failed(self, req: Request, rt: ServerRuntime, ex: Exchange | None,
                       err: AttemptFailed) -> None: ...


REASON_BYTES = {code: text.encode() for code, text in http.REASONS.items()}


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
        self.feeding = False  # inside parser.feed_data
        self.reusable = False  # its response ended in this feed: pool it after, if clean
        self.in_head = False  # inside a response head
        self.head_bytes = 0  # its fields' size so far
        self.head_read = 0  # bytes read while a head was not complete

    # asyncio
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None:  # nobody asked: not a server we can trust with the next request
            self.close()
            return
        ex.got_bytes = True
        self.head_read += len(data)
        ex.rearm()
        self.rt.stats.bytes_in += len(data)
        client = ex.client
        client.corked = True  # everything this read produces leaves in one write
        self.feeding = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            ex.fail(AttemptFailed("server switched protocols unasked", retryable=False))
            self.close()
        except httptools.HttpParserError as e:
            if self.exchange is not None:
                reason = ex.refused or f"invalid response: {e}"
                self.exchange.fail(AttemptFailed(reason, retryable=False))
            self.close()
        finally:
            self.feeding = False
            client.uncork()
        if self.head_read > 2 * self.bal.config.max_header_size and self.exchange is not None:
            # a head, trailer or chunk line that does not end: httptools keeps a field in
            # memory until it ends
            self.exchange.fail(AttemptFailed("response framing too large", retryable=False))
            self.close()
        if self.reusable:
            self.reusable = False
            release_conn(self.bal, self.rt, self)

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
        ex = self.exchange
        if ex is not None:  # the server does not read: its fault if it lasts
            ex.server_full = True
            ex.client.pause(SERVER_FULL)
            ex.rearm()

    def resume_writing(self) -> None:
        ex = self.exchange
        if ex is not None:
            ex.server_full = False
            ex.client.resume(SERVER_FULL)
            ex.rearm()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self.exchange is None:  # bytes after the end of the response
            self.keep_alive = False
            raise httptools.HttpParserError("data after the response")
        self.in_head = True
        self.head_bytes = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        ex = self.exchange
        if ex is not None and self.in_head:  # (not trailers: dropped)
            ex.resp_headers.append((name, value))
            self.head_bytes += len(name) + len(value) + 4
            if self.head_bytes > self.bal.config.max_header_size:
                ex.refused = "response head too large"
                raise httptools.HttpParserError(ex.refused)

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.head_read = 0
        if self.exchange is not None:
            self.keep_alive = self.parser.should_keep_alive()
            p = self.parser
            self.exchange.on_response_head(p.get_status_code(), p.get_http_version())

    def on_body(self, body: bytes) -> None:
        self.head_read = 0
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
        "client_blocked",
        "client_keep_alive",
        "conn",
        "deadline",
        "finished",
        "got_bytes",
        "rechunk",
        "refused",
        "req",
        "resp_headers",
        "reused",
        "rt",
        "sent_bytes",
        "server_full",
        "started",
        "status",
        "until_close",
    )

    def __init__(self, bal: Balancer, client: Client, req: Request, rt: ServerRuntime,
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
        self.client_blocked = False  # the client does not read: its clock, not the server's
        self.server_full = False  # the server does not read what we send it
        self.refused = ""  # why the response was refused (its framing)
        self.sent_bytes = 0
        self.deadline = float("inf")
        self.rearm()

    def rearm(self) -> None:
        """Whose clock runs, from the state: the client's own timeout while it does not
        read; none here while the request is still arriving and the server takes it (the
        client's body timeout runs); else the server's, from now (each byte it sends, the
        end of the request, or its reading again restarts it)."""
        t = self.bal.config.timeouts
        if self.client_blocked:
            self.deadline = self.bal.loop.time() + t.client
        elif not self.req.body_done and not self.server_full:
            self.deadline = float("inf")
        else:
            self.deadline = self.bal.loop.time() + t.server

    # --- request ---------------------------------------------------------------
    def start(self) -> None:
        req = self.req
        conn = self.conn
        client = self.client
        assert conn.transport is not None
        conn.exchange = self
        conn.uses += 1
        self.rt.inflight.add(self)
        client.exchange = self
        srv = self.rt.server
        out = [http.request_head(req.head, client_ip=client.peer, proto=b"http",
                                 host_fallback=f"{srv.host}:{srv.port}".encode())]
        for part in req.take_body():
            if part:
                out.append(http.chunk(part) if req.chunked else part)
        client.resume(BODY)
        if client.not_reading:
            self.client_pauses(True)
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
        if self.finished or self.conn.transport is None:
            return
        if self.req.chunked:
            self.conn.transport.write(http.LAST_CHUNK)
            self.sent_bytes += len(http.LAST_CHUNK)
        self.rearm()

    def client_pauses(self, blocked: bool) -> None:
        """The client stopped (or resumed) reading what we write to it: so does the server
        connection, and the client's clock runs instead of the server's."""
        self.client_blocked = blocked
        if self.conn.transport is not None:
            if blocked:
                self.conn.transport.pause_reading()
            else:
                self.conn.transport.resume_reading()
        self.rearm()

    def on_timeout(self, now: float) -> None:
        if self.client_blocked:  # the client does not read: not the server's fault
            self.client.log_client("client_timeout", "the client did not read the response")
            self.abandon()
            self.client.abort()
        elif self.started:
            self.fail(AttemptFailed("server timeout during response", retryable=False))
        else:
            self.fail(AttemptFailed("server timeout", retryable=False, status=504))
        self.conn.close()

    # --- response --------------------------------------------------------------
    def on_response_head(self, status: int, version: str) -> None:
        req = self.req
        client = self.client
        try:
            resp = http.response(status, version, self.resp_headers, req.method)
        except http.Refused as r:
            self.refused = r.reason
            raise httptools.HttpParserError(r.reason) from None
        self.resp_headers = []
        if status < 200:
            if not req.head.http10:
                client.write(http.interim_head(status, resp.framing.fields))
            self.status = -status  # interim: its message_complete is not the end
            return
        self.status = status
        f = resp.framing
        self.until_close = resp.until_close
        delimited = resp.no_body or f.length is not None
        self.client_keep_alive = (req.keep_alive and req.body_done and not self.bal.draining
                                  and not client.closing
                                  and (delimited or not req.head.http10))
        self.rechunk = not resp.no_body and not delimited and not req.head.http10
        client.write(http.response_head(
            resp, REASON_BYTES.get(status) or b"Unknown", keep_alive=self.client_keep_alive,
            client_http10=req.head.http10, rechunk=self.rechunk))
        self.started = True
        if not resp.no_body and (f.chunked or f.length):
            # the body usually follows in the server's next segment: send the
            # head with it, one write instead of two
            client.hold = True
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
                                    passive=retry.servers_fault(self.reused, self.got_bytes)))

    def retryable(self) -> bool:
        req = self.req
        return retry.may_retry(req.idempotent, req.replayable, self.got_bytes, self.started)

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
        self.client.resume(SERVER_FULL)
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

    def abandon(self) -> None:
        """The client broke its side: stop without an answer and without blaming the
        server; its connection is closed (it may still expect the rest of the request)."""
        if not self.finished:
            self._end()
            self.conn.close()
            self.bal.release(self.rt)


def pooled(rt: ServerRuntime) -> BackendConn | None:
    """An idle keep-alive connection to ``rt``'s server, taken from its pool; None if
    there is none still open."""
    pool = rt.pool
    while pool:
        conn: BackendConn = pool.pop()
        if not conn.closed and conn.transport is not None:
            return conn
    return None


async def connect(bal: Balancer, rt: ServerRuntime) -> BackendConn | AttemptFailed:
    """A new connection to ``rt``'s server, or why there is none."""
    try:
        async with asyncio.timeout(bal.config.timeouts.connect):
            _, conn = await bal.loop.create_connection(
                lambda: BackendConn(bal, rt), rt.server.host, rt.server.port)
    except TimeoutError:
        return AttemptFailed("connect timeout", retryable=True)
    except OSError as e:
        if out_of_fds(e):  # our shortage, not the server's fault
            bal.fd_exhausted("connect", rt.name)
            return AttemptFailed(e.strerror or "no file descriptor left", retryable=False,
                                 passive=False, status=503)
        reason = ("connection refused" if isinstance(e, ConnectionRefusedError)
                  else e.strerror or type(e).__name__)
        return AttemptFailed(reason, retryable=True)
    return conn


def release_conn(bal: Balancer, rt: ServerRuntime, conn: BackendConn) -> None:
    """Back to the pool if it can carry another request, else closed."""
    if (conn.closed or not conn.keep_alive or bal.draining or conn.transport is None
            or conn.transport.get_write_buffer_size()  # the request is not all sent
            or len(rt.pool) >= bal.config.pool_size or not rt.server.up
            or bal.runtimes.get(rt.name) is not rt):
        conn.close()
    else:
        rt.pool.append(conn)

