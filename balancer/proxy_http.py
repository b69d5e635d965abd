"""HTTP mode: an HTTP/1.1 reverse proxy with per-request balancing.

Client side (``ClientConn``): httptools parses requests (pipelined ones are
queued and served in order); ``http.request`` makes each one's framing decision
(ambiguous requests are refused: 400/405/501/505) and limits give 414/431/408.
Each request is dispatched by ``ClientConn.dispatch``:

1. the balancer chooses a server (queueing while all are at maxconn;
   503 with a clear body when none is usable)
2. an idle pooled keep-alive connection to it is reused for idempotent
   requests; other requests get a new connection, so a non-idempotent request
   is never lost to the keep-alive race
3. a new request head is written from the decision (``http.request_head``: one
   Host, our framing, X-Forwarded-*) and the body streamed (chunked bodies
   re-chunked); up to 64 KiB of body is kept for a retry
4. the response is streamed back as it arrives (``Exchange``), its framing
   decided by ``http.response`` (502 when it is ambiguous)

Every byte is hostile, so:

- A server connection goes back to the pool only when its response was complete,
  the whole request had been sent, and nothing followed the response.
- Memory per connection is bounded: body bytes that no exchange is sending yet are
  capped at ``BODY_BUFFER`` (then the client is not read); once the client's request
  is answered, what it still sends is read and dropped (lingering close).
- Timeouts have owners. The server's (``timeouts.server``) runs once the request has
  been sent, and only it (with connect errors and bad responses) counts against a
  server's health; a client that is slow to send its body gets 408, one that does not
  read is cut (``timeouts.client``), and neither is held against the server.

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

from balancer import http, retry
from balancer.retry import AttemptFailed, Step
from balancer.runtime import Balancer, ServerRuntime
from balancer.scheduler import Verdict
from daemonkit.check import out_of_fds

BODY_BUFFER = 64 * 1024  # body bytes held while no exchange sends them: then stop reading
MAX_PIPELINE = 32  # requests queued on a connection before it is not read
MAX_QUEUED = 4 * MAX_PIPELINE  # ... and what one read may add: beyond, 400
LINGER = 2.0  # s: at most this long reading a rejected client's leftovers (nginx: 5)
RETRYABLE_STATUS_ERRORS = frozenset({502, 503, 504})
# why a client is not read (several at once; reading resumes when none is left)
PIPELINE, BODY, SERVER_FULL, BROKEN = 1, 2, 4, 8


class Request:
    __slots__ = ("attempts", "body_done", "body_size", "head", "head_size",
                 "headers", "keep_alive", "kept", "last_error", "pending", "pending_size",
                 "replayable", "server", "sink", "started", "tried", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: http.Headers = []
        self.head = EMPTY_HEAD
        self.head_size = 0
        self.keep_alive = True
        self.pending: list[bytes] = []  # body received while no exchange was sending it
        self.pending_size = 0
        self.kept: list[bytes] = []  # the whole body, while it is small enough to replay
        self.body_size = 0
        self.body_done = False
        self.replayable = True
        self.sink: Exchange | None = None  # the exchange streaming this body now
        self.started = time.monotonic()
        self.tried: list[str] = []  # servers whose attempt failed
        self.attempts = 0
        self.last_error = ""
        self.server = "-"

    @property
    def method(self) -> bytes:
        return self.head.method

    @property
    def chunked(self) -> bool:
        return self.head.framing.chunked

    @property
    def idempotent(self) -> bool:
        return self.head.method in http.IDEMPOTENT

    def on_body(self, data: bytes) -> None:
        self.body_size += len(data)
        if self.replayable:
            self.kept.append(data)
            if not retry.kept(self.body_size):
                self.replayable = False
                self.kept = []
        if self.sink is not None:
            self.sink.send_body(data)
        else:
            self.pending.append(data)
            self.pending_size += len(data)

    def take_body(self) -> list[bytes]:
        """What a new attempt must send first: what no attempt has sent yet."""
        parts = self.pending
        self.pending = []
        self.pending_size = 0
        return parts

    def rewind(self) -> None:
        """Before a retry (only while ``replayable``): the next attempt sends it all. What
        arrives until it starts joins ``pending``, which stays bounded (BODY_BUFFER)."""
        self.pending = list(self.kept)
        self.pending_size = sum(map(len, self.pending))

    def on_body_done(self) -> None:
        self.body_done = True
        if self.sink is not None:
            self.sink.end_body()


EMPTY_HEAD = http.RequestHead(b"", b"", None, False, http.Framing())


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
        self.paused = 0  # the reasons not to read (PIPELINE, BODY, ...), or 0
        self.exchange: Exchange | None = None
        self.error: tuple[int, str] | None = None  # a refusal from inside a parser callback
        self.broken: tuple[int, str] | None = None  # nothing more is parsed; answer at the end
        self.closing_requested = False  # the client half-closed: close once answered
        self.lingering = False  # answered and half-closed: reading what is left (reject)
        self.corked = False
        self.hold = False  # keep a response head back until its body arrives
        self.out: list[bytes] = []
        self.body_of: Request | None = None  # an Upgrade request whose body comes next
        self.priming = False  # feeding a new parser the framing of body_of
        self.not_reading = False  # our writes to the client are paused (it does not read)
        self.refused = False  # turned away at once (over maxconn)

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
        if fe.current > self.bal.maxconn:
            self.bal.over_maxconn()
            self.refused = True
            self.reject(503, "too many connections", quiet=True)
            return
        self.set_deadline(self.bal.config.timeouts.client_header)

    def data_received(self, data: bytes) -> None:
        if self.refused and self.lingering and self.transport is not None:
            # turned away (maxconn): its request is read, nothing more is coming; its
            # descriptor is freed now, not in LINGER (the kernel still delivers our FIN)
            self.lingering = False
            self.transport.close()
        # (lingering, or broken: read and dropped)
        while data and not self.closing and not self.broken:
            data = self.feed(data)

    def feed(self, data: bytes) -> bytes:
        """Parse ``data``; returns what follows an Upgrade request, for a new parser."""
        self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self.new_parser()
            return data[int(e.args[0]):]
        except httptools.HttpParserError as e:
            # (llhttp refuses versions other than 0.9, 1.x and 2.0 itself)
            status = 505 if "HTTP version" in str(e) else 400
            self.client_error(*(self.error or (status, f"malformed request: {e}")))
            return b""
        if self.head_bytes > self.bal.config.max_header_size:
            # a head, or trailers or chunk extensions, that do not end: httptools keeps
            # a field in memory until it ends
            self.client_error(431 if self.in_head else 400,
                              "request header section too large" if self.in_head
                              else "chunk framing or trailer section too large")
        elif self.req is not None and not self.in_head and self.req.sink is None \
                and self.req.pending_size > BODY_BUFFER:
            self.pause(BODY)
        return b""

    def new_parser(self) -> None:
        """httptools stops at an Upgrade request (the rest would be another protocol).
        We never switch: the request is served as a plain one, and parsing goes on with
        a new parser, primed with a head of the same framing when a body follows."""
        self.parser = httptools.HttpRequestParser(self)
        req = self.body_of
        if req is not None:
            f = req.head.framing
            self.priming = True  # (the primed head's callbacks are ignored)
            try:
                self.parser.feed_data(b"PUT / HTTP/1.1\r\nHost: x\r\n" + (
                    b"Transfer-Encoding: chunked" if f.chunked
                    else b"Content-Length: %d" % (f.length or 0)) + b"\r\n\r\n")
            finally:
                self.priming = False

    def eof_received(self) -> bool:
        # The client finished sending: answer what was asked, then close.
        if self.lingering:
            self.lingering = False
            return False  # (the transport closes: nothing left unread, no RST)
        if self.req is not None and not self.closing and not self.broken:
            self.client_error(400, "the client closed in the middle of a request")
            return not self.closing
        self.closing_after_queue()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.bal.frontend.current -= 1
        self.bal.clients.discard(self)
        self.abandon_active()

    def pause_writing(self) -> None:
        self.not_reading = True
        if self.exchange is not None:
            self.exchange.client_pauses(True)

    def resume_writing(self) -> None:
        self.not_reading = False
        if self.exchange is not None:
            self.exchange.client_pauses(False)

    # --- httptools callbacks --------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.priming:
            return
        self.req = Request()
        self.in_head = True
        self.set_deadline(self.bal.config.timeouts.client_header)

    def on_url(self, url: bytes) -> None:
        req = self.req
        if req is None or self.priming:
            return
        req.url += url
        if len(req.url) > self.bal.config.max_url_size:
            self.error = (414, "request target too long")
            raise httptools.HttpParserError(self.error[1])

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self.req
        if req is None or self.priming or not self.in_head:
            return  # (after the body: trailer fields, dropped)
        req.head_size += len(name) + len(value) + 4
        req.headers.append((name, value))
        if req.head_size + len(req.url) > self.bal.config.max_header_size:
            self.error = (431, "request header section too large")
            raise httptools.HttpParserError(self.error[1])

    def on_headers_complete(self) -> None:
        if self.priming:
            self.req = self.body_of
            return
        req = self.req
        assert req is not None
        self.in_head = False
        self.head_bytes = 0
        p = self.parser
        try:
            req.head = http.request(p.get_method(), req.url, p.get_http_version(),
                                    req.headers)
        except http.Refused as r:
            self.error = (r.status, r.reason)
            raise httptools.HttpParserError(r.reason) from None
        req.headers = []
        req.keep_alive = p.should_keep_alive()
        if req.head.has_body:
            self.set_deadline(self.bal.config.timeouts.client)  # body inactivity
            if p.should_upgrade():
                self.body_of = req
        else:
            req.body_done = True
            self.deadline = float("inf")
        if len(self.queue) >= MAX_QUEUED:  # (one read can hold thousands of small requests)
            self.error = (400, "too many pipelined requests")
            raise httptools.HttpParserError(self.error[1])
        self.queue.append(req)
        self.bal.frontend.requests += 1
        if len(self.queue) > MAX_PIPELINE:
            self.pause(PIPELINE)
        if self.active is None:
            self.next_request()

    def on_body(self, body: bytes) -> None:
        req = self.req
        self.head_bytes = 0
        if req is not None:
            req.on_body(body)
            if self.deadline != float("inf"):
                self.deadline = self.bal.loop.time() + self.bal.config.timeouts.client

    def on_message_complete(self) -> None:
        req = self.req
        if req is None:
            return
        if req is self.body_of:
            if not self.in_head and self.parser.should_upgrade():
                return  # httptools ends an Upgrade request at its head: the body follows
            self.body_of = None
        self.req = None
        if not req.body_done:
            self.deadline = float("inf")
            req.on_body_done()

    # --- serving -----------------------------------------------------------------
    def next_request(self) -> None:
        if self.closing or not self.queue:
            return
        self.active = self.queue[0]
        self.dispatch(self.active)

    def dispatch(self, req: Request) -> None:
        """Choose a server for ``req`` and start an attempt on it."""
        bal = self.bal
        exclude = retry.excluded(req.tried, bal.config.redispatch)
        pick = bal.scheduler.pick(bal.loop.time(), self.peer, exclude)
        if pick.verdict is Verdict.OK:
            self.attempt(req, bal.take(pick))
        elif pick.verdict is Verdict.NONE:
            self.respond_error(req, 503, "no server is available" + req.last_error)
        else:  # every usable server is at maxconn: wait in the queue (off the hot path)
            self.task = bal.loop.create_task(self._queued(req))

    async def _queued(self, req: Request) -> None:
        rt = await self.bal.choose(self.peer, retry.excluded(req.tried, self.bal.config.redispatch))
        if self.closing or self.active is not req:
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
        except asyncio.CancelledError:
            bal.release(rt)  # (the client went away or broke its request)
            raise
        except TimeoutError:
            self.attempt_failed(req, rt, None, AttemptFailed("connect timeout", retryable=True))
            return
        except OSError as e:
            if out_of_fds(e):  # our shortage, not the server's fault
                bal.fd_exhausted("connect", rt.name)
                self.attempt_failed(req, rt, None, AttemptFailed(
                    e.strerror or "no file descriptor left", retryable=False, passive=False,
                    status=503))
                return
            reason = ("connection refused" if isinstance(e, ConnectionRefusedError)
                      else e.strerror or type(e).__name__)
            self.attempt_failed(req, rt, None, AttemptFailed(reason, retryable=True))
            return
        if self.closing or self.active is not req:
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
        conn = ex.conn
        if not ex.req.body_done:
            conn.close()  # the server did not get the whole request: never reuse
        elif conn.feeding:
            conn.reusable = True  # pooled after this read, if nothing followed the response
        else:
            release_conn(bal, rt, conn)
        bal.release(rt)
        if not ex.client_keep_alive:
            ex.req.keep_alive = False
        self.request_done(ex.req, status)

    def attempt_failed(self, req: Request, rt: ServerRuntime, ex: Exchange | None,
                       err: AttemptFailed) -> None:
        bal = self.bal
        if err.passive:
            if ex is None:
                rt.stats.connect_errors += 1
            else:
                rt.stats.response_errors += 1
        if ex is not None:
            ex.conn.close()
        bal.release(rt)
        if err.passive:
            bal.observe(rt, False, err.reason)
        if self.closing:
            return
        step, status = retry.next_step(err, req.attempts, bal.config.retries,
                                       connected=ex is not None,
                                       started=ex is not None and ex.started)
        bal.log.info("attempt_failed", server=rt.name, reason=err.reason,
                     retry=step is Step.RETRY, client=self.peer)
        if step is Step.RETRY:
            req.attempts += 1
            req.rewind()
            rt.stats.retries += 1
            req.tried.append(rt.name)
            req.last_error = f" (last error: server {rt.name}: {err.reason})"
            self.dispatch(req)
        elif step is Step.CUT:
            self.close()  # the response is cut short: the client must see that
            self.request_done(req, -1)
        elif ex is not None:
            self.respond_error(req, status, f"server {rt.name}: {err.reason}")
        else:
            self.respond_error(req, status, "no server is available (last error: "
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
        if len(self.queue) <= MAX_PIPELINE // 2:
            self.resume(PIPELINE)
        if self.closing:
            return
        if not req.body_done:
            self.linger()  # the rest of its body is read and dropped, then we close
        elif not req.keep_alive or bal.draining:
            self.close()
        elif self.queue:
            self.next_request()
        elif self.broken:
            self.reject(*self.broken)
        elif self.closing_requested:
            self.close()
        elif self.req is None:
            self.set_deadline(bal.config.timeouts.client)

    def closing_after_queue(self) -> None:
        self.closing_requested = True
        if not self.queue and self.active is None:
            self.close()

    def client_error(self, status: int, reason: str) -> None:
        """The client's bytes cannot be used from here on: nothing more is parsed.
        Requests it sent whole are answered first, in order; then ``status``, then
        the connection closes. A request whose body was cut short is dropped: its
        exchange stops (the server is not blamed) and it gets ``status``, or the
        connection is cut if its response had begun."""
        self.broken = (status, reason)
        self.error = None
        self.pause(BROKEN)
        req = self.req
        self.req = None
        self.body_of = None
        if req is not None and req in self.queue:  # its head was whole, its body is not
            if req is self.active:
                started = self.abandon_active()
                self.queue.popleft()
                self.active = None
                if started:
                    self.log_client("bad_request", reason, status)
                    self.close()
                    return
            else:
                self.queue.remove(req)
        if self.active is None and not self.queue:
            self.reject(status, reason)

    def abandon_active(self) -> bool:
        """Stop serving the active request without blaming its server; True if the
        client had begun to receive its response."""
        ex = self.exchange
        if ex is not None and not ex.finished:
            started = ex.started
            ex.abandon()
            return started
        if self.task is not None and not self.task.done():
            self.task.cancel()
        return False

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
        if self.closing:  # lingering is over, or a client does not read our last bytes
            self.lingering = False
            if self.transport is not None and not self.transport.get_write_buffer_size():
                self.transport.close()  # (all was sent: no RST to destroy the answer)
            else:
                self.abort()
        elif self.broken:
            pass  # waiting for the requests before the broken one
        elif self.req is not None and self.paused:
            self.set_deadline(self.bal.config.timeouts.client)  # we are not reading it
        elif self.in_head:
            self.client_error(408, "request not received in time")
        elif self.req is not None:  # inside a body
            self.client_error(408, "request body not received in time")
        elif self.active is None and not self.queue:
            self.close()  # idle keep-alive connection

    def log_client(self, event: str, reason: str, status: int = 0) -> None:
        self.bal.log.info(event, client=self.peer, status=status, reason=reason)

    def reject(self, status: int, reason: str, quiet: bool = False) -> None:
        fe = self.bal.frontend
        fe.bad_requests += status < 500
        fe.generated[status] += 1
        fe.responses[CLASSES.get(status // 100, "other")] += 1
        if not quiet:
            self.log_client("bad_request", reason, status)
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
        self.paused = 0  # (while not yet closing: the leftovers must be read)
        transport.resume_reading()
        self._last_output()
        self.lingering = True
        transport.write_eof()
        self.deadline = self.bal.loop.time() + LINGER

    def pause(self, why: int) -> None:
        if not self.paused and self.transport is not None and not self.closing:
            self.transport.pause_reading()
        self.paused |= why

    def resume(self, why: int) -> None:
        if self.paused & why:
            self.paused &= ~why
            if not self.paused and self.transport is not None and not self.closing:
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
            if self.transport.get_write_buffer_size():  # a client that does not read is
                self.set_deadline(self.bal.config.timeouts.client)  # not waited for forever

    def abort(self) -> None:
        """Close at once, whatever is left to write (a RST)."""
        self.closing = True
        self.lingering = False
        self.deadline = float("inf")
        if self.transport is not None:
            self.transport.abort()


CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
REASON_BYTES = {code: text.encode() for code, text in http.REASONS.items()}


def release_conn(bal: Balancer, rt: ServerRuntime, conn: BackendConn) -> None:
    """Back to the pool if it can carry another request, else closed."""
    if (conn.closed or not conn.keep_alive or bal.draining or conn.transport is None
            or conn.transport.get_write_buffer_size()  # the request is not all sent
            or len(rt.pool) >= bal.config.pool_size or not rt.server.up
            or bal.runtimes.get(rt.name) is not rt):
        conn.close()
    else:
        rt.pool.append(conn)


def factory(bal: Balancer) -> Any:
    return lambda: ClientConn(bal)
