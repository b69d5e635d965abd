"""The daemon's parts share one configuration, and hbctl's answers (no socket here:
the handler is called directly)."""

from __future__ import annotations

import asyncio
import io
import json

from daemonkit.log import EventLog
from heartbeat import config, fsm
from heartbeat.daemon import Daemon
from tests.unit.test_heartbeat_wire_config import CFG


def daemon() -> tuple[Daemon, io.StringIO]:
    out = io.StringIO()
    return Daemon(config.loads(CFG.format(key="/k")), "hb.toml",
                  EventLog("heartbeat", stream=out)), out


def test_a_new_configuration_reaches_every_part() -> None:
    d, _ = daemon()
    assert d.links.cfg is d.vip.cfg is d.handover.cfg is d.cfg
    new = config.loads(CFG.format(key="/k").replace("priority = 150", "priority = 90"))
    d.cfg = new
    assert d.links.cfg is d.vip.cfg is d.handover.cfg is d.cfg is new


def test_hbctl_answers() -> None:
    d, out = daemon()
    done: list[str] = []  # the VIP's actions, not carried out here
    d.vip.take = lambda: done.append("take")  # type: ignore[method-assign]
    d.vip.announce = lambda: done.append("announce")  # type: ignore[method-assign]
    d.vip.announce_burst = lambda: done.append("burst")  # type: ignore[method-assign]

    async def ask(*lines: str) -> list[object]:
        d.loop = asyncio.get_running_loop()
        d.node = fsm.Node("dir0", 150, ["dir1"], ["private"], d.cfg.timers, d.loop.time())
        return [json.loads(await d.control.handle(line)) for line in lines]

    status, standby, takeover, events, unknown = asyncio.run(
        ask("status\n", "standby\n", "takeover\n", "events\n", "bogus\n"))
    assert isinstance(status, dict)
    assert (status["node"], status["state"], status["holds_vip"], status["vip"]) == (
        "dir0", "INIT", False, "203.0.113.100/24")
    assert status["failover_budget_ms"] == {"detection": 200, "tick": 5, "vip_add": 5,
                                            "garp": 1, "total": 211}
    assert status["timers_ms"] == {"keepalive": 50, "deadtime": 200, "warntime": 100,
                                   "initdead": 1000}
    assert standby == {"ok": True, "state": "INIT"}
    assert takeover == {"ok": True, "state": "MASTER"}
    assert done == ["take", "announce", "burst"]
    assert isinstance(events, list)
    assert [e["event"] for e in events] == ["standby_ignored", "transition"]
    assert unknown == {"error": "unknown command 'bogus': status, standby, takeover, events"}
    assert d.counters["event_standby_ignored"] == d.counters["event_transition"] == 1
    logged = [ln.split()[1:4] for ln in out.getvalue().splitlines()]
    assert ["level=info", "daemon=heartbeat", "event=standby_ignored"] in logged
    assert ["level=warning", "daemon=heartbeat", "event=transition"] in logged
