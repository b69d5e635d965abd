"""``halab demo [--pause]``: the seed's scenario, narrated and measured, on any backend.

Round robin through the VIP; nginx stopped on a web node (only the other answers, no
request lost) and started again (alternation back); the master powered off (the VIP
moves: the outage against the budget); powered on (auto_failback off: the VIP stays);
a graceful standby (no request lost); then a table of it all and the timelines.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path

from rich.markup import escape

from halab.faultcmd import Measured, out, report, run_measured
from harness.faults import Faults, PowerLoss, StopService
from harness.measure import vip_url
from harness.poll import wait_until
from harness.traffic import ClientLoop, vip_holders
from lab.backend import Backend
from lab.errors import HalabError


def _curls(lab: Backend, n: int = 6) -> list[str]:
    """The seed's curl loop from the client: who answered each (or the error)."""
    topo = lab.topology
    url = vip_url(topo)
    out.print(f"[bold]{topo.clients[0].name} $ for i in $(seq {n}); do curl {url}; done[/]")
    got = []
    for r in ClientLoop(lab, topo.clients[0].name, url, count=n, gap_ms=100).finish():
        if r.get("status") == 200:  # the server's words, printed as they are
            body = str(r.get("body", "")).strip()
            out.print(f"  {escape(body)}")
        else:
            body = str(r.get("err") or r.get("status"))
            out.print(f"  [red]{escape(body)}[/]")
        got.append(body.split(" ")[0])
    return got


def _state(lab: Backend, director: str) -> str:
    res = lab.run(director, ["hbctl", "status", "--json"], check=False, timeout=10 * lab.slowness)
    if not res.ok:
        return ""
    return str(json.loads(res.text)["state"])


def _servers_up(lab: Backend, director: str) -> set[str]:
    res = lab.run(director, ["balancerctl", "show", "stat", "json"], check=False,
                  timeout=10 * lab.slowness)
    if not res.ok:
        return set()
    return {s["name"] for s in json.loads(res.text)["servers"] if s["state"] == "UP"}


def cmd_demo(lab: Backend, pause: bool, out_dir: Path) -> int:
    topo = lab.topology
    faults = Faults.load(lab)
    if faults.active:
        raise HalabError("faults are in effect (halab faults): halab heal first")
    holders = vip_holders(lab)
    if len(holders) != 1:
        raise HalabError(f"the VIP is announced by {holders or 'nobody'}: wait for one owner "
                         "(halab status)")
    master = holders[0]
    backup = next(d.name for d in topo.directors if d.name != master)
    web0, web1 = (w.name for w in topo.webs[:2])
    # (step, what the client saw, the promise, kept)
    rows: list[tuple[str, str, str, bool]] = []
    files: list[Path] = []
    step = 0

    def title(text: str) -> None:
        nonlocal step
        step += 1
        if pause and step > 1:
            try:
                input("\n(press Enter for the next step) ")
            except EOFError:
                raise HalabError("--pause: no more input to read Enter from") from None
        out.print(f"\n[bold cyan]{step}. {text}[/]")

    def measured(name: str, what: str, inject: Callable[[], float]) -> Measured:
        m = run_measured(lab, what, inject, out_dir, name)
        report(m)
        files.extend(p for p in m.files if p.suffix == ".png")
        return m

    def saw(m: Measured) -> str:
        if not m.failed:
            return f"0 failed of {m.requests}"
        return f"outage {m.measured.get('outage_ms', float('inf')):g} ms, {m.failed} failed"

    try:
        title(f"Round robin: the client asks the VIP {topo.vip.address}, held by {master}")
        got = _curls(lab)
        alternating = all(a != b for a, b in itertools.pairwise(got))
        out.print(f"  the web nodes take turns: {'yes' if alternating else '[red]no[/]'}")
        rows.append(("round robin", " ".join(got), "alternating", alternating))

        title(f"nginx stops on {web0}: the balancer ejects it before a client notices")
        stop = StopService(web0, "nginx")
        m = measured(f"stop-nginx-{web0}", f"nginx stopped on {web0}",
                     lambda: faults.inject(stop))
        wait_until(lambda: web0 not in _servers_up(lab, master), 30 * lab.slowness,
                   f"{web0} DOWN on {master}'s balancer")
        got = _curls(lab)
        only = set(got) == {web1}
        out.print(f"  only {web1} answers: {'yes' if only else '[red]no[/]'}")
        rows.append((f"nginx stopped on {web0}", saw(m), "0 failed", only and not m.failed))

        title(f"nginx starts again on {web0}: it rejoins after its health checks")
        faults.heal(stop)
        wait_until(lambda: web0 in _servers_up(lab, master), 60 * lab.slowness,
                   f"{web0} UP again on {master}'s balancer")
        got = _curls(lab)
        rows.append((f"nginx back on {web0}", " ".join(got), "alternating",
                     all(a != b for a, b in itertools.pairwise(got))))

        title(f"The master, {master}, loses power: heartbeat moves the VIP to {backup}")
        power = PowerLoss(master)
        m = measured(f"power-off-{master}", f"power loss of {master}",
                     lambda: faults.inject(power))
        moved = m.measured.get("vip_added_ms")
        rows.append((f"power loss of {master}",
                     (f"VIP moved after {moved:g} ms; " if moved is not None else "") + saw(m),
                     # the budget is the timers' theory (no scheduling noise): beside it
                     # for the class to compare, not judged (test_failover bounds it)
                     f"the VIP moves to {backup}"
                     + (f" (budget {m.budget_ms:g} ms)" if m.budget_ms else ""),
                     m.back and m.holders[1] == [backup]))

        title(f"{master} is powered on: auto_failback is off, so the VIP stays on {backup}")
        faults.heal(power)
        wait_until(lambda: _state(lab, master) == "BACKUP", 60 * lab.slowness,
                   f"{master} back as BACKUP")
        now = vip_holders(lab)
        out.print(f"  {master} is BACKUP; the VIP is announced by "
                  f"{', '.join(now) or 'nobody'}")
        rows.append((f"{master} back", f"VIP on {', '.join(now)}", f"VIP stays on {backup}",
                     now == [backup]))

        title(f"A graceful handover: `hbctl standby` on {backup} gives the VIP back to "
              f"{master}")
        m = measured(f"standby-{backup}", f"graceful standby of {backup}",
                     lambda: lab.run_timed(backup, ["hbctl", "standby"]))
        wait_until(lambda: vip_holders(lab) == [master], 30 * lab.slowness,
                   f"{master} announcing the VIP")
        rows.append((f"standby of {backup}", saw(m), "0 failed", m.back and not m.failed))

        out.print("\n[bold]What the client saw[/]")
        width = max(len(r[0]) for r in rows)
        seen_w = max(len(r[1]) for r in rows)
        for what, seen, promise, kept in rows:
            out.print(f"  {what:<{width}}  {seen:<{seen_w}}  promise: {promise}"
                      + ("" if kept else "  [red]broken[/]"))
        if files:
            out.print("timelines: " + ", ".join(map(str, files)))
    finally:  # an error or Ctrl-C on the way: the lab is left as it was found
        if faults.active:
            left = ", ".join(f.describe() for f in faults.active)
            out.print(f"healing what the demo left: {escape(left)}")
            faults.heal_all()
    return 0 if all(r[3] for r in rows) else 1
