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
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import sys
from collections.abc import Sequence
from typing import Any

from balancer import admin, config, proxy_http, proxy_tcp
from balancer.core import Balancer
from lab.errors import ConfigError
from lab.logs import EventLog
from lab.sdnotify import notify

DEFAULT_CONFIG = "/etc/halab/balancer.toml"


def raise_fd_limit(log: EventLog, maxconn: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    needed = 2 * maxconn + 64  # a client and a server socket per connection
    if soft < needed:
        log.warning("fd_limit_low", limit=soft, needed=needed, maxconn=maxconn)
    else:
        log.info("fd_limit", limit=soft)


class Daemon:
    def __init__(self, cfg: config.Config, path: str, log: EventLog) -> None:
        self.cfg = cfg
        self.path = path
        self.log = log
        self.listeners: dict[tuple[str, int], asyncio.AbstractServer] = {}
        self.admin_http: asyncio.AbstractServer | None = None
        self.runtime: asyncio.AbstractServer | None = None
        self.stop = asyncio.Event()
        self.bal: Balancer

    def factory(self) -> Any:
        mod = proxy_http if self.cfg.mode == "http" else proxy_tcp
        return mod.factory(self.bal)

    async def open_listeners(self) -> None:
        loop = asyncio.get_running_loop()
        for host, port in self.cfg.binds:
            if (host, port) not in self.listeners:
                self.listeners[(host, port)] = await loop.create_server(
                    self.factory(), host, port, reuse_address=True, backlog=4096)
        for addr in list(self.listeners):
            if addr not in self.cfg.binds:
                self.listeners.pop(addr).close()

    async def open_admin(self, old: config.Config | None) -> None:
        cfg = self.cfg
        if old is None or old.admin_bind != cfg.admin_bind:
            if self.admin_http is not None:
                self.admin_http.close()
                self.admin_http = None
            if cfg.admin_bind is not None:
                self.admin_http = await admin.serve_admin_http(self.bal, *cfg.admin_bind)
        if old is None or old.admin_socket != cfg.admin_socket:
            if self.runtime is not None:
                self.runtime.close()
                self.runtime = None
            if cfg.admin_socket:
                self.runtime = await admin.serve_runtime_socket(self.bal, cfg.admin_socket)

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
        notify("READY=1")
        self.log.info("started", pid=os.getpid(), mode=self.cfg.mode,
                      binds=",".join(f"{h}:{p}" for h, p in self.cfg.binds),
                      servers=",".join(s.name for s in self.cfg.servers),
                      algorithm=self.cfg.algorithm)
        await self.stop.wait()
        await self.drain()
        return 0

    async def reload(self) -> None:
        notify("RELOADING=1")
        try:
            new = config.load(self.path)
        except ConfigError as e:
            self.log.error("reload_failed", reason=str(e))
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
        notify("READY=1")
        self.log.info("reloaded", servers=",".join(s.name for s in new.servers),
                      binds=",".join(f"{h}:{p}" for h, p in new.binds))

    async def drain(self) -> None:
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
        for client in list(bal.clients):
            if isinstance(client, proxy_http.ClientConn) and not client.queue:
                client.close()  # idle keep-alive: nothing to finish
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.timeouts.drain
        while bal.clients and loop.time() < deadline:
            await asyncio.sleep(0.01)
        left = len(bal.clients)
        for client in list(bal.clients):
            client.close()
        bal.stop()
        for rt in bal.runtimes.values():
            for conn in list(rt.pool):
                conn.close()
        if self.runtime is not None:
            self.runtime.close()
            if self.cfg.admin_socket and os.path.exists(self.cfg.admin_socket):
                os.unlink(self.cfg.admin_socket)
        self.log.info("stopped", cut_connections=left)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="halab-balancer", description="halab's load balancer")
    ap.add_argument("-f", "--config", default=DEFAULT_CONFIG, help=f"default {DEFAULT_CONFIG}")
    ap.add_argument("--check", action="store_true", help="validate the config and exit")
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    args = ap.parse_args(argv)
    try:
        cfg = config.load(args.config)
    except ConfigError as e:
        print(f"halab-balancer: {e}", file=sys.stderr)
        return 1
    if args.check:
        print(f"{args.config}: ok: mode {cfg.mode}, {len(cfg.binds)} binds, "
              f"{len(cfg.servers)} servers, algorithm {cfg.algorithm}")
        return 0
    log = EventLog("balancer", args.log_level)
    raise_fd_limit(log, cfg.maxconn)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        log.warning("no_uvloop", note="running on the default asyncio loop")
    daemon = Daemon(cfg, args.config, log)
    return asyncio.run(daemon.run())


if __name__ == "__main__":
    sys.exit(main())
