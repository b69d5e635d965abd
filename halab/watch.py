"""``halab watch``: the lab live, once a second. Who announces the VIP; each director's
heartbeat state and how fresh its peer is on each link; each balancer's view of the web
nodes; the client's loop through the VIP (the seed's curl loop made visible: which node
answered, failures, requests/s, an outage clock); the latest events.

``--json``: one object a second with the same facts, for scripts and tests. Every view is
bounded in time (``--seconds``); Ctrl-C leaves at once, the client's loop stopped.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from harness.measure import client_timeout, vip_url
from harness.traffic import ClientLoop, vip_state
from lab.backend import Backend
from lab.errors import HalabError

GAP_MS = 50.0  # the client's loop: about 20 requests a second, as a person can follow
EVENTS = 8  # the latest events shown


class Client:
    """The client's loop through the VIP, read in a thread; ``take()`` gives what came
    since the last call."""

    def __init__(self, lab: Backend, seconds: float) -> None:
        count = int(seconds * 1000 / GAP_MS) + 1
        self.loop = ClientLoop(lab, lab.topology.clients[0].name, vip_url(lab.topology),
                               count=count, gap_ms=GAP_MS, timeout=client_timeout(lab) * 5)
        self._new: list[dict[str, object]] = []
        self._lock = threading.Lock()
        self.failing_since: float | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        out = self.loop.proc.stdout
        assert out is not None
        for line in out:
            with self._lock:
                self._new.append(json.loads(line))

    def take(self) -> list[dict[str, object]]:
        with self._lock:
            new, self._new = self._new, []
        for r in new:
            if r.get("status") == 200:
                self.failing_since = None
            elif self.failing_since is None:
                self.failing_since = float(r["t"])  # type: ignore[arg-type]
        return new

    def stop(self) -> None:
        self.loop.stop()


MARK = "--halab-watch--"
# one command a director a second (one SSH round trip on a VM): its addresses, its
# heartbeat's status and its balancer's view, each after a mark (empty: no answer)
LOOK = (f"ip -j -4 addr show; echo {MARK}; hbctl status --json 2>/dev/null; echo {MARK}; "
        "balancerctl show stat json 2>/dev/null")


def _director(lab: Backend, name: str) -> dict[str, Any]:
    """One director as it sees itself: VIP, heartbeat, balancer (None: no answer)."""
    out: dict[str, Any] = {"vip": None, "heartbeat": None, "servers": None}
    try:
        res = lab.run(name, ["sh", "-c", LOOK], check=False, timeout=5 * lab.slowness)
    except HalabError:
        return out  # powered off, or cut off from us
    parts = res.text.split(MARK + "\n")
    if len(parts) != 3:
        return out
    addr, hb, lb = parts
    try:
        out["vip"] = vip_state(addr.encode(), str(lab.topology.vip.address))
        if hb.strip():
            st = json.loads(hb)
            out["heartbeat"] = {
                "state": st["state"],
                "peers": {p["name"]: {"state": p["state"], "alive": p["alive"],
                                      "last_heard_ms": p["last_heard_ms"], "links": p["links"]}
                          for p in st["peers"]}}
        if lb.strip():
            out["servers"] = [{"name": s["name"], "state": s["state"], "weight": s["weight"],
                               "active": s["active"]} for s in json.loads(lb)["servers"]]
    except (ValueError, KeyError):
        pass  # a daemon down or starting: shown as no answer
    return out


class Watch:
    def __init__(self, lab: Backend, seconds: float) -> None:
        self.lab = lab
        self.client = Client(lab, seconds)
        self.events: deque[tuple[float, str]] = deque(maxlen=EVENTS)
        self.last: dict[str, Any] = {}
        self.pool = ThreadPoolExecutor(max_workers=len(lab.topology.directors))
        self.ok = self.failed = 0
        self.served = True  # the client's last request

    def _event(self, t: float, what: str) -> None:
        self.events.append((t, what))

    def sample(self) -> dict[str, Any]:
        """The facts now, and what changed since the last sample (as events)."""
        t = time.time()
        names = [d.name for d in self.lab.topology.directors]
        seen = dict(zip(names, self.pool.map(lambda n: _director(self.lab, n), names),
                        strict=True))
        holders = [n for n in names if seen[n]["vip"] == "announced"]
        new = self.client.take()
        good = [r for r in new if r.get("status") == 200]
        self.ok += len(good)
        self.failed += len(new) - len(good)
        before = self.last.get("directors", {})
        for n in names:
            was = (before.get(n, {}).get("heartbeat") or {}).get("state")
            now = (seen[n]["heartbeat"] or {}).get("state")
            if was != now and self.last:
                self._event(t, f"{n}: heartbeat {was or 'no answer'} -> {now or 'no answer'}")
            old = {s["name"]: s["state"] for s in before.get(n, {}).get("servers") or []}
            for s in seen[n]["servers"] or []:
                if old and old.get(s["name"]) != s["state"]:
                    self._event(t, f"{n}: balancer sees {s['name']} "
                                f"{old.get(s['name'])} -> {s['state']}")
        if self.last and self.last["vip"]["holders"] != holders:
            self._event(t, f"VIP: {', '.join(self.last['vip']['holders']) or 'nobody'} -> "
                        f"{', '.join(holders) or 'nobody'}")
        for r in new:
            served = r.get("status") == 200
            if served != self.served:
                what = (f"served again, by {str(r.get('body', '')).split(' ')[0]}" if served
                        else f"requests failing ({r.get('err') or r.get('status')})")
                self._event(float(r["t"]), f"client: {what}")  # type: ignore[arg-type]
            self.served = served
        since = self.client.failing_since
        rate = round(ClientLoop.rate(new), 1) if len(new) > 1 else 0.0
        self.last = {
            "t": round(t, 3),
            "vip": {"address": str(self.lab.topology.vip.address), "holders": holders,
                    "silent": [n for n in names if seen[n]["vip"] == "silent"]},
            "directors": seen,
            "client": {"ok": self.ok, "failed": self.failed,
                       "requests_per_s": rate,
                       "answered_by": [str(r.get("body", "")).split(" ")[0] for r in good[-6:]],
                       "outage_s": round(t - since, 1) if since is not None else None},
            "events": [{"t": round(et, 3), "what": w} for et, w in sorted(self.events)],
        }
        return self.last

    def close(self) -> None:
        self.client.stop()
        self.pool.shutdown(wait=False, cancel_futures=True)


def render(s: dict[str, Any]) -> Group:
    holders = ", ".join(s["vip"]["holders"]) or "[red]nobody[/]"
    if len(s["vip"]["holders"]) > 1:
        holders = f"[red bold]{holders} (split brain)[/]"
    head = Text.from_markup(f"[bold]VIP {s['vip']['address']} on {holders}[/]   "
                            f"{time.strftime('%H:%M:%S', time.localtime(s['t']))}")
    hb = Table("director", "heartbeat", "peer", "links", "balancer: web nodes",
               title_justify="left", expand=False)
    for name, d in s["directors"].items():
        h = d["heartbeat"]
        if h is None:
            hb.add_row(name, "[red]no answer[/]", "-", "-", _servers(d["servers"]))
            continue
        colour = {"MASTER": "green", "BACKUP": "cyan"}.get(h["state"], "red")
        peers, links = [], []
        for pname, p in h["peers"].items():
            heard = "never" if p["last_heard_ms"] is None else f"{p['last_heard_ms']} ms ago"
            peers.append(f"{pname} {p['state']} ({'alive' if p['alive'] else '[red]dead[/]'}, "
                         f"{heard})")
            links.append(", ".join(f"{k} {'[green]up[/]' if v == 'up' else '[red]' + v + '[/]'}"
                                   for k, v in p["links"].items()))
        hb.add_row(name, f"[{colour}]{h['state']}[/]", "\n".join(peers), "\n".join(links),
                   _servers(d["servers"]))
    c = s["client"]
    answered = " ".join(c["answered_by"]) or "-"
    outage = (f"   [red bold]OUTAGE {c['outage_s']:.1f} s[/]" if c["outage_s"] is not None
              else "")
    client = Text.from_markup(
        f"client -> VIP: {c['requests_per_s']:g} req/s, [green]{c['ok']} ok[/], "
        + (f"[red]{c['failed']} failed[/]" if c["failed"] else "0 failed")
        + f"   answered by: {answered}{outage}")
    events = Text("\n".join(f"{time.strftime('%H:%M:%S', time.localtime(e['t']))}  {e['what']}"
                            for e in s["events"]) or "(no event yet)")
    return Group(head, hb, client, Text("latest events:", style="bold"), events)


def _servers(servers: list[dict[str, Any]] | None) -> str:
    if servers is None:
        return "[red]no answer[/]"
    colour = {"UP": "green", "DRAIN": "yellow"}
    return ", ".join(f"[{colour.get(x['state'], 'red')}]{x['name']} {x['state']}[/] "
                     f"w{x['weight']} a{x['active']}" for x in servers)


def cmd_watch(lab: Backend, seconds: float, as_json: bool, console: Console) -> int:
    if not lab.is_up():
        raise HalabError(f"lab {lab.topology.lab} is not up: run `halab up` first")
    w = Watch(lab, seconds)
    end = time.monotonic() + seconds
    try:
        if as_json:
            while time.monotonic() < end:
                t0 = time.monotonic()
                print(json.dumps(w.sample()), flush=True)
                time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))
            return 0
        with Live(render(w.sample()), console=console, refresh_per_second=4,
                  screen=False) as live:
            while time.monotonic() < end:
                t0 = time.monotonic()
                live.update(render(w.sample()))
                time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))
        return 0
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # | head
        sys.stderr.close()
        return 0
    finally:
        w.close()
