"""The web tier behind the directors: real nginx, reachable only the intended way."""

from __future__ import annotations

import pytest

from lab.backend import Backend
from lab.topology import Topology
from provision import web

pytestmark = pytest.mark.integration


def curl(lab: Backend, host: str, url: str) -> tuple[bool, str]:
    res = lab.run(host, ["curl", "-sS", "--max-time", "2", url], check=False, timeout=10)
    return res.ok, (res.text if res.ok else res.stderr.decode(errors="replace"))


def test_each_director_reaches_each_web_page(lab: Backend, topo: Topology) -> None:
    for director in topo.directors:
        for node in topo.webs:
            ok, body = curl(lab, director.name,
                            f"http://{node.address('private')}:{topo.ports.http}/")
            assert ok, f"{director.name} -> {node.name}: {body}"
            assert body == f"{node.name} - It works!\n"


def test_health_url(lab: Backend, topo: Topology) -> None:
    for node in topo.webs:
        ok, body = curl(lab, topo.directors[0].name,
                        f"http://{node.address('private')}{web.HEALTH_PATH}")
        assert ok and body == "ok\n"


def test_names_resolve_per_host(lab: Backend, topo: Topology) -> None:
    ok, body = curl(lab, topo.directors[0].name, f"http://{topo.webs[0].name}/")
    assert ok and body == f"{topo.webs[0].name} - It works!\n"


def test_web_nodes_unreachable_from_client(lab: Backend, topo: Topology) -> None:
    client = topo.clients[0].name
    for node in topo.webs:
        ok, err = curl(lab, client, f"http://{node.address('private')}/")
        assert not ok
        assert "Couldn't connect" in err or "unreachable" in err.lower(), err
    # and there is no route out of the client at all
    routes = lab.run(client, ["ip", "-4", "route", "show"]).text
    assert "default" not in routes


def test_nginx_instances_keep_their_own_files(lab: Backend, topo: Topology) -> None:
    pids = set()
    for node in topo.webs:
        state = {s.name: s for s in lab.services(node.name)}["nginx"]
        assert state.running
        pids.add(state.pid)
        hp = lab.paths(node.name)
        assert lab.read_file(node.name, f"{hp.run}/nginx.pid").decode().strip() == str(state.pid)
        assert lab.read_file(node.name, "/etc/nginx/nginx.conf").decode().count(
            str(node.address("private"))) == 1
    assert len(pids) == len(topo.webs)
