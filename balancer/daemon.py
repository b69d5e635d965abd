"""The balancer daemon: ``halab-balancer -f /etc/halab/balancer.toml``.

* ``--check``: validate the config and exit (0 valid, 1 with a one-line error)
* SIGHUP: reload. A bad new config is logged and the old one kept; a good one
  is applied in place: listening sockets that stay are kept (no refused
  connection during a reload), established connections go on, servers keep
  their health and counters.
* SIGTERM/SIGINT: graceful stop. Listeners close, idle keep-alive
  connections close, responses in flight finish (with ``Connection: close``)
  until ``timeouts.drain``; then the rest is closed.
* systemd ``Type=notify``: READY=1 once listening, RELOADING=1, STOPPING=1.
* ``workers = N`` (> 1): a master process forks N workers that each listen
  with SO_REUSEPORT (the kernel spreads connections over them) and balance
  on their own; the master passes SIGHUP/SIGTERM on and restarts a worker that
  dies. Worker 0 serves the admin page and the runtime socket for all of them:
  counters are summed, ``set`` commands reach every worker. (Round robin is
  exact within a worker, not across workers.)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import select
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from balancer import admin, client, config, proxy_tcp
from balancer.runtime import Balancer, fd_limit
from daemonkit.cli import install_loop, parse_args, reload_config
from daemonkit.errors import ConfigError
from daemonkit.log import EventLog
from daemonkit.sdnotify import notify

DEFAULT_CONFIG = "/etc/halab/balancer.toml"


def raise_fd_limit(log: EventLog) -> int | None:
    """Raise the soft RLIMIT_NOFILE to the hard one (workers inherit it); the
    :class:`Balancer` lowers its maxconn to what the limit allows (``maxconn_limited``)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:
            log.warning("fd_limit_not_raised", limit=soft, hard=hard, reason=str(e))
    limit = fd_limit()
    log.info("fd_limit", limit=limit if limit is not None else "unlimited")
    return limit


class Daemon:
    def __init__(self, cfg: config.Config, path: str, log: EventLog, worker: int = 0,
                 ready_fd: int | None = None) -> None:
        self.cfg = cfg
        self.path = path
        self.log = log
        self.worker = worker
        self.ready_fd = ready_fd  # a worker tells its master it listens
        self.listeners: dict[tuple[str, int], asyncio.AbstractServer] = {}
        self.admin_http: asyncio.AbstractServer | None = None
        self.runtime: asyncio.AbstractServer | None = None
        self.stop = asyncio.Event()
        self.bal: Balancer

    def factory(self) -> Any:
        mod = client if self.cfg.mode == "http" else proxy_tcp
        return mod.factory(self.bal)

    async def open_listeners(self) -> None:
        loop = asyncio.get_running_loop()
        for host, port in self.cfg.binds:
            if (host, port) not in self.listeners:
                self.listeners[(host, port)] = await loop.create_server(
                    self.factory(), host, port, reuse_address=True, backlog=4096,
                    reuse_port=self.cfg.workers > 1)
        for addr in list(self.listeners):
            if addr not in self.cfg.binds:
                self.listeners.pop(addr).close()

    async def open_admin(self, old: config.Config | None) -> None:
        cfg = self.cfg
        first = self.worker == 0
        cluster = (admin.Cluster(self.bal, cfg.admin_socket, cfg.workers)
                   if first and cfg.workers > 1 and cfg.admin_socket else None)
        if old is None or old.admin_bind != cfg.admin_bind or old.workers != cfg.workers:
            if self.admin_http is not None:
                self.admin_http.close()
                self.admin_http = None
            if cfg.admin_bind is not None and first:
                self.admin_http = await admin.serve_admin_http(self.bal, *cfg.admin_bind,
                                                               cluster=cluster)
        if old is None or old.admin_socket != cfg.admin_socket or old.workers != cfg.workers:
            if self.runtime is not None:
                self.runtime.close()
                self.runtime = None
            if cfg.admin_socket:
                self.runtime = await admin.serve_runtime_socket(
                    self.bal, admin.worker_socket(cfg.admin_socket, self.worker), cluster)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.bal = Balancer(self.cfg, self.log)
        try:
            await self.open_listeners()
            await self.open_admin(None)
        except OSError as e:
            self.log.error("bind_failed", reason=str(e))
            return 1
        self.bal.start()
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        if self.ready_fd is not None:
            os.write(self.ready_fd, b"r")
        else:
            notify("READY=1")
        self.log.info("started", pid=os.getpid(), mode=self.cfg.mode, worker=self.worker,
                      binds=",".join(f"{h}:{p}" for h, p in self.cfg.binds),
                      servers=",".join(s.name for s in self.cfg.servers),
                      algorithm=self.cfg.algorithm)
        await self.stop.wait()
        await self.drain()
        return 0

    async def reload(self) -> None:
        single = self.ready_fd is None
        if single:
            notify("RELOADING=1")
        new = reload_config(config.load, self.path, self.log)
        if new is None:
            if single:
                notify("READY=1")
            return
        old = self.cfg
        if new.mode != old.mode:
            # another protocol on the same sockets: reopen them
            for server in self.listeners.values():
                server.close()
            self.listeners.clear()
        self.cfg = new
        self.bal.reconfigure(new)
        try:
            await self.open_listeners()
            await self.open_admin(old)
        except OSError as e:
            self.log.error("reload_bind_failed", reason=str(e))
        if single:
            notify("READY=1")
        self.log.info("reloaded", servers=",".join(s.name for s in new.servers),
                      binds=",".join(f"{h}:{p}" for h, p in new.binds))

    async def drain(self) -> None:
        if self.ready_fd is None:
            notify("STOPPING=1")
        bal = self.bal
        bal.draining = True
        for server in self.listeners.values():
            server.close()
        self.listeners.clear()
        if self.admin_http is not None:
            self.admin_http.close()
        self.log.info("draining", connections=len(bal.clients),
                      deadline_s=self.cfg.timeouts.drain)
        for conn in list(bal.clients):
            if isinstance(conn, client.ClientConn) and not conn.queue:
                conn.close()  # idle keep-alive: nothing to finish
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.timeouts.drain
        while bal.clients and loop.time() < deadline:
            await asyncio.sleep(0.01)
        left = len(bal.clients)
        for conn in list(bal.clients):
            conn.close()
        bal.stop()
        for rt in bal.runtimes.values():
            for conn in list(rt.pool):
                conn.close()
        if self.runtime is not None:
            self.runtime.close()
            if self.cfg.admin_socket:
                sock = admin.worker_socket(self.cfg.admin_socket, self.worker)
                if os.path.exists(sock):
                    os.unlink(sock)
        self.log.info("stopped", cut_connections=left)


SIGNALS = {signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM, signal.SIGINT}
RESPAWN_LIMIT = 5  # worker restarts per minute before the master gives up


class Master:
    """Forks the workers, passes signals on, restarts a worker that dies."""

    def __init__(self, cfg: config.Config, path: str, log: EventLog, level: str) -> None:
        self.cfg = cfg
        self.path = path
        self.log = log
        self.level = level
        self.pids: dict[int, int] = {}  # pid -> worker index
        self.ready_r, self.ready_w = os.pipe()
        self.respawns: list[float] = []

    def spawn(self, worker: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            rc = 1
            try:
                os.close(self.ready_r)
                for sig in SIGNALS:
                    signal.signal(sig, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
                log = EventLog(f"balancer-w{worker}", self.level)
                install_loop(log)
                rc = asyncio.run(Daemon(self.cfg, self.path, log, worker, self.ready_w).run())
            finally:
                os._exit(rc)
        self.pids[pid] = worker

    def signal_all(self, sig: int) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def run(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        n = self.cfg.workers
        for i in range(n):
            self.spawn(i)
        if not self._wait_ready(n, deadline=time.monotonic() + 15):
            self.stop()
            return 1
        notify("READY=1")
        self.log.info("started", pid=os.getpid(), workers=n, mode=self.cfg.mode)
        while True:
            info = signal.sigtimedwait(SIGNALS, 1.0)
            if info is None:
                continue
            if info.si_signo == signal.SIGCHLD:
                self._reap(respawn=True)
            elif info.si_signo == signal.SIGHUP:
                self._reload()
            else:
                return self.stop()

    def _wait_ready(self, n: int, deadline: float) -> bool:
        got = 0
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0:
                self.log.error("workers_not_ready", ready=got, workers=n)
                return False
            readable, _, _ = select.select([self.ready_r], [], [], min(left, 0.2))
            if readable:
                got += len(os.read(self.ready_r, n))
            if signal.sigtimedwait({signal.SIGCHLD}, 0) is not None and self._reap(False):
                self.log.error("worker_failed_at_start")
                return False
        return True

    def _reap(self, respawn: bool) -> bool:
        died = False
        while self.pids:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            worker = self.pids.pop(pid, None)
            if worker is None:
                continue
            died = True
            self.log.error("worker_died", worker=worker, pid=pid, status=status)
            if respawn:
                now = time.monotonic()
                self.respawns = [t for t in self.respawns if now - t < 60] + [now]
                if len(self.respawns) > RESPAWN_LIMIT:
                    self.log.error("respawn_limit", note="too many worker deaths, stopping")
                    os.kill(os.getpid(), signal.SIGTERM)
                else:
                    self.spawn(worker)
        return died

    def _reload(self) -> None:
        notify("RELOADING=1")
        new = reload_config(config.load, self.path, self.log)
        if new is not None:
            if new.workers != self.cfg.workers:
                self.log.warning("workers_unchanged", note="a new worker count needs a restart")
            self.cfg = new
            self.signal_all(signal.SIGHUP)
            self.log.info("reload_forwarded", workers=len(self.pids))
        notify("READY=1")

    def stop(self) -> int:
        notify("STOPPING=1")
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self.cfg.timeouts.drain + 5
        while self.pids and time.monotonic() < deadline:
            signal.sigtimedwait({signal.SIGCHLD}, 0.2)
            self._reap(respawn=False)
        if self.pids:
            self.signal_all(signal.SIGKILL)
            while self.pids:
                pid, _ = os.waitpid(-1, 0)
                self.pids.pop(pid, None)
        self.log.info("stopped")
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args("halab-balancer", "halab's load balancer", DEFAULT_CONFIG, argv)
    try:
        cfg = config.load(args.config)
    except ConfigError as e:
        print(f"halab-balancer: {e}", file=sys.stderr)
        return 1
    if args.check:
        print(f"{args.config}: ok: mode {cfg.mode}, {len(cfg.binds)} binds, "
              f"{len(cfg.servers)} servers, algorithm {cfg.algorithm}, {cfg.workers} worker(s)")
        return 0
    log = EventLog("balancer", args.log_level)
    raise_fd_limit(log)
    if cfg.workers > 1:
        return Master(cfg, args.config, log, args.log_level).run()
    install_loop(log)
    return asyncio.run(Daemon(cfg, args.config, log).run())


if __name__ == "__main__":
    sys.exit(main())
