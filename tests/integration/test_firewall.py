"""Check 4, the firewall policy, checked with real packets from every side, and the
rule sets read back from the hosts.

HTTP on the directors is the real balancer (on the VIP and its own
addresses), the admin port its admin listener (private address), heartbeat
UDP the real heartbeat daemon (its counters show what reached it). A test
listener stands where a flow must be stopped by the firewall rather than by
a closed port (the admin port on the public address). So every flow has a
real listener behind the firewall: an allowed flow is answered ("open"), a
rejected one is refused at once ("refused"), a dropped one times out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest

from harness.traffic import Listener, listener, ping, probe
from lab.backend import Backend
from lab.topology import Topology
from provision import firewall
from provision import host as ph

from .common import hb

pytestmark = pytest.mark.integration

UNUSED_PORT = 12345


@pytest.fixture(scope="module")
def listeners(lab: Backend, topo: Topology) -> Iterator[dict[tuple[str, str], Listener]]:
    """Test listeners on both directors."""
    out: dict[tuple[str, str], Listener] = {}
    with ExitStack() as stack:
        for d in topo.directors:
            out[(d.name, "admin-public")] = stack.enter_context(
                listener(lab, d.name, "tcp-listen", topo.ports.admin,
                         addr=str(d.address("public"))))
        yield out


def flows(topo: Topology) -> list[tuple[str, str, str, int, str]]:
    """(from, proto, address, port, expected) for the whole policy."""
    client = topo.clients[0]
    d0, d1 = topo.directors[0], topo.directors[1]
    w0, w1 = topo.webs[0], topo.webs[1]
    p = topo.ports
    pub, priv = "public", "private"
    return [
        # the client (the internet)
        (client.name, "tcp", str(topo.vip.address), p.http, "open"),
        (client.name, "tcp", str(d0.address(pub)), p.http, "open"),
        (client.name, "tcp", str(d1.address(pub)), p.http, "open"),
        (client.name, "tcp", str(d0.address(pub)), p.ssh, "open"),
        (client.name, "udp", str(d0.address(pub)), p.heartbeat, "timeout"),  # dropped
        (client.name, "udp", str(topo.vip.address), p.heartbeat, "timeout"),
        (client.name, "tcp", str(d0.address(pub)), p.admin, "refused"),
        (client.name, "tcp", str(d0.address(pub)), UNUSED_PORT, "refused"),
        (client.name, "udp", str(d0.address(pub)), UNUSED_PORT, "refused"),
        (client.name, "tcp", str(w0.address(priv)), p.http, "unreachable"),
        (client.name, "tcp", str(w1.address(priv)), p.ssh, "unreachable"),
        (client.name, "tcp", str(d0.address(priv)), p.admin, "unreachable"),
        # the peer director
        (d1.name, "tcp", str(d0.address(priv)), p.admin, "open"),
        (d1.name, "tcp", str(d0.address(pub)), p.admin, "refused"),  # admin: private only
        (d1.name, "tcp", str(d0.address(priv)), p.ssh, "open"),
        # web nodes towards the directors
        (w0.name, "udp", str(d0.address(priv)), p.heartbeat, "timeout"),  # dropped
        (w0.name, "tcp", str(d0.address(priv)), p.admin, "open"),
        (w0.name, "tcp", str(d0.address(priv)), p.http, "open"),
        # towards the web nodes
        (d0.name, "tcp", str(w0.address(priv)), p.http, "open"),
        (d1.name, "tcp", str(w1.address(priv)), p.http, "open"),
        (d0.name, "tcp", str(w1.address(priv)), p.ssh, "open"),
        (w1.name, "tcp", str(w0.address(priv)), p.http, "refused"),  # http: directors only
        (w1.name, "tcp", str(w0.address(priv)), p.ssh, "open"),
        (w1.name, "tcp", str(w0.address(priv)), UNUSED_PORT, "refused"),
        (w1.name, "udp", str(w0.address(priv)), UNUSED_PORT, "refused"),
        (d0.name, "tcp", str(w0.address(priv)), p.admin, "refused"),
    ]


def test_policy_matrix(lab: Backend, topo: Topology, vip_holder: str,
                       listeners: dict[tuple[str, str], Listener],
                       record: Callable[..., None]) -> None:
    wrong = []
    matrix = flows(topo)
    for src, proto, addr, port, expected in matrix:
        # A dropped flow only shows as a timeout: keep it short but real.
        seen = probe(lab, src, proto, addr, port, timeout=0.5 if expected == "timeout" else 2)
        if seen != expected:
            wrong.append(f"{src} -> {addr} {proto}/{port}: expected {expected}, saw {seen}")
    record(check="firewall", what="flows with real packets", flows=len(matrix),
           **{k: sum(1 for f in matrix if f[4] == k) for k in ("open", "refused", "timeout",
                                                               "unreachable")},
           wrong=len(wrong))
    assert not wrong, "\n".join(wrong)


def hb_counters(lab: Backend, director: str) -> dict[str, int]:
    st = hb(lab, director)
    assert isinstance(st, dict)
    return {k: v for k, v in st["counters"].items() if k.startswith("dropped")}


def test_heartbeat_port_reached_only_from_the_peer(lab: Backend, topo: Topology) -> None:
    d0, d1 = topo.directors[0], topo.directors[1]
    client, w0 = topo.clients[0], topo.webs[0]
    hb = topo.ports.heartbeat
    before = hb_counters(lab, d1.name)
    # junk from the client and a web node: the firewall drops it (no ICMP either)
    assert probe(lab, client.name, "udp", str(d1.address("public")), hb, timeout=0.3) == "timeout"
    assert probe(lab, w0.name, "udp", str(d1.address("private")), hb, timeout=0.3) == "timeout"
    # junk from the peer on both links: it reaches the daemon, which drops it
    probe(lab, d0.name, "udp", str(d1.address("public")), hb, timeout=0.3)
    probe(lab, d0.name, "udp", str(d1.address("private")), hb, timeout=0.3)
    after = hb_counters(lab, d1.name)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert sum(delta.values()) == 2, delta
    assert delta.get("dropped_unknown_source", 0) == 0


def test_icmp_echo(lab: Backend, topo: Topology) -> None:
    client = topo.clients[0].name
    assert ping(lab, client, str(topo.directors[0].address("public")))
    assert ping(lab, topo.directors[0].name, str(topo.webs[1].address("private")))
    assert ping(lab, topo.webs[0].name, str(topo.webs[1].address("private")))
    assert not ping(lab, client, str(topo.webs[0].address("private")))  # no route in


def test_ipv6_closed_except_loopback(lab: Backend, topo: Topology) -> None:
    web0, web1 = topo.webs[0], topo.webs[1]
    ll = lab.run(web1.name, ["ip", "-6", "-br", "addr", "show", "dev", "eth1"]).text.split()
    link_local = next(a.split("/")[0] for a in ll if a.startswith("fe80:"))
    assert not ping(lab, web0.name, f"{link_local}%eth1", v6=True)
    assert ping(lab, web0.name, "::1", v6=True)


@pytest.mark.parametrize("role_host", ["director", "web"])
def test_rules_read_back_equal_rendered(lab: Backend, topo: Topology, role_host: str) -> None:
    hosts = topo.directors if role_host == "director" else topo.webs
    for h in hosts:
        rendered = lab.read_file(h.name, ph.IPTABLES_FILE).decode()
        assert rendered == firewall.render_v4(topo, h)
        loaded = lab.run(h.name, ["iptables-save", "-t", "filter"]).text
        assert firewall.saved_rules(loaded) == firewall.saved_rules(rendered)
        loaded6 = lab.run(h.name, ["ip6tables-save", "-t", "filter"]).text
        assert firewall.saved_rules(loaded6) == firewall.saved_rules(firewall.render_v6(h))


def test_ssh_between_hosts_uses_real_sshd(lab: Backend, topo: Topology) -> None:
    d0, w1 = topo.directors[0], topo.webs[1]
    res = lab.run(topo.clients[0].name, ["ssh", d0.name, "hostname; ip -4 -br addr"], timeout=20)
    assert res.text.splitlines()[0] == d0.name
    assert str(d0.address("private")) in res.text
    res = lab.run(d0.name, ["ssh", w1.name, "cat", "/etc/hosts"], timeout=20)
    assert f"127.0.1.1 {w1.name}" in res.text  # web1's own /etc, seen over SSH
