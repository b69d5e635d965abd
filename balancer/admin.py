"""Observing and steering the balancer while it runs.

* The admin HTTP listener (``[admin] bind``; the firewall lets only the
  private network in): ``/`` an HTML stats page in the spirit of HAProxy's,
  ``/stats.json``, ``/metrics`` (Prometheus text format).
* The runtime API on a unix socket (``[global] admin_socket``), one command a
  line, like HAProxy's::

      show servers | show stat [json] | show info
      set server NAME state ready|drain|maint
      set server NAME weight 0-256
      set server NAME health up|down

  A command that is not understood or not possible (unknown server, command
  or setting, a value out of range, an argument missing) changes nothing and
  answers ``error: <reason>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from balancer.runtime import Balancer
from balancer.scheduler import Admin
from daemonkit import control

HELP = """\
commands:
  show servers                       one line per server
  show stat [json]                   all counters (text or JSON)
  show info                          frontend counters
  set server NAME state ready|drain|maint
  set server NAME weight 0-256
  set server NAME health up|down
  help
"""


# --- runtime API --------------------------------------------------------------------


SHOWS = (["show", "servers"], ["show", "stat"], ["show", "stat", "json"], ["show", "info"])
SETTINGS = {"state": "ready, drain or maint", "weight": "0-256", "health": "up or down"}
SET_USAGE = "set server NAME state|weight|health VALUE"
WEIGHT = re.compile(r"[+-]?[0-9]{1,9}")


def _error(reason: str) -> str:
    return f"error: {reason}\n"


def execute(bal: Balancer, line: str) -> str:
    """Run one runtime command; the answer ends with a newline. A command that is not
    understood or not possible changes nothing and answers ``error: <reason>`` (its
    first line; balancerctl then exits 1)."""
    words = line.split()
    if not words or words == ["help"]:
        return HELP
    if words in SHOWS:
        return render(words, bal.snapshot())
    if words[0] == "show":
        return _error(f"unknown show command {' '.join(words[1:])!r}: "
                      "show servers, show stat [json] or show info")
    if words[0] == "set":
        return _set(bal, words)
    return _error(f"unknown command {line.strip()!r}") + HELP


def _set(bal: Balancer, words: list[str]) -> str:
    if len(words) < 2:
        return _error(f"missing argument: {SET_USAGE}")
    if words[1] != "server":
        return _error(f"cannot set {words[1]!r}: {SET_USAGE}")
    if len(words) < 3:
        return _error(f"missing server name: {SET_USAGE}")
    name = words[2]
    if name not in bal.runtimes:
        return _error(f"no server {name!r} (servers: {', '.join(bal.runtimes)})")
    if len(words) < 4:
        return _error(f"missing what to set: {SET_USAGE}")
    what = words[3]
    if what not in SETTINGS:
        return _error(f"unknown setting {what!r}: state, weight or health")
    if len(words) < 5:
        return _error(f"missing value: {what} must be {SETTINGS[what]}")
    if len(words) > 5:
        return _error(f"unexpected {' '.join(words[5:])!r} after {what} {words[4]}")
    value = words[4]
    if what == "state":
        try:
            state = Admin(value)
        except ValueError:
            return _error(f"unknown state {value!r}: state must be ready, drain or maint")
        bal.set_admin(name, state)
        return f"server {name} state {state.value}\n"
    if what == "weight":
        if not WEIGHT.fullmatch(value):
            return _error(f"weight {value!r} is not a number: weight must be 0-256")
        weight = int(value)
        if not 0 <= weight <= 256:
            return _error(f"weight {weight} is out of range: weight must be 0-256")
        bal.set_weight(name, weight)
        return f"server {name} weight {weight}\n"
    if value not in ("up", "down"):
        return _error(f"unknown health {value!r}: health must be up or down")
    rt = bal.runtimes[name]
    tr = rt.health.force(value == "up", "set by admin", bal.loop.time())
    if tr is not None:
        bal.apply(rt, tr, source="admin")
    return f"server {name} health {value}\n"


def servers_table(snap: dict[str, Any]) -> str:
    cols = ("name", "address", "state", "weight", "active", "requests", "connect_errors",
            "response_errors", "retries", "redispatches", "downs", "last_check")
    rows = [[str(s[c]) for c in cols] for s in snap["servers"]]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
              for r in rows]
    return "\n".join(lines) + "\n"


async def serve_runtime_socket(bal: Balancer, path: str,
                               cluster: Cluster | None = None) -> asyncio.AbstractServer:
    async def handle(line: str) -> str:
        return await cluster.execute(line) if cluster else execute(bal, line)

    return await control.serve(path, handle, bal.log,
                               lambda e: _error(f"internal error: {type(e).__name__}: {e}"))


# --- metrics -------------------------------------------------------------------------


class _Collector:
    def __init__(self) -> None:
        self.snap: dict[str, Any] = {}  # set before each scrape

    def collect(self) -> Iterator[Metric]:
        snap = self.snap
        fe = snap["frontend"]
        yield GaugeMetricFamily("halab_balancer_frontend_connections",
                                "Client connections open now", value=fe["current"])
        yield CounterMetricFamily("halab_balancer_frontend_connections",
                                  "Client connections accepted", value=fe["connections"])
        yield CounterMetricFamily("halab_balancer_frontend_requests",
                                  "Requests received", value=fe["requests"])
        codes = CounterMetricFamily("halab_balancer_frontend_responses",
                                    "Responses sent to clients by class", labels=["code"])
        for code, n in sorted(fe["responses"].items()):
            codes.add_metric([code], n)
        yield codes
        yield GaugeMetricFamily("halab_balancer_frontend_maxconn",
                                "Client connections taken at once (maxconn, lowered to what "
                                "the file descriptor limit allows)", value=fe["maxconn"])
        yield CounterMetricFamily("halab_balancer_fd_exhausted",
                                  "Checks and connects that failed for lack of file descriptors",
                                  value=fe["fd_exhausted"])
        yield GaugeMetricFamily("halab_balancer_queue", "Requests waiting for a server slot",
                                value=fe["queued"])
        yield CounterMetricFamily("halab_balancer_last_resort_attempts",
                                  "Attempts on a DOWN server because every server was DOWN",
                                  value=fe["last_resort"])
        gauges: dict[str, tuple[str, Callable[[dict[str, Any]], int]]] = {
            "up": ("Server is UP (1) or DOWN (0)", lambda s: 1 if s["up"] else 0),
            "usable": ("Server takes new requests (UP and ready)",
                       lambda s: 1 if s["up"] and s["admin"] == "ready" else 0),
            "weight": ("Configured weight", lambda s: s["weight"]),
            "active": ("Requests or connections in progress", lambda s: s["active"]),
            "idle_connections": ("Idle pooled keep-alive connections",
                                 lambda s: s["idle_pooled"]),
        }
        for key, (doc, fn) in gauges.items():
            g = GaugeMetricFamily(f"halab_balancer_server_{key}", doc, labels=["server"])
            for s in snap["servers"]:
                g.add_metric([s["name"]], fn(s))
            yield g
        counters = {
            "requests": "Requests (http) or connections (tcp) sent",
            "connect_errors": "Failed connection attempts",
            "response_errors": "Failures after connecting",
            "retries": "Failed attempts that were retried",
            "redispatches": "Requests moved to another server",
            "downs": "Transitions to DOWN",
            "bytes_in": "Bytes received from the server",
            "bytes_out": "Bytes sent to the server",
        }
        for key, doc in counters.items():
            c = CounterMetricFamily(f"halab_balancer_server_{key}", doc, labels=["server"])
            for s in snap["servers"]:
                c.add_metric([s["name"]], s[key])
            yield c


# --- several workers ----------------------------------------------------------------


def worker_socket(path: str, worker: int) -> str:
    """Worker 0 answers on the configured socket, the others on their own."""
    return path if worker == 0 else f"{path}.w{worker}"


SUMMED = ("active", "idle_pooled", "requests", "connect_errors", "response_errors", "retries",
          "redispatches", "bytes_in", "bytes_out", "downs", "checks_failed")
FE_SUMMED = ("maxconn", "connections", "current", "requests", "bad_requests", "queued",
             "queue_timeouts", "refused", "fd_exhausted", "last_resort")


def merge(snaps: list[dict[str, Any]]) -> dict[str, Any]:
    """One view of several workers: counters summed, states shown per worker if they differ."""
    out: dict[str, Any] = json.loads(json.dumps(snaps[0]))  # a deep copy
    out["workers"] = len(snaps)
    fe = out["frontend"]
    for other in snaps[1:]:
        ofe = other["frontend"]
        for k in FE_SUMMED:
            fe[k] += ofe[k]
        for group in ("responses", "generated"):
            for k, v in ofe[group].items():
                fe[group][k] = fe[group].get(k, 0) + v
    for srv in out["servers"]:
        peers = [s for o in snaps[1:] for s in o["servers"] if s["name"] == srv["name"]]
        for p in peers:
            for k in SUMMED:
                srv[k] += p[k]
            for k, v in p["responses"].items():
                srv["responses"][k] = srv["responses"].get(k, 0) + v
        states = [srv["state"]] + [p["state"] for p in peers]
        if len(set(states)) > 1:
            srv["state"] = "/".join(states)
    return out


class Cluster:
    """Worker 0's view of all workers: shows are merged, sets are applied everywhere."""

    def __init__(self, bal: Balancer, socket_path: str, workers: int) -> None:
        self.bal = bal
        self.peers = [worker_socket(socket_path, i) for i in range(1, workers)]

    async def snapshot(self) -> dict[str, Any]:
        snaps = [self.bal.snapshot()]
        for path in self.peers:
            try:
                snaps.append(json.loads(await control.arequest(path, "show stat json")))
            except (OSError, TimeoutError, ValueError):
                self.bal.log.warning("worker_unreachable", socket=path)
        return merge(snaps)

    async def execute(self, line: str) -> str:
        words = line.split()
        if words[:1] == ["set"]:
            answer = execute(self.bal, line)
            if not answer.startswith("error"):
                for path in self.peers:
                    try:
                        peer = await control.arequest(path, line)
                    except (OSError, TimeoutError):
                        peer = "error: unreachable\n"
                    if not peer.startswith("server "):
                        reason = peer.removeprefix("error: ").strip() or "no answer"
                        answer += _error(f"worker {path}: {reason}")
            return answer
        if words in SHOWS:
            return render(words, await self.snapshot())
        return execute(self.bal, line)


def render(words: list[str], snap: dict[str, Any]) -> str:
    if words == ["show", "servers"]:
        return servers_table(snap)
    if words == ["show", "stat", "json"]:
        return json.dumps(snap, indent=2) + "\n"
    if words == ["show", "info"]:
        return json.dumps({k: v for k, v in snap.items() if k != "servers"}, indent=2) + "\n"
    return servers_table(snap) + json.dumps(snap["frontend"]) + "\n"


# --- the stats page ----------------------------------------------------------------------

STATE_COLOURS = {"UP": "#c1f0c1", "DOWN": "#f6b3b3", "MAINT": "#c9c9f2", "DRAIN": "#f6e3a8",
                 "DRAIN (DOWN)": "#f6b3b3"}


def stats_html(snap: dict[str, Any]) -> str:
    fe = snap["frontend"]
    cols = [("server", "name"), ("address", "address"), ("state", "state"),
            ("weight", "weight"), ("eff. weight", "effective_weight"), ("active", "active"),
            ("idle conns", "idle_pooled"), ("requests", "requests"),
            ("conn errors", "connect_errors"), ("resp errors", "response_errors"),
            ("retries", "retries"), ("redispatches", "redispatches"), ("downs", "downs"),
            ("last check", "last_check"), ("check age s", "last_check_age_s"),
            ("in state s", "in_state_s")]
    head = "".join(f"<th>{html.escape(c)}</th>" for c, _ in cols) + "<th>responses</th>"
    rows = []
    for s in snap["servers"]:
        colour = STATE_COLOURS.get(s["state"], "#fff")
        cells = "".join(f"<td>{html.escape(str(s[k]))}</td>" for _, k in cols)
        resp = ", ".join(f"{k}: {v}" for k, v in sorted(s["responses"].items()))
        rows.append(f'<tr style="background:{colour}">{cells}<td>{html.escape(resp)}</td></tr>')
    fe_resp = ", ".join(f"{k}: {v}" for k, v in sorted(fe["responses"].items()))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="2">
<title>halab balancer statistics</title>
<style>body{{font-family:sans-serif;font-size:13px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #999;padding:2px 6px;text-align:right}} th{{background:#ddd}}
td:first-child{{text-align:left;font-weight:bold}}</style></head>
<body><h2>halab balancer</h2>
<p>mode {html.escape(snap['mode'])}, algorithm {html.escape(snap['algorithm'])},
{snap.get('workers', 1)} worker(s),
uptime {snap['uptime_s']:.0f} s{', <b>draining</b>' if snap['draining'] else ''}</p>
<p>frontend {html.escape(', '.join(fe['binds']))}: {fe['current']} connections open
(maxconn {fe['maxconn']}),
{fe['connections']} accepted, {fe['requests']} requests, {fe['bad_requests']} bad requests,
{fe['queued']} queued; responses {html.escape(fe_resp)}</p>
<table><tr>{head}</tr>
{''.join(rows)}
</table>
<p><a href="/stats.json">/stats.json</a> &middot; <a href="/metrics">/metrics</a></p>
</body></html>
"""


async def serve_admin_http(bal: Balancer, host: str, port: int,
                           cluster: Cluster | None = None) -> asyncio.AbstractServer:
    registry = CollectorRegistry(auto_describe=False)
    collector = _Collector()
    registry.register(collector)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                head = await reader.readuntil(b"\r\n\r\n")
            parts = head.split(b"\r\n", 1)[0].split()
            method, path = (parts[0], parts[1].split(b"?")[0]) if len(parts) >= 2 else (b"", b"")
            collector.snap = await cluster.snapshot() if cluster else bal.snapshot()
            status, ctype, body = route(collector.snap, registry, method, path)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            writer.close()
            return
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            f"Cache-Control: no-store\r\nConnection: close\r\n\r\n".encode() + body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, host, port, reuse_address=True)


def route(snap: dict[str, Any], registry: CollectorRegistry, method: bytes,
          path: bytes) -> tuple[str, str, bytes]:
    if method not in (b"GET", b"HEAD"):
        return "405 Method Not Allowed", "text/plain", b"GET only\n"
    if path in (b"/", b"/stats"):
        return "200 OK", "text/html; charset=utf-8", stats_html(snap).encode()
    if path == b"/stats.json":
        return "200 OK", "application/json", json.dumps(snap).encode()
    if path == b"/metrics":
        return "200 OK", "text/plain; version=0.0.4", generate_latest(registry)
    return "404 Not Found", "text/plain", b"not found: try /, /stats.json or /metrics\n"
