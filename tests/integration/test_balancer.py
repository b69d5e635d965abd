"""The balancer in the live lab: round robin, weights, ejection without a failed request.

The client sends sequential requests to the VIP (a new TCP connection each,
1 s timeout) while a fault hits web0. The bounds are halab's promise at the
default configuration: zero failed requests; web0 DOWN within 0.5 s when it
refuses (nginx stopped, or gracefully quit) and within 1.0 s when it is
blackholed; back after `rise` good checks when healed.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Callable, Iterator

import pytest

from balancer.config import HealthConfig
from lab.backend import Backend
from lab.faults import Blackhole, Fault, SignalService, StopService
from lab.poll import wait_until
from lab.timeline import event_times
from lab.topology import Topology
from provision.director import balancer_socket

from .net import ClientLoop

pytestmark = pytest.mark.integration

H = HealthConfig()  # the defaults provision/ renders
# Budget to come back: a DOWN server is checked every downinter, and needs rise good checks.
REJOIN_BUDGET = H.downinter + H.rise * (H.fastinter + H.timeout) + 1.0


def page(name: str) -> str:
    return f"{name} - It works!"


def vip_url(topo: Topology) -> str:
    return f"http://{topo.vip.address}:{topo.ports.http}/"


def ctl(lab: Backend, holder: str, command: str) -> str:
    sock = balancer_socket(lab.paths(holder))
    return lab.run(holder, [lab.python, "-m", "balancer.ctl", "-s", sock, *command.split()]).text


def servers(lab: Backend, holder: str) -> dict[str, dict[str, object]]:
    snap = json.loads(ctl(lab, holder, "show stat json"))
    return {s["name"]: s for s in snap["servers"]}


def wait_state(lab: Backend, holder: str, server: str, state: str, timeout: float) -> None:
    wait_until(lambda: servers(lab, holder)[server]["state"] == state or None, timeout,
               f"{server} {state} on {holder}'s balancer")


@pytest.fixture
def healthy(lab: Backend, topo: Topology, vip_holder: str) -> Iterator[str]:
    """Every web node UP on the VIP holder's balancer, before and after the test."""
    for w in topo.webs:
        wait_state(lab, vip_holder, w.name, "UP", REJOIN_BUDGET)
    yield vip_holder
    for w in topo.webs:
        wait_state(lab, vip_holder, w.name, "UP", REJOIN_BUDGET)


def test_round_robin_alternates_exactly(lab: Backend, topo: Topology, healthy: str,
                                        record: Callable[..., None]) -> None:
    results = ClientLoop(lab, topo.clients[0].name, vip_url(topo), count=100).finish()
    assert not ClientLoop.failures(results)
    bodies = [r["body"] for r in results]
    counts = collections.Counter(str(b).split()[0] for b in bodies)
    record(check="round robin", requests=len(results), split=dict(sorted(counts.items())),
           alternating=all(bodies[i] != bodies[i + 1] for i in range(len(bodies) - 1)))
    first, second = page(topo.webs[0].name), page(topo.webs[1].name)
    assert bodies in ([first, second] * 50, [second, first] * 50)


def test_weights_change_the_split(lab: Backend, topo: Topology, healthy: str) -> None:
    w0, w1 = topo.webs[0].name, topo.webs[1].name
    ctl(lab, healthy, f"set server {w0} weight 3")
    try:
        results = ClientLoop(lab, topo.clients[0].name, vip_url(topo), count=100).finish()
    finally:
        ctl(lab, healthy, f"set server {w0} weight 1")
    counts = collections.Counter(r["body"] for r in results)
    assert counts == {page(w0): 75, page(w1): 25}


FAULTS = {
    "refusing": (lambda w: StopService(w, service="nginx"), 0.5),
    "graceful-quit": (lambda w: SignalService(w, service="nginx", signal="QUIT"), 0.5),
    "blackholed": (lambda w: Blackhole(w), 1.0),
}


@pytest.mark.parametrize("kind", list(FAULTS))
def test_ejection_without_a_failed_request(lab: Backend, topo: Topology, healthy: str,
                                           kind: str, record: Callable[..., None]) -> None:
    make, bound = FAULTS[kind]
    victim, other = topo.webs[0].name, topo.webs[1].name
    fault: Fault = make(victim)
    loop = ClientLoop(lab, topo.clients[0].name, vip_url(topo), count=300, timeout=1.0)
    try:
        loop.read(20)  # traffic flows before the fault
        t_fault = fault.inject(lab)
        results = loop.finish()
        downs = [t for t in event_times(lab, healthy, "balancer", "server_down", server=victim)
                 if t >= t_fault]
        state = servers(lab, healthy)[victim]["state"]
    finally:
        loop.stop()
        fault.heal(lab)
    failed = ClientLoop.failures(results)
    record(check="ejection", what=f"web0 {kind}", down_ms=round((downs[0] - t_fault) * 1000, 1)
           if downs else "never", bound_ms=int(bound * 1000), failed_requests=len(failed),
           requests=len(results))
    assert not failed, f"{len(failed)} failed requests: {failed[:3]}"
    assert state == "DOWN"
    assert downs, f"{victim} was never marked DOWN"
    assert downs[0] - t_fault <= bound, f"DOWN after {downs[0] - t_fault:.3f} s > {bound} s"
    late = [r for r in results if float(r["t"]) > downs[0] + 0.05]  # type: ignore[arg-type]
    assert late and all(r["body"] == page(other) for r in late)
    # healed: web0 rejoins after `rise` good checks and gets traffic again
    wait_state(lab, healthy, victim, "UP", REJOIN_BUDGET)
    again = ClientLoop(lab, topo.clients[0].name, vip_url(topo), count=4).finish()
    assert {r["body"] for r in again} == {page(victim), page(other)}


def test_drain_moves_new_requests_without_a_failure(lab: Backend, topo: Topology,
                                                    healthy: str) -> None:
    victim, other = topo.webs[0].name, topo.webs[1].name
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
    assert after and all(r["body"] == page(other) for r in after)


def test_all_down_gives_503_then_recovers(lab: Backend, topo: Topology, healthy: str) -> None:
    faults = [StopService(w.name, service="nginx") for w in topo.webs]
    client = topo.clients[0].name
    try:
        for f in faults:
            f.inject(lab)
        res = lab.run(client, ["curl", "-s", "-w", "\n%{http_code}", vip_url(topo)],
                      check=False)
        body, _, code = res.text.rpartition("\n")
        assert code == "503" and "no server is available" in body
    finally:
        for f in faults:
            f.heal(lab)
    for w in topo.webs:
        wait_state(lab, healthy, w.name, "UP", REJOIN_BUDGET)
    assert not ClientLoop.failures(ClientLoop(lab, client, vip_url(topo), count=10).finish())


def test_reload_under_load_drops_nothing(lab: Backend, topo: Topology, healthy: str) -> None:
    pid = next(s.pid for s in lab.services(healthy) if s.name == "balancer")
    loop = ClientLoop(lab, topo.clients[0].name, vip_url(topo), count=300)
    try:
        loop.read(20)
        lab.run(healthy, ["kill", "-HUP", str(pid)])
        results = loop.finish()
    finally:
        loop.stop()
    assert not ClientLoop.failures(results)
    assert "event=reloaded" in lab.service_log(healthy, "balancer").read_text()
    assert next(s.pid for s in lab.services(healthy) if s.name == "balancer") == pid


def test_stats_page_json_and_metrics(lab: Backend, topo: Topology, healthy: str) -> None:
    holder = topo.hosts[healthy]
    base = f"http://{holder.address('private')}:{topo.ports.admin}"
    viewer = topo.webs[1].name  # anyone on the private network
    page_html = lab.run(viewer, ["curl", "-sf", f"{base}/"]).text
    assert "<table>" in page_html and all(w.name in page_html for w in topo.webs)
    snap = json.loads(lab.run(viewer, ["curl", "-sf", f"{base}/stats.json"]).text)
    assert {s["name"]: s["state"] for s in snap["servers"]} == {w.name: "UP" for w in topo.webs}
    metrics = lab.run(viewer, ["curl", "-sf", f"{base}/metrics"]).text
    for w in topo.webs:
        assert f'halab_balancer_server_up{{server="{w.name}"}} 1.0' in metrics


@pytest.mark.parametrize(("raw", "status"), [
    ("GARBAGE\\r\\n\\r\\n", "400"),
    ("GET /{} HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n".format("a" * 9000), "414"),
    ("GET / HTTP/1.1\\r\\nHost: x\\r\\nX: {}\\r\\n\\r\\n".format("a" * 20000), "431"),
])
def test_bad_requests_get_4xx_and_service_goes_on(lab: Backend, topo: Topology, healthy: str,
                                                  raw: str, status: str) -> None:
    client = topo.clients[0].name
    pid = next(s.pid for s in lab.services(healthy) if s.name == "balancer")
    out = lab.run(client, ["sh", "-c", f"printf '{raw}' | nc -w 2 {topo.vip.address} "
                                       f"{topo.ports.http}"], check=False).text
    assert out.startswith(f"HTTP/1.1 {status} "), out[:100]
    assert not ClientLoop.failures(ClientLoop(lab, client, vip_url(topo), count=4).finish())
    assert next(s.pid for s in lab.services(healthy) if s.name == "balancer") == pid
