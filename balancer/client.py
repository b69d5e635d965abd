"""HTTP mode: one client connection, driven from its first byte to its close.

:class:`ClientConn` is the protocol object of a client connection. Its requests are
read by its :class:`~balancer.request.RequestReader` part and served in order, each
dispatched by :meth:`ClientConn.dispatch`:

1. the balancer chooses a server (queueing while all are at maxconn;
   503 with a clear body when none is usable)
2. an idle pooled keep-alive connection to it is reused for idempotent
   requests; other requests get a new connection, so a non-idempotent request
   is never lost to the keep-alive race
3. an exchange (``upstream.Exchange``) sends the request and streams the response
   back; up to 64 KiB of body is kept for a retry

Every byte is hostile, so:

- Memory per connection is bounded: body bytes that no exchange is sending yet are
  capped at ``BODY_BUFFER`` (then the client is not read); once the client's request
  is answered, what it still sends is read and dropped (lingering close).
- Timeouts have owners. A client that is slow to send its head or body gets 408, one
  that does not read is cut (``timeouts.client``), and neither is held against the
  server.

Retries (``retry`` decides): a connect error, or a failure before any response byte of
an idempotent request whose body was kept, is retried (``retries`` times, on another
server with ``redispatch``); the client never sees it. When a server goes DOWN, its
requests that have no response yet are moved the same way.

The hot path (a pooled connection is free) runs entirely in protocol
callbacks: no task, future or timer per request. Timeouts are deadlines checked by
the balancer's sweeper.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any, cast

import httptools

from balancer import http, retry
from balancer.request import BROKEN, MAX_PIPELINE, PIPELINE, Request, RequestReader
from balancer.retry import AttemptFailed, Step
from balancer.runtime import Balancer, ServerRuntime
from balancer.scheduler import Verdict
from balancer.upstream import Exchange, connect, pooled, release_conn

LINGER = 2.0  # s: at most this long reading a rejected client's leftovers (nginx: 5)
RETRYABLE_STATUS_ERRORS = frozenset({502, 503, 504})
CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


class ClientConn(RequestReader, asyncio.Protocol):
    """One client connection in HTTP mode: serves its requests in order, answers its
    errors, runs its timeouts and closes it."""

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
            conn = pooled(rt)
            if conn is not None:
                Exchange(self.bal, self, req, rt, conn, reused=True).start()
                return
        self.task = self.bal.loop.create_task(self._connect(req, rt))

    async def _connect(self, req: Request, rt: ServerRuntime) -> None:
        bal = self.bal
        try:
            conn = await connect(bal, rt)
        except asyncio.CancelledError:
            bal.release(rt)  # (the client went away or broke its request)
            raise
        if isinstance(conn, AttemptFailed):
            self.attempt_failed(req, rt, None, conn)
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


def factory(bal: Balancer) -> Any:
    return lambda: ClientConn(bal)
