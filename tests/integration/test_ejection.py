"""Check 2, ejection: a web node that refuses, stops, quits gracefully, goes silent
(blackholed) or is drained costs the client no request while it loops through the
VIP; the balancer marks it DOWN within the bound its health-check timers give
(seen on the stats endpoint, like HAProxy's lastchg, and in its event log); it
rejoins after ``rise`` good checks; with every node down the client gets a clean
503, and service comes back with them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from balancer.config import HealthConfig
from harness.faults import Blackhole, Fault, Faults, Refuse, SignalService, StopService
from harness.timeline import event_times
from harness.traffic import ClientLoop
from lab.backend import Backend
from lab.topology import Topology

from .common import (
    ctl,
    health,
    other,
    page,
    rejoin_budget,
    servers,
    stats_url,
    vip_url,
    wait_state,
)

pytestmark = pytest.mark.integration

MARGIN = 0.2  # scheduling noise on a loaded 2-core machine


def down_bound(h: HealthConfig, silent: bool, slowness: float) -> float:
    """When a node must be DOWN at the latest, from the director's own health config. A
    node that answers with a refusal fails its next check (within `inter`) and `fall - 1`
    more `fastinter` apart: timers, run at the lab's pace (x slowness). A silent one
    costs each of those `fall` checks its `timeout` on top, which provision/ already
    rendered at the lab's pace. (Real traffic usually takes it down sooner.)"""
    timers = h.inter + (h.fall - 1) * h.fastinter
    return (timers + MARGIN) * slowness + (h.fall * h.timeout if silent else 0.0)


FAULTS: dict[str, tuple[Callable[[str, int], Fault], bool]] = {  # (fault, silent)
    "refusing": (lambda w, port: Refuse(w, port=port), False),
    "stopped": (lambda w, port: StopService(w, service="nginx"), False),
    "graceful-quit": (lambda w, port: SignalService(w, service="nginx", signal="QUIT"),
                      False),
    "blackholed": (lambda w, port: Blackhole(w), True),
}


def down_since_stats(lab: Backend, topo: Topology, director: str, viewer: str,
                     server: str) -> tuple[str, float]:
    """(state, latest epoch time it can have entered it) from the stats endpoint,
    fetched from ``viewer`` on the private network; "latest" by the viewer's clock
    when the page had come (the faults' times are the hosts' too: a command's round
    trip back here, a second over SSH under TCG, is no part of it)."""
    fetch = 'curl -sf --max-time 2 "$1" && echo && echo $EPOCHREALTIME'
    res = lab.run(viewer, ["bash", "-c", fetch, "bash", stats_url(topo, director)])
    body, _, after = res.text.rstrip().rpartition("\n")
    srv = {s["name"]: s for s in json.loads(body)["servers"]}[server]
    return str(srv["state"]), float(after) - float(srv["in_state_s"])


@pytest.mark.parametrize("kind", list(FAULTS))
def test_ejection_without_a_failed_request(lab: Backend, topo: Topology, healthy: str,
                                           faults: Faults, kind: str,
                                           record: Callable[..., None]) -> None:
    make, silent = FAULTS[kind]
    bound = down_bound(health(lab, healthy), silent, lab.slowness)
    victim, survivor = topo.webs[0].name, topo.webs[1].name
    viewer = other(topo, healthy)  # the peer director reads the stats page
    fault = make(victim, topo.ports.http)
    # a request the victim holds waits until it is DOWN (then it moves): up to the
    # bound, then a request's own time (1 s at the lab's pace)
    loop = ClientLoop(lab, topo.clients[0].name, vip_url(topo), count=300,
                      timeout=bound + 1.0 * lab.slowness)
    try:
        loop.read(20)  # traffic flows before the fault
        t_fault = faults.inject(fault)
        results = loop.finish()
    finally:
        loop.stop()
    state, since = down_since_stats(lab, topo, healthy, viewer, victim)
    logged = [t for t in event_times(lab, healthy, "balancer", "server_down", server=victim)
              if t >= t_fault]
    faults.heal(fault)
    failed = ClientLoop.failures(results)
    record(check="ejection", what=f"{victim} {kind}", down_ms=round((since - t_fault) * 1000, 1),
           logged_down_ms=round((logged[0] - t_fault) * 1000, 1) if logged else "never",
           bound_ms=round(bound * 1000), failed=len(failed), requests=len(results))
    assert not failed, f"{len(failed)} failed requests: {failed[:3]}"
    assert state == "DOWN", f"the stats page shows {victim} {state}"
    assert since - t_fault <= bound, \
        f"{victim} DOWN {since - t_fault:.3f} s after the fault (stats page) > {bound:.2f} s"
    assert logged and logged[0] - t_fault <= bound, f"server_down logged at {logged}"
    late = [r for r in results if float(r["t"]) > since + 0.05]  # type: ignore[arg-type]
    assert late and all(r["body"] == page(survivor) for r in late)
    # healed: it rejoins after `rise` good checks and gets its turn again
    wait_state(lab, healthy, victim, "UP", rejoin_budget(lab, healthy))
    again = ClientLoop(lab, topo.clients[0].name, vip_url(topo), count=4).finish()
    assert {r["body"] for r in again} == {page(victim), page(survivor)}


def test_drain_moves_new_requests_without_a_failure(lab: Backend, topo: Topology,
                                                    healthy: str) -> None:
    victim, survivor = topo.webs[0].name, topo.webs[1].name
    loop = ClientLoop(lab, topo.clients[0].name, vip_url(topo), count=200)
    try:
        loop.read(20)
        assert ctl(lab, healthy, f"set server {victim} state drain").strip().endswith("drain")
        t_drain = time.time()
        results = loop.finish()
        assert servers(lab, healthy)[victim]["state"] == "DRAIN"
    finally:
        loop.stop()
        ctl(lab, healthy, f"set server {victim} state ready")
    assert not ClientLoop.failures(results)
    after = [r for r in results if float(r["t"]) > t_drain]  # type: ignore[arg-type]
    assert after and all(r["body"] == page(survivor) for r in after)


def test_all_down_gives_503_then_recovers(lab: Backend, topo: Topology, healthy: str,
                                          faults: Faults) -> None:
    client = topo.clients[0].name
    stopped = [StopService(w.name, service="nginx") for w in topo.webs]
    for f in stopped:
        faults.inject(f)
    res = lab.run(client, ["curl", "-s", "-w", "\n%{http_code}", vip_url(topo)], check=False)
    body, _, code = res.text.rpartition("\n")
    assert code == "503" and "no server is available" in body
    for f in stopped:
        faults.heal(f)
    for w in topo.webs:
        wait_state(lab, healthy, w.name, "UP", rejoin_budget(lab, healthy))
    assert not ClientLoop.failures(ClientLoop(lab, client, vip_url(topo), count=10).finish())
