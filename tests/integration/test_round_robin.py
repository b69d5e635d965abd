"""Check 1, round robin: the client's requests through the VIP alternate between the
web nodes (the seed's curl loop), weights set the split, and a keep-alive client
is balanced per request (HTTP mode), not per connection."""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable

import pytest

from harness.traffic import ClientLoop
from lab.backend import Backend
from lab.topology import Topology

from .common import ctl, page, vip_url

pytestmark = pytest.mark.integration


def bodies_recorded(results: list[dict[str, object]], record: Callable[..., None],
                    what: str) -> list[str]:
    """The pages the client got, in order; their split goes into the summary."""
    assert not ClientLoop.failures(results), ClientLoop.failures(results)[:3]
    bodies = [str(r["body"]) for r in results]
    counts = collections.Counter(b.split()[0] for b in bodies)
    record(check="round robin", what=what, requests=len(results),
           split=dict(sorted(counts.items())),
           alternating=all(a != b for a, b in itertools.pairwise(bodies)))
    return bodies


def alternations(topo: Topology, n: int) -> list[list[str]]:
    """The two exact alternations of the web pages over ``n`` requests."""
    first, second = page(topo.webs[0].name), page(topo.webs[1].name)
    return [[first, second] * (n // 2), [second, first] * (n // 2)]


def test_round_robin_alternates_exactly(lab: Backend, topo: Topology, healthy: str,
                                        record: Callable[..., None]) -> None:
    results = ClientLoop(lab, topo.clients[0].name, vip_url(topo), count=100).finish()
    bodies = bodies_recorded(results, record, "new connection each")
    assert bodies in alternations(topo, 100)


def test_weights_change_the_split(lab: Backend, topo: Topology, healthy: str,
                                  record: Callable[..., None]) -> None:
    w0, w1 = topo.webs[0].name, topo.webs[1].name
    ctl(lab, healthy, f"set server {w0} weight 3")
    try:
        results = ClientLoop(lab, topo.clients[0].name, vip_url(topo), count=100).finish()
    finally:
        ctl(lab, healthy, f"set server {w0} weight 1")
    bodies = bodies_recorded(results, record, f"weights {w0}=3 {w1}=1")
    assert collections.Counter(bodies) == {page(w0): 75, page(w1): 25}
    # smooth weighted round robin: web1's turns are spread out, never two in a row
    assert all(not (a == b == page(w1)) for a, b in itertools.pairwise(bodies))


def test_keepalive_client_is_balanced_per_request(lab: Backend, topo: Topology,
                                                  healthy: str,
                                                  record: Callable[..., None]) -> None:
    results = ClientLoop(lab, topo.clients[0].name, vip_url(topo), count=50,
                         keepalive=True).finish()
    bodies = bodies_recorded(results, record, "one keep-alive connection")
    ports = {r["port"] for r in results}
    assert len(ports) == 1, f"the client used {len(ports)} connections, not one"
    assert bodies in alternations(topo, 50)
