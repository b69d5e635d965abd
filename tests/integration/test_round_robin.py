"""Check 1, round robin: the client's requests through the VIP alternate between the
web nodes (the seed's curl loop), weights set the split, and a keep-alive client
is balanced per request (HTTP mode), not per connection."""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable

import pytest

from lab.backend import Backend
from lab.topology import Topology
from lab.traffic import ClientLoop

from .common import ctl, page, vip_url

pytestmark = pytest.mark.integration


def test_round_robin_alternates_exactly(lab: Backend, topo: Topology, healthy: str,
                                        record: Callable[..., None]) -> None:
    results = ClientLoop(lab, topo.clients[0].name, vip_url(topo), count=100).finish()
    assert not ClientLoop.failures(results)
    bodies = [r["body"] for r in results]
    counts = collections.Counter(str(b).split()[0] for b in bodies)
    record(check="round robin", what="new connection each", requests=len(results),
           split=dict(sorted(counts.items())),
           alternating=all(bodies[i] != bodies[i + 1] for i in range(len(bodies) - 1)))
    first, second = page(topo.webs[0].name), page(topo.webs[1].name)
    assert bodies in ([first, second] * 50, [second, first] * 50)


def test_weights_change_the_split(lab: Backend, topo: Topology, healthy: str,
                                  record: Callable[..., None]) -> None:
    w0, w1 = topo.webs[0].name, topo.webs[1].name
    ctl(lab, healthy, f"set server {w0} weight 3")
    try:
        results = ClientLoop(lab, topo.clients[0].name, vip_url(topo), count=100).finish()
    finally:
        ctl(lab, healthy, f"set server {w0} weight 1")
    counts = collections.Counter(r["body"] for r in results)
    record(check="round robin", what=f"weights {w0}=3 {w1}=1", requests=len(results),
           split={k.split()[0]: v for k, v in sorted(counts.items())})
    assert counts == {page(w0): 75, page(w1): 25}
    # smooth weighted round robin: web1's turns are spread out, never two in a row
    bodies = [r["body"] for r in results]
    assert all(not (a == b == page(w1)) for a, b in itertools.pairwise(bodies))


def test_keepalive_client_is_balanced_per_request(lab: Backend, topo: Topology,
                                                  healthy: str,
                                                  record: Callable[..., None]) -> None:
    results = ClientLoop(lab, topo.clients[0].name, vip_url(topo), count=50,
                         keepalive=True).finish()
    assert not ClientLoop.failures(results)
    ports = {r["port"] for r in results}
    assert len(ports) == 1, f"the client used {len(ports)} connections, not one"
    bodies = [r["body"] for r in results]
    counts = collections.Counter(str(b).split()[0] for b in bodies)
    record(check="round robin", what="one keep-alive connection", requests=len(results),
           split=dict(sorted(counts.items())),
           alternating=all(bodies[i] != bodies[i + 1] for i in range(len(bodies) - 1)))
    first, second = page(topo.webs[0].name), page(topo.webs[1].name)
    assert bodies in ([first, second] * 25, [second, first] * 25)
