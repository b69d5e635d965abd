"""The balancer's runtime: servers with their health, pools, queue and counters.

This is the thin IO shell around the sans-IO parts (``scheduler``,
``health``): it runs the active checks, applies transitions, hands out
server slots (queueing when every server is at maxconn) and keeps the
statistics the admin page, JSON and metrics show. The proxies
(``client`` in HTTP mode, ``proxy_tcp``) ask it for a server and report outcomes.
"""

from __future__ import annotations

import asyncio
import collections
import resource
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from balancer.config import Config, ServerConfig
from balancer.health import Health, Transition
from balancer.scheduler import Admin, Pick, Scheduler, Server, Verdict
from daemonkit.check import OUT_OF_FDS, TIMED_OUT, tcp_check
from daemonkit.log import EventLog

SWEEP_INTERVAL = 0.05  # timeout resolution, seconds
# Descriptors kept aside beyond the client and server sockets: the listeners, the admin
# listener and its clients, the runtime socket and its clients, the log, the event loop's
# own (epoll, signal pipe, libuv's EMFILE spare), a worker 0's questions to the others.
FD_HEADROOM = 32


def fd_limit() -> int | None:
    """The soft RLIMIT_NOFILE (the daemon raised it to the hard one); None: unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY or soft < 0 else soft


def fd_reserve(config: Config) -> int:
    """Descriptors that client connections must leave free: the headroom, one per
    server for its active check, the idle keep-alive pools (HTTP mode), one per other
    worker (worker 0 asks them for their counters)."""
    n = len(config.servers)
    pools = config.pool_size * n if config.mode == "http" else 0
    return FD_HEADROOM + n + pools + config.workers - 1


def effective_maxconn(config: Config, limit: int | None) -> int:
    """The client connections a worker takes at once: ``maxconn``, lowered so that each
    (a client socket and a server socket) fits in the descriptor limit with the reserve
    left over. At least 1."""
    if limit is None:
        return config.maxconn
    return max(1, min(config.maxconn, (limit - fd_reserve(config)) // 2))


@dataclass
class ServerStats:
    requests: int = 0  # requests (http) / connections (tcp) sent to it
    responses: dict[str, int] = field(default_factory=lambda: collections.Counter())
    connect_errors: int = 0
    response_errors: int = 0
    retries: int = 0  # attempts on it that failed and were retried
    redispatches: int = 0  # requests moved away from it
    bytes_in: int = 0  # from the server
    bytes_out: int = 0  # to the server
    checks_failed: int = 0
    downs: int = 0  # times it went DOWN


@dataclass
class ServerRuntime:
    server: Server
    health: Health
    stats: ServerStats = field(default_factory=ServerStats)
    pool: list[Any] = field(default_factory=list)
    inflight: set[Any] = field(default_factory=set)
    check_task: asyncio.Task[None] | None = None
    admin_since: float = 0.0

    @property
    def name(self) -> str:
        return self.server.name

    def state(self) -> str:
        if self.server.admin is Admin.MAINT:
            return "MAINT"
        if self.server.admin is Admin.DRAIN:
            return "DRAIN" if self.server.up else "DRAIN (DOWN)"
        return "UP" if self.server.up else "DOWN"


@dataclass
class FrontendStats:
    connections: int = 0
    current: int = 0
    requests: int = 0
    responses: collections.Counter[str] = field(default_factory=collections.Counter)
    generated: collections.Counter[int] = field(default_factory=collections.Counter)
    bad_requests: int = 0
    queued: int = 0
    queue_timeouts: int = 0
    refused: int = 0  # connections over the global maxconn
    fd_exhausted: int = 0  # checks and connects that failed for lack of file descriptors
    last_resort: int = 0  # attempts on a DOWN server because every server was DOWN


class Balancer:
    def __init__(self, config: Config, log: EventLog) -> None:
        self.config = config
        self.log = log
        self.loop = asyncio.get_event_loop()
        self.started = time.time()
        self.draining = False
        self.frontend = FrontendStats()
        self.clients: set[Any] = set()
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.runtimes: dict[str, ServerRuntime] = {}
        self.scheduler = Scheduler([], config.algorithm)
        self.sweeper: asyncio.Task[None] | None = None
        self._maxconn_logged = -1.0
        self._last_resort_logged = -1.0
        self._fd_logged = -1.0
        # The client connections taken at once (the proxies compare ``frontend.current``
        # with it): ``config.maxconn`` lowered to what the descriptor limit allows.
        self.maxconn = config.maxconn
        self._limit_maxconn(None)
        for sc in config.servers:
            self._add_server(sc)

    def _limit_maxconn(self, old: Config | None) -> None:
        """Compute :attr:`maxconn` (at start and on reload); say so when the descriptor
        limit lowers it (at start, and on a reload that changes it)."""
        cfg = self.config
        limit = fd_limit()
        was = self.maxconn
        self.maxconn = effective_maxconn(cfg, limit)
        if self.maxconn < cfg.maxconn and (
                old is None or self.maxconn != was or old.maxconn != cfg.maxconn):
            self.log.warning("maxconn_limited", maxconn=cfg.maxconn, effective=self.maxconn,
                             fd_limit=limit, fd_reserve=fd_reserve(cfg),
                             note="each connection needs 2 file descriptors; raise "
                                  "LimitNOFILE (the hard limit) for more")

    # --- servers ------------------------------------------------------------------

    def _add_server(self, sc: ServerConfig) -> ServerRuntime:
        now = self.loop.time()
        srv = Server(name=sc.name, host=sc.host, port=sc.port, weight=sc.weight,
                     maxconn=sc.maxconn, backup=sc.backup, slowstart=sc.slowstart)
        rt = ServerRuntime(srv, Health(self.config.health.params(), self.config.error_limit, now),
                           admin_since=now)
        self.runtimes[sc.name] = rt
        self.scheduler.servers.append(srv)
        return rt

    def start(self) -> None:
        """Start health checks and the timeout sweeper."""
        self.start_checks()
        if self.sweeper is None:
            self.sweeper = self.loop.create_task(self._sweep())

    def stop(self) -> None:
        self.stop_checks()
        if self.sweeper is not None:
            self.sweeper.cancel()
            self.sweeper = None

    async def _sweep(self) -> None:
        """Timeouts as deadlines: connections and exchanges carry a ``deadline``
        (loop time) and an ``on_timeout(now)``; no timer per request."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = self.loop.time()
            for c in list(self.clients):
                if c.deadline <= now:
                    c.on_timeout(now)
            for rt in list(self.runtimes.values()):
                for ex in list(rt.inflight):
                    if ex.deadline <= now:
                        ex.on_timeout(now)

    def start_checks(self) -> None:
        if self.config.health.check == "none":
            return
        for rt in self.runtimes.values():
            if rt.check_task is None or rt.check_task.done():
                rt.check_task = self.loop.create_task(self._check_loop(rt))

    def stop_checks(self) -> None:
        for rt in self.runtimes.values():
            if rt.check_task is not None:
                rt.check_task.cancel()
                rt.check_task = None

    async def _check_loop(self, rt: ServerRuntime) -> None:
        while True:
            await asyncio.sleep(rt.health.next_delay())
            if rt.server.admin is Admin.MAINT:
                continue
            began = self.loop.time()
            ok, reason = await self.check_once(rt.server)
            if reason == OUT_OF_FDS:  # ours, not the server's: counts neither way
                rt.health.check_inconclusive(reason, self.loop.time())
                self.fd_exhausted("check", rt.name)
                continue
            if not ok:
                rt.stats.checks_failed += 1
            tr = rt.health.check_result(ok, reason, self.loop.time(),
                                        timed_out_from=began if reason == TIMED_OUT else None)
            if tr is not None:
                self.apply(rt, tr, source="check")

    async def check_once(self, server: Server) -> tuple[bool, str]:
        """(ok, reason) of one active check; the reason is ``TIMED_OUT`` when the server
        gave no answer at all within the check's timeout, ``OUT_OF_FDS`` when the check
        could not be made for lack of file descriptors."""
        h = self.config.health
        request = None if h.check == "tcp" else (
            f"GET {h.path} HTTP/1.1\r\nHost: {server.host}\r\n"
            f"User-Agent: halab-balancer-check\r\nConnection: close\r\n\r\n".encode())
        out = await tcp_check(server.host, server.port, h.timeout, request)
        if not out.ok or request is None:
            return out.ok, out.reason
        parts = out.first_line.split()
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            return False, "invalid check response"
        status = int(parts[1])
        return status == h.expect_status, f"http {status}"

    def observe(self, rt: ServerRuntime, ok: bool, reason: str) -> None:
        tr = rt.health.observe(ok, reason, self.loop.time())
        if tr is not None:
            self.apply(rt, tr, source="traffic")

    def apply(self, rt: ServerRuntime, tr: Transition, source: str) -> None:
        self.scheduler.set_up(rt.server, tr.up, tr.at)
        if not tr.up:
            rt.stats.downs += 1
        self.log.warning("server_up" if tr.up else "server_down", server=rt.name,
                         reason=tr.reason, source=source, active=rt.server.active,
                         usable=sum(s.usable for s in self.scheduler.servers))
        if tr.up:
            self._wake_waiters()
        else:
            self._evacuate(rt, f"{rt.name} is DOWN")

    def _evacuate(self, rt: ServerRuntime, reason: str) -> None:
        """Close idle connections; move requests that got no answer yet elsewhere."""
        for conn in list(rt.pool):
            conn.close()
        rt.pool.clear()
        for ex in list(rt.inflight):
            if ex.redispatch(reason):
                rt.stats.redispatches += 1

    def set_admin(self, name: str, state: Admin) -> None:
        rt = self.runtimes[name]
        old = rt.server.admin
        rt.server.admin = state
        rt.admin_since = self.loop.time()
        self.log.warning("server_admin", server=name, state=state.value, was=old.value)
        if state is Admin.MAINT:
            self._evacuate(rt, f"{name} is in maintenance")
        elif state is Admin.READY:
            self._wake_waiters()

    def set_weight(self, name: str, weight: int) -> None:
        rt = self.runtimes[name]
        self.log.info("server_weight", server=name, weight=weight, was=rt.server.weight)
        rt.server.weight = weight
        self.scheduler.reset_rotation()

    def over_maxconn(self) -> None:
        """A connection beyond the global maxconn is turned away; say so once a second."""
        self.frontend.refused += 1
        now = self.loop.time()
        if now - self._maxconn_logged >= 1.0:
            self._maxconn_logged = now
            self.log.warning("maxconn_reached", maxconn=self.maxconn,
                             configured=self.config.maxconn, refused=self.frontend.refused)

    def fd_exhausted(self, where: str, server: str) -> None:
        """A check or a connect to ``server`` failed for lack of file descriptors (EMFILE,
        ENFILE): not the server's fault, so no health verdict; say so once a second."""
        self.frontend.fd_exhausted += 1
        now = self.loop.time()
        if now - self._fd_logged >= 1.0:
            self._fd_logged = now
            self.log.error("fd_exhausted", where=where, server=server, fd_limit=fd_limit(),
                           maxconn=self.maxconn, current=self.frontend.current,
                           total=self.frontend.fd_exhausted)

    # --- choosing, with the queue ----------------------------------------------------

    async def choose(self, client: str, exclude: Iterable[str] = ()) -> ServerRuntime | None:
        """A server for a request, waiting in the queue while all are full; None: 503."""
        ex = tuple(exclude)
        deadline = self.loop.time() + self.config.timeouts.queue
        while True:
            pick = self.scheduler.pick(self.loop.time(), client, ex)
            if pick.verdict is Verdict.OK:
                return self.take(pick)
            if pick.verdict is Verdict.NONE:
                return None
            left = deadline - self.loop.time()
            if left <= 0:
                self.frontend.queue_timeouts += 1
                return None
            fut: asyncio.Future[None] = self.loop.create_future()
            self.waiters.append(fut)
            self.frontend.queued += 1
            try:
                async with asyncio.timeout(left):
                    await fut
            except TimeoutError:
                pass
            finally:
                self.frontend.queued -= 1
                if fut in self.waiters:
                    self.waiters.remove(fut)

    def take(self, pick: Pick) -> ServerRuntime:
        """The runtime of a server the scheduler picked, its slot taken."""
        assert pick.server is not None
        rt = self.runtimes[pick.server.name]
        self.scheduler.acquire(rt.server)
        if pick.last_resort:
            self.frontend.last_resort += 1
            now = self.loop.time()
            if now - self._last_resort_logged >= 1.0:  # once a second at most
                self._last_resort_logged = now
                self.log.warning("all_servers_down", tried=rt.name,
                                 last_resort=self.frontend.last_resort)
        return rt

    def release(self, rt: ServerRuntime) -> None:
        self.scheduler.release(rt.server)
        self._wake_waiters(1)

    def _wake_waiters(self, n: int | None = None) -> None:
        woken = 0
        while self.waiters and (n is None or woken < n):
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                woken += 1

    # --- reload ------------------------------------------------------------------------

    def reconfigure(self, new: Config) -> None:
        """Apply a new config; servers keep their health, counters and connections."""
        old = self.config
        self.config = new
        self._limit_maxconn(old)
        self.scheduler.algorithm = new.algorithm
        wanted = {sc.name: sc for sc in new.servers}
        for name in list(self.runtimes):
            if name not in wanted:
                rt = self.runtimes.pop(name)
                if rt.check_task is not None:
                    rt.check_task.cancel()
                self.scheduler.servers.remove(rt.server)
                self._evacuate(rt, f"{name} was removed")
                self.log.info("server_removed", server=name)
        for sc in new.servers:
            rt_or_none = self.runtimes.get(sc.name)
            if rt_or_none is None:
                self._add_server(sc)
                self.log.info("server_added", server=sc.name, address=f"{sc.host}:{sc.port}")
                continue
            rt = rt_or_none
            s = rt.server
            if (s.host, s.port) != (sc.host, sc.port):
                for conn in list(rt.pool):
                    conn.close()
                rt.pool.clear()
            s.host, s.port, s.weight = sc.host, sc.port, sc.weight
            s.maxconn, s.backup, s.slowstart = sc.maxconn, sc.backup, sc.slowstart
            rt.health.params = new.health.params()
            rt.health.error_limit = new.error_limit
        # keep config-file order
        self.scheduler.servers.sort(key=lambda s: list(wanted).index(s.name))
        self.scheduler.reset_rotation()
        if old.health.check != new.health.check:
            self.stop_checks()
        self.start_checks()
        self._wake_waiters()

    # --- statistics -----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        now = self.loop.time()
        servers = []
        for rt in self.runtimes.values():
            s = rt.server
            st = rt.stats
            servers.append({
                "name": s.name,
                "address": f"{s.host}:{s.port}",
                "state": rt.state(),
                "up": s.up,
                "admin": s.admin.value,
                "weight": s.weight,
                "effective_weight": s.effective_weight(now),
                "backup": s.backup,
                "maxconn": s.maxconn,
                "active": s.active,
                "idle_pooled": len(rt.pool),
                "requests": st.requests,
                "responses": dict(st.responses),
                "connect_errors": st.connect_errors,
                "response_errors": st.response_errors,
                "retries": st.retries,
                "redispatches": st.redispatches,
                "bytes_in": st.bytes_in,
                "bytes_out": st.bytes_out,
                "downs": st.downs,
                "checks_failed": st.checks_failed,
                "last_check": rt.health.last_check,
                "last_check_age_s": (round(now - rt.health.last_check_at, 3)
                                     if rt.health.last_check_at is not None else None),
                "in_state_s": round(now - rt.health.since, 3),
            })
        fe = self.frontend
        return {
            "mode": self.config.mode,
            "algorithm": self.config.algorithm,
            "uptime_s": round(time.time() - self.started, 3),
            "draining": self.draining,
            "frontend": {
                "binds": [f"{h}:{p}" for h, p in self.config.binds],
                "maxconn": self.maxconn,
                "connections": fe.connections,
                "current": fe.current,
                "requests": fe.requests,
                "responses": dict(fe.responses),
                "generated": {str(k): v for k, v in fe.generated.items()},
                "bad_requests": fe.bad_requests,
                "queued": fe.queued,
                "queue_timeouts": fe.queue_timeouts,
                "refused": fe.refused,
                "fd_exhausted": fe.fd_exhausted,
                "last_resort": fe.last_resort,
            },
            "servers": servers,
        }
