"""TCP mode: a byte pipe per client connection, balanced per connection.

The client connection is held (not read) until a server accepted the
connection; a connect error is retried (``retries`` times, on another
server with ``redispatch``; ``retry`` decides), so a refusing or blackholed
server costs the client a short delay, not an error. Then bytes flow both ways with flow
control (a slow reader pauses the other side) and half-closes are passed on.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, cast

from balancer import retry
from balancer.runtime import Balancer, ServerRuntime
from daemonkit.check import out_of_fds


class _Side(asyncio.Protocol):
    """One end of the pipe; ``peer`` is the other end."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.closed = False
        self.eof_got = False  # this end sent its FIN
        self.eof_sent = False  # we passed the other end's FIN on to this end

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
            self.count(len(data))

    def count(self, n: int) -> None:
        """Bytes that went through this side (for the server's counters)."""

    def eof_received(self) -> bool:
        self.eof_got = True
        peer = self.peer
        if peer is not None and peer.transport is not None and peer.transport.can_write_eof():
            peer.transport.write_eof()
            peer.eof_sent = True
            if peer.eof_got:  # the peer is done both ways
                peer.transport.close()
            # keep our write side open for the other direction, unless done with too
            # (a transport shut both ways stays open, and its descriptor with it)
            return not self.eof_sent
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            if exc is not None:
                peer.transport.abort()
            else:
                peer.transport.close()

    # flow control: when our buffer to the network is full, stop reading the peer
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class ServerSide(_Side):
    def __init__(self, bal: Balancer, rt: ServerRuntime) -> None:
        super().__init__()
        self.bal = bal
        self.rt = rt

    def count(self, n: int) -> None:
        self.rt.stats.bytes_in += n

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.rt.stats.response_errors += 1
        super().connection_lost(exc)


class ClientSide(_Side):
    deadline = float("inf")  # no idle timeout in TCP mode (the balancer's sweeper asks)

    def on_timeout(self, now: float) -> None:
        pass

    def __init__(self, bal: Balancer) -> None:
        super().__init__()
        self.bal = bal
        self.rt: ServerRuntime | None = None
        self.task: asyncio.Task[None] | None = None
        # What arrived before a server was connected (uvloop may deliver data
        # and EOF even while reading is paused).
        self.early: list[bytes] = []
        self.early_eof = False

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self.early.append(data)
        else:
            super().data_received(data)

    def eof_received(self) -> bool:
        if self.peer is None:
            self.early_eof = True
            return True
        return super().eof_received()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.pause_reading()
        fe = self.bal.frontend
        fe.connections += 1
        fe.current += 1
        fe.requests += 1
        self.bal.clients.add(self)
        if self.bal.draining:
            self.transport.close()
            return
        if fe.current > self.bal.maxconn:
            self.bal.over_maxconn()
            self.transport.close()
            return
        self.task = self.bal.loop.create_task(self.connect())

    def connection_lost(self, exc: Exception | None) -> None:
        self.bal.frontend.current -= 1
        self.bal.clients.discard(self)
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.rt is not None:
            self.bal.release(self.rt)
            self.rt = None
        super().connection_lost(exc)

    def count(self, n: int) -> None:
        if self.rt is not None:
            self.rt.stats.bytes_out += n

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def connect(self) -> None:
        bal = self.bal
        cfg = bal.config
        assert self.transport is not None
        peername = self.transport.get_extra_info("peername")
        client_ip = peername[0] if peername else "-"
        tried: list[str] = []
        for attempt in range(cfg.retries + 1):
            rt = await bal.choose(client_ip, retry.excluded(tried, cfg.redispatch))
            if rt is None:
                bal.frontend.generated[503] += 1
                bal.log.info("no_server", client=client_ip, mode="tcp")
                self.transport.close()
                return
            rt.stats.requests += 1
            try:
                async with asyncio.timeout(cfg.timeouts.connect):
                    _, side = await bal.loop.create_connection(
                        functools.partial(ServerSide, bal, rt), rt.server.host, rt.server.port)
            except (OSError, TimeoutError) as e:
                if out_of_fds(e):
                    bal.fd_exhausted("connect", rt.name)
                    bal.release(rt)
                    bal.frontend.generated[503] += 1
                    self.transport.close()
                    return
                reason = "connect timeout" if isinstance(e, TimeoutError) else (
                    e.strerror or type(e).__name__)
                rt.stats.connect_errors += 1
                bal.observe(rt, False, reason)
                bal.release(rt)
                more = retry.again(True, attempt, cfg.retries)
                bal.log.info("attempt_failed", server=rt.name, reason=reason, retry=more,
                             client=client_ip, mode="tcp")
                if more:
                    rt.stats.retries += 1
                    tried.append(rt.name)
                continue
            if self.closed:
                if side.transport is not None:
                    side.transport.close()
                bal.release(rt)
                return
            bal.observe(rt, True, "connected")
            self.rt = rt
            self.peer, side.peer = side, self
            for data in self.early:
                self.data_received(data)
            self.early = []
            if self.early_eof:
                super().eof_received()
            else:
                self.transport.resume_reading()
            return
        bal.frontend.generated[503] += 1
        self.transport.close()


def factory(bal: Balancer) -> Any:
    return lambda: ClientSide(bal)
