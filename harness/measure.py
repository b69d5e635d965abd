"""What a client saw of a fault, as the suite and ``halab fault --measure`` measure it.

A prober on the client sends sequential requests through the VIP (a new TCP connection
each, 200 ms to connect at the lab's pace: the anchors' prober) while a sampler reads,
over and over, which directors announce the VIP, and the client's neighbour table is
watched. The fault happens in the middle (``act``); the timeline puts together the
fault, the daemons' events on each director, the client's ARP entry re-pointed, every
failed request and the first success, every change the sampler saw, and the budget
the directors report.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from harness.timeline import NeighWatch, Timeline
from harness.traffic import ClientLoop, VipSample, VipSampler
from lab.backend import Backend
from lab.errors import HalabError
from lab.topology import Topology

CLIENT_TIMEOUT = 0.2  # the anchors' prober: 200 ms to connect
PROBE_GAP_MS = 2.0  # a request every few ms: >= 100 per second
HB_EVENTS = {"peer_late", "peer_dead", "transition", "vip_added", "vip_removed", "garp",
             "vip_draining", "handover_prepare", "handover_forwarding", "track_failed",
             "link_down"}


def client_timeout(lab: Backend) -> float:
    """Under software emulation a connection through the VIP now and then takes longer
    than 200 ms to establish (seen: 1 in ~30 before any fault): the timeout follows the
    lab's pace, and so does the outage it may add."""
    return CLIENT_TIMEOUT * lab.slowness


def vip_url(topo: Topology) -> str:
    return f"http://{topo.vip.address}:{topo.ports.http}/"


def conclusive(samples: list[VipSample]) -> list[VipSample]:
    """The samples that stand for one moment (see VipSampler)."""
    return [s for s in samples if s.holders is not None]


@dataclass
class Observation:
    t0: float  # the fault's time (epoch s)
    results: list[dict[str, object]]  # the client's requests
    samples: list[VipSample]
    neigh: list[tuple[float, str]]  # the client's ARP changes for the VIP


def observe(lab: Backend, count: int, act: Callable[[ClientLoop], float],
            sample_s: float = 30.0) -> Observation:
    """Run ``act`` (given the running prober, it returns the fault's time) while the
    client probes the VIP (at most ``count`` requests), the VIP sampler runs and the
    client's ARP table is watched. The prober is read to its end unless ``act`` stops
    it. The VIP sampler stops by itself after ``sample_s``."""
    topo = lab.topology
    watch = NeighWatch(lab, topo.clients[0].name, str(topo.vip.address))
    loop = ClientLoop(lab, topo.clients[0].name, vip_url(topo), count=count,
                      gap_ms=PROBE_GAP_MS, timeout=client_timeout(lab))
    sampler = VipSampler(lab, seconds=sample_s)
    try:
        loop.read(30)  # traffic flows before the fault
        t0 = act(loop)
        results = loop.finish()
    finally:
        loop.stop()
        samples = sampler.stop()
        neigh = watch.stop()
    return Observation(t0, results, samples, neigh)


def until_back(loop: ClientLoop, t0: float, after: float, deadline: float) -> bool:
    """Read the prober until service is back and has stayed so: at least ``after``
    seconds past the fault, and the last 20 requests, all begun after it, served. Then
    stop the prober; also at ``deadline`` (monotonic), returning False: not back."""
    while time.monotonic() < deadline:
        want = len(loop.results) + 10
        results = loop.read(want)
        if len(results) < want:
            break  # the prober ended (its count)
        last = results[-20:]
        begun = float(last[0]["t"])  # type: ignore[arg-type]
        if begun >= t0 + after and all(r.get("status") == 200 for r in last):
            loop.stop()
            return True
    loop.stop()
    return False


def timeline(lab: Backend, title: str, obs: Observation) -> Timeline:
    """The timeline of one fault, with what was measured (``Timeline.measured``)."""
    topo = lab.topology
    t0, results, neigh = obs.t0, obs.results, obs.neigh
    tl = Timeline(title, t0, budget(lab))
    tl.add(t0, "fault", "fault")
    # every request up to half a second past the outage (at least the first second)
    until = t0 + min(max(1.0, ClientLoop.outage(results, t0) + 0.5), 60.0)
    for d in topo.directors:
        try:
            tl.add_log(lab, d.name, "heartbeat", HB_EVENTS, t0 - 0.5, until)
        except HalabError as e:  # a VM still powered off (its disk is its own)
            tl.add(t0, f"{d.name}/heartbeat", "log_not_read", str(e))
    # the survivor's verdict says how long the peer had been silent: its last heartbeat
    for m in [m for m in tl.marks if m.what == "peer_dead"]:
        silent = float(m.detail.split("silent_ms=")[1].split()[0])
        tl.add(m.t - silent / 1000, m.source, "last_heartbeat_received")
    for t, mac in neigh:
        if t >= t0:
            tl.add(t, "client/arp", "vip_mac_changed", mac)
    tl.add_requests([r for r in results if float(r["t"]) < until])  # type: ignore[arg-type]
    last: tuple[str, ...] | None = None
    for s in conclusive(obs.samples):
        if s.holders != last and s.end >= t0 - 0.2:  # a sample is done at its end
            tl.add(s.end, "sampler", "vip_announced_by", ",".join(s.holders or ()) or "nobody")
        last = s.holders
    vip_up = [m.t for m in tl.marks if m.what == "vip_added" and m.t >= t0]
    if vip_up:
        tl.measured["vip_added_ms"] = tl.rel_ms(vip_up[0])
    seen = [t for t, _ in neigh if t >= t0]
    if seen:
        tl.measured["arp_seen_by_client_ms"] = tl.rel_ms(seen[0])
    before = [r for r in results if float(r["t"]) < t0]  # type: ignore[arg-type]
    tl.measured["probe_rate_per_s"] = round(ClientLoop.rate(before), 1)
    tl.measured["vip_samples"] = len(obs.samples)
    tl.measured["inconclusive"] = len(obs.samples) - len(conclusive(obs.samples))
    return tl


def budget(lab: Backend) -> dict[str, float]:
    """The failover budget (ms) a running director reports for its timers; none if no
    director answers (both powered off, say)."""
    for d in lab.topology.directors:
        try:
            res = lab.run(d.name, ["hbctl", "status", "--json"], check=False,
                          timeout=10 * lab.slowness)
        except HalabError:
            continue  # powered off, or cut off from us: ask the next
        if res.ok:
            budget = json.loads(res.text).get("failover_budget_ms", {})
            return {k: float(v) for k, v in budget.items()}
    return {}
