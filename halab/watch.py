"""``halab watch``: the lab live, once a second. Who announces the VIP; each director's
heartbeat state and how fresh its peer is on each link; each balancer's view of the web
nodes; the client's loop through the VIP (the seed's curl loop made visible: which node
answered, failures, requests/s, an outage clock); the latest events.

``--json``: one object a second with the same facts, for scripts and tests. Every view is
bounded in time (``--seconds``); Ctrl-C leaves at once, the client's loop stopped.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import deque
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from halab.faultcmd import require_up
from harness.measure import client_timeout, vip_url
from harness.traffic import ClientLoop, background, vip_state
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


STALE = 2.0  # s without a line from a director's look: it is shown as not answering
FIRST_LOOK = 10.0  # s (at the lab's pace) to wait for each director's first line
RESTART = 10.0  # s without one: its session is ended and opened anew (powered on again)
LOOK_LAG = 0.25  # s (at the lab's pace) for a look on the second to reach the view
HISTORY = 4  # lines kept of each director, to read them all as of one moment
SAME_MOMENT = 0.5  # s: looks this close together stand for one moment (each on the second)
NO_ANSWER: dict[str, Any] = {"vip": None, "heartbeat": None, "servers": None}


class Looks:
    """``harness.look`` on every director, one session each for the whole view, read in
    threads. A session that ends, or stays silent for ``RESTART`` s (a VM powered off
    holds its TCP connection), is opened anew while the view lasts.

    The directors look at themselves on each whole second, but their lines arrive one
    after the other; ``now()`` reads them as of one moment, the newest line every
    answering director has sent (a director whose line is late would otherwise still
    show the VIP the other has just taken: a split brain that never was)."""

    def __init__(self, lab: Backend, seconds: float) -> None:
        self.lab = lab
        self._end = time.monotonic() + seconds
        self._lock = threading.Lock()
        # (when it came, monotonic; the line), newest last; empty while not answering
        self._lines: dict[str, deque[tuple[float, dict[str, Any]]]] = {
            d.name: deque(maxlen=HISTORY) for d in lab.topology.directors}
        self._heard: dict[str, float] = {}  # the last line, or the session's start
        self._procs: dict[str, subprocess.Popen[str]] = {}
        self._closed = threading.Event()
        for d in lab.topology.directors:
            threading.Thread(target=self._follow, args=(d.name,), daemon=True).start()

    def _follow(self, name: str) -> None:
        while not self._closed.is_set() and (left := self._end - time.monotonic()) > 0:
            started = time.monotonic()
            try:
                proc = background(self.lab, name, [self.lab.python, "-m", "harness.look",
                                                   "--seconds", f"{left + 5:.0f}"],
                                  stderr=subprocess.DEVNULL)
            except (HalabError, OSError, subprocess.SubprocessError):
                self._closed.wait(1.0)
                continue
            with self._lock:
                self._procs[name] = proc
                self._heard[name] = time.monotonic()
            if not self._closed.is_set():
                assert proc.stdout is not None
                for line in proc.stdout:
                    try:
                        obj = json.loads(line)
                        float(obj["t"])
                    except (ValueError, KeyError, TypeError):
                        continue  # not a look (ssh's own words)
                    with self._lock:
                        self._heard[name] = time.monotonic()
                        self._lines[name].append((self._heard[name], obj))
            with self._lock:
                self._lines[name].clear()  # the session ended: not answering
            proc.kill()
            proc.wait()
            self._closed.wait(max(0.0, 1.0 - (time.monotonic() - started)))

    def _reap_silent(self) -> None:
        now = time.monotonic()
        with self._lock:
            for name, proc in self._procs.items():
                if now - self._heard[name] > RESTART and proc.poll() is None:
                    proc.kill()  # its reader sees the end and opens a new session
                    self._heard[name] = now

    def now(self) -> dict[str, dict[str, Any]]:
        """Each director as it saw itself at one moment: VIP, heartbeat, balancer; each
        None when not answering (no line for ``STALE`` s: powered off, cut off, not yet
        heard). The moment is the newest every answering director has reached."""
        self._reap_silent()
        t = time.monotonic()
        with self._lock:
            fresh = {n: list(lines) for n, lines in self._lines.items()
                     if lines and t - lines[-1][0] <= STALE}
        moment = min((float(lines[-1][1]["t"]) for lines in fresh.values()), default=0.0)
        seen = {}
        for name in self._lines:
            at = [obj for _, obj in fresh.get(name, []) if obj["t"] <= moment + SAME_MOMENT]
            seen[name] = self._facts(at[-1] if at else fresh[name][0][1]) if name in fresh \
                else dict(NO_ANSWER)
        return seen

    def _facts(self, obj: dict[str, Any]) -> dict[str, Any]:
        out = dict(NO_ANSWER)
        try:
            out["vip"] = vip_state(obj["addr"].encode(), str(self.lab.topology.vip.address))
            if (st := obj["heartbeat"]) is not None:
                out["heartbeat"] = {
                    "state": st["state"],
                    "peers": {p["name"]: {"state": p["state"], "alive": p["alive"],
                                          "last_heard_ms": p["last_heard_ms"],
                                          "links": p["links"]} for p in st["peers"]}}
            if (lb := obj["balancer"]) is not None:
                out["servers"] = [{"name": s["name"], "state": s["state"],
                                   "weight": s["weight"], "active": s["active"]}
                                  for s in lb["servers"]]
        except (ValueError, KeyError, TypeError, AttributeError):
            pass  # a daemon starting, or a line that is not one: shown as no answer
        return out

    def first(self, timeout: float) -> None:
        """Wait (bounded) until every director has been heard once."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if all(self._lines.values()):
                    return
            time.sleep(0.05)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            procs = list(self._procs.values())
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


class Watch:
    def __init__(self, lab: Backend, seconds: float) -> None:
        self.lab = lab
        self.client = Client(lab, seconds)
        self.events: deque[tuple[float, str]] = deque(maxlen=EVENTS)
        self.last: dict[str, Any] = {}
        self.looks = Looks(lab, seconds)
        self.looks.first(FIRST_LOOK * lab.slowness)
        self.ok = self.failed = 0
        self.served = True  # the client's last request

    def wait_next(self) -> None:
        """Until the next sample: just after the directors' next looks (on the second)
        have come in."""
        offset = min(LOOK_LAG * self.lab.slowness, 0.8)
        time.sleep((offset - time.time()) % 1.0 or 1.0)

    def _event(self, t: float, what: str) -> None:
        self.events.append((t, what))

    def sample(self) -> dict[str, Any]:
        """The facts now, and what changed since the last sample (as events)."""
        t = time.time()
        names = [d.name for d in self.lab.topology.directors]
        seen = self.looks.now()
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
        self.looks.close()


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
    require_up(lab)
    w = Watch(lab, seconds)
    end = time.monotonic() + seconds
    try:
        if as_json:
            while time.monotonic() < end:
                print(json.dumps(w.sample()), flush=True)
                w.wait_next()
            return 0
        with Live(render(w.sample()), console=console, refresh_per_second=4,
                  screen=False) as live:
            while time.monotonic() < end:
                w.wait_next()
                live.update(render(w.sample()))
        return 0
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # | head
        sys.stderr.close()
        return 0
    finally:
        w.close()
