"""The balancer as a service in the lab: a reload under load drops nothing, the stats
page, JSON and metrics tell the truth, and bad requests get a 4xx while service
goes on."""

from __future__ import annotations

import json

import pytest

from harness.traffic import ClientLoop
from lab.backend import Backend
from lab.topology import Topology

from .common import vip_url

pytestmark = pytest.mark.integration


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
    assert "event=reloaded" in lab.log_text(healthy, "balancer")
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
