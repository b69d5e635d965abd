"""Reading a client's requests in HTTP mode: each one's head, framing and body.

httptools parses the client's bytes; pipelined requests are queued (up to
``MAX_QUEUED`` from one read, beyond that 400) and served in order. ``http.request``
makes each one's framing decision (ambiguous requests are refused: 400/405/501/505),
and limits give 414/431. A :class:`Request` holds what its exchanges need: the decided
head, and its body, buffered while no exchange sends it (``BODY_BUFFER``: then the
client is not read) and kept for a retry while it is small (``retry.RETRY_BUFFER``).

:class:`RequestReader` is the parsing part of the client connection
(``client.ClientConn``): the httptools callbacks that build and queue each request.
"""

from __future__ import annotations

import collections
import time
from typing import TYPE_CHECKING, Protocol

import httptools

from balancer import http, retry

if TYPE_CHECKING:
    from balancer.runtime import Balancer

BODY_BUFFER = 64 * 1024  # body bytes held while no exchange sends them: then stop reading
MAX_PIPELINE = 32  # requests queued on a connection before it is not read
MAX_QUEUED = 4 * MAX_PIPELINE  # ... and what one read may add: beyond, 400
# why a client is not read (several at once; reading resumes when none is left)
PIPELINE, BODY, SERVER_FULL, BROKEN = 1, 2, 4, 8


class BodySink(Protocol):
    """Where a request's body goes as it arrives: the exchange sending it to a server
    (``upstream.Exchange``)."""

    def send_body(self, data: bytes) -> None: ...
    def end_body(self) -> None: ...


class Request:
    """One client request: its head, and its body on its way to the server."""

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
        self.sink: BodySink | None = None  # the exchange streaming this body now
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


class RequestReader:
    """The httptools callbacks of a client connection: they build each :class:`Request`,
    refuse what breaks a limit, and queue it for the connection to serve."""

    # The client connection's state, set by its __init__.
    bal: Balancer
    parser: httptools.HttpRequestParser
    queue: collections.deque[Request]
    req: Request | None  # being parsed
    active: Request | None  # being served (queue[0])
    in_head: bool
    head_bytes: int  # bytes read while a head (or chunk line, trailer) is not complete
    deadline: float
    error: tuple[int, str] | None  # a refusal from inside a parser callback
    body_of: Request | None  # an Upgrade request whose body comes next
    priming: bool  # feeding a new parser the framing of body_of

    if TYPE_CHECKING:  # what the client connection does for it
        def client_error(self, status: int, reason: str) -> None: ...
        def pause(self, why: int) -> None: ...
        def next_request(self) -> None: ...
        def set_deadline(self, seconds: float) -> None: ...

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
