"""``hbctl``'s commands as the daemon answers them on its control socket (behind
``daemonkit.control.serve``): status, standby, takeover, events, one JSON answer each."""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import Sequence
from typing import Any, Protocol

from heartbeat import config, fsm
from heartbeat.vip import Vip

COMMANDS = "status, standby, takeover, events"


def budget_ms(cfg: config.Config) -> dict[str, int]:
    """The theoretical failover budget of a configuration (power loss of the master)."""
    t = cfg.timers
    detect = int(t.deadtime * 1000)
    tick = int(min(0.005, t.keepalive / 5) * 1000)
    vip = 5  # `ip addr replace`, measured ~3 ms
    return {"detection": detect, "tick": tick, "vip_add": vip, "garp": 1,
            "total": detect + tick + vip + 1}


def failed(e: Exception) -> str:
    """The answer when a command raised (``daemonkit.control`` logs it)."""
    return json.dumps({"error": f"internal error: {e!r}"}) + "\n"


class Daemon(Protocol):
    """What the commands read of the daemon (``heartbeat.daemon.Daemon``), and where
    they send the state machine's answer to standby and takeover."""

    cfg: config.Config
    node: fsm.Node
    loop: asyncio.AbstractEventLoop
    vip: Vip
    generation: int
    counters: collections.Counter[str]
    events: collections.deque[dict[str, Any]]

    def perform(self, actions: Sequence[fsm.Action]) -> None: ...


class Control:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def status(self) -> dict[str, Any]:
        d = self.daemon
        st = d.node.status(d.loop.time())
        st.update({"vip": str(d.cfg.vip), "holds_vip": d.vip.held,
                   "interface": d.vip.iface, "generation": d.generation,
                   "counters": dict(d.counters),
                   "timers_ms": {k: int(v * 1000) for k, v in vars(d.cfg.timers).items()},
                   "failover_budget_ms": budget_ms(d.cfg)})
        return st

    async def handle(self, line: str) -> str:
        d = self.daemon
        line = line.strip()
        now = d.loop.time()
        answer: Any
        if line == "status":
            answer = self.status()
        elif line == "standby":
            d.perform(d.node.standby(now))
            answer = {"ok": True, "state": d.node.state.name}
        elif line == "takeover":
            d.perform(d.node.takeover(now))
            answer = {"ok": True, "state": d.node.state.name}
        elif line == "events":
            answer = list(d.events)
        else:
            answer = {"error": f"unknown command {line!r}: {COMMANDS}"}
        return json.dumps(answer) + "\n"
