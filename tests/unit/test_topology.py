"""Topology loading: the default file, and every validation error path."""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab import topology as t
from lab.errors import ConfigError

DEFAULT: dict[str, Any] = yaml.safe_load(t.DEFAULT_TOPOLOGY.read_text())


def mutated(fn: Callable[[dict[str, Any]], Any]) -> str:
    data = copy.deepcopy(DEFAULT)
    fn(data)
    return yaml.safe_dump(data, sort_keys=False)


def test_default_topology_loads() -> None:
    topo = t.load()
    assert topo.lab == "halab"
    assert [h.name for h in topo.directors] == ["dir0", "dir1"]
    assert [h.name for h in topo.webs] == ["web0", "web1"]
    assert [h.name for h in topo.clients] == ["client"]
    assert topo.vip.address == ipaddress.IPv4Address("203.0.113.100")
    assert topo.ports.http == 80 and topo.ports.heartbeat == 694


def test_default_ranges_are_the_reserved_ones() -> None:
    topo = t.load()
    assert topo.networks["public"].subnet.subnet_of(ipaddress.IPv4Network("203.0.113.0/24"))
    assert topo.networks["private"].subnet.subnet_of(ipaddress.IPv4Network("198.18.0.0/15"))


def test_interfaces_follow_network_order() -> None:
    topo = t.load()
    dir0 = topo.hosts["dir0"]
    assert [(i.name, i.network.name) for i in dir0.interfaces] == [
        ("eth1", "public"), ("eth2", "private")]
    assert [(i.name, i.network.name) for i in topo.hosts["web0"].interfaces] == [
        ("eth1", "private")]
    assert dir0.interface("private") is not None
    assert dir0.interface("private").cidr == "198.18.0.11/24"  # type: ignore[union-attr]


def test_reachable_address_prefers_private() -> None:
    topo = t.load()
    h = topo.hosts
    assert str(topo.reachable_address(h["web0"], h["dir0"])) == "198.18.0.11"
    assert str(topo.reachable_address(h["dir1"], h["dir0"])) == "198.18.0.11"
    assert str(topo.reachable_address(h["client"], h["dir0"])) == "203.0.113.11"
    assert topo.reachable_address(h["client"], h["web0"]) is None


def test_peers_are_same_role() -> None:
    topo = t.load()
    assert [p.name for p in topo.peers(topo.hosts["dir0"])] == ["dir1"]


def test_describe_round_trips_addresses() -> None:
    d = t.describe(t.load())
    assert d["hosts"]["dir1"]["interfaces"][1] == {
        "name": "eth2", "network": "private", "address": "198.18.0.12/24"}


def _parent(data: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    *parents, last = path.split(".")
    for p in parents:
        data = data[p]
    return data, last


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def fn(data: dict[str, Any]) -> None:
        node, key = _parent(data, path)
        node[key] = value
    return fn


def _del(path: str) -> Callable[[dict[str, Any]], None]:
    def fn(data: dict[str, Any]) -> None:
        node, key = _parent(data, path)
        del node[key]
    return fn


def _drop_role(role: str) -> Callable[[dict[str, Any]], None]:
    def fn(data: dict[str, Any]) -> None:
        for name in [n for n, h in data["hosts"].items() if h["role"] == role]:
            del data["hosts"][name]
    return fn


ERRORS: list[tuple[str, Callable[[dict[str, Any]], Any], str, str]] = [
    ("unknown top key", _set("extra", 1), "extra", "unknown key"),
    ("missing networks", _del("networks"), "networks", "missing"),
    ("missing hosts", _del("hosts"), "hosts", "missing"),
    ("missing vip", _del("vip"), "vip", "missing"),
    ("missing ports", _del("ports"), "ports", "missing"),
    ("missing lab", _del("lab"), "lab", "missing"),
    ("bad lab name", _set("lab", "mylab"), "lab", "must be 'halab'"),
    ("networks not a mapping", _set("networks", [1]), "networks", "non-empty mapping"),
    ("bad subnet", _set("networks.public.subnet", "203.0.113.0/33"),
     "networks.public.subnet", "not an IPv4 subnet"),
    ("host bits in subnet", _set("networks.public.subnet", "203.0.113.5/24"),
     "networks.public.subnet", "not an IPv4 subnet"),
    ("tiny subnet", _set("networks.public.subnet", "203.0.113.0/31"),
     "networks.public.subnet", "too small"),
    ("overlapping subnets", _set("networks.private.subnet", "203.0.113.0/25"),
     "networks.private.subnet", "overlaps network public"),
    ("missing private network", _del("networks.private"), "networks.private", "missing"),
    ("unknown network key", _set("networks.public.mtu", 1500), "networks.public.mtu",
     "unknown key"),
    ("bad network name", _set("networks.Pub-lic", {"subnet": "10.9.0.0/24"}),
     "networks.Pub-lic", "name must be"),
    ("bad host name", _set("hosts.Dir_2", {"role": "web", "addresses": {}}),
     "hosts.Dir_2", "name must be"),
    ("reserved host name", _set("hosts.switch", {"role": "web"}), "hosts.switch", "reserved"),
    ("missing role", _del("hosts.web0.role"), "hosts.web0.role", "missing"),
    ("unknown role", _set("hosts.web0.role", "cache"), "hosts.web0.role", "is not a role"),
    ("unknown host key", _set("hosts.web0.mem", 512), "hosts.web0.mem", "unknown key"),
    ("missing addresses", _del("hosts.web0.addresses"), "hosts.web0.addresses", "missing"),
    ("address on unknown network", _set("hosts.web0.addresses.dmz", "192.0.2.1"),
     "hosts.web0.addresses.dmz", "no such network"),
    ("web on public", _set("hosts.web0.addresses.public", "203.0.113.50"),
     "hosts.web0.addresses", "a web is attached to private only"),
    ("director without private", _del("hosts.dir0.addresses.private"),
     "hosts.dir0.addresses", "a director is attached to private and public only"),
    ("address not IPv4", _set("hosts.web0.addresses.private", "fe80::1"),
     "hosts.web0.addresses.private", "not an IPv4 address"),
    ("address outside network", _set("hosts.dir0.addresses.private", "198.19.0.5"),
     "hosts.dir0.addresses.private", "outside network private"),
    ("network address", _set("hosts.web0.addresses.private", "198.18.0.0"),
     "hosts.web0.addresses.private", "network or broadcast"),
    ("broadcast address", _set("hosts.web0.addresses.private", "198.18.0.255"),
     "hosts.web0.addresses.private", "network or broadcast"),
    ("duplicate address", _set("hosts.web1.addresses.private", "198.18.0.21"),
     "hosts.web1.addresses.private", "already used by host web0"),
    ("no web node", _drop_role("web"), "hosts", "role web"),
    ("no director", _drop_role("director"), "hosts", "role director"),
    ("no client", _drop_role("client"), "hosts", "role client"),
    ("one director", _del("hosts.dir1"), "hosts",
     "needs two hosts with role director, the VIP moves between them (has 1: dir0)"),
    ("vip outside public", _set("vip.address", "198.18.0.100"), "vip.address",
     "not a host address of public"),
    ("vip on private network", _set("vip.network", "private"), "vip.network",
     "lives on the public network"),
    ("vip is a host address", _set("vip.address", "203.0.113.11"), "vip.address",
     "already used by host dir0"),
    ("vip not an address", _set("vip.address", "vip"), "vip.address", "not an IPv4 address"),
    ("vip unknown key", _set("vip.prefix", 24), "vip.prefix", "unknown key"),
    ("port out of range", _set("ports.http", 70000), "ports.http", "not a port number"),
    ("port not int", _set("ports.admin", "8404"), "ports.admin", "not a port number"),
    ("port bool", _set("ports.ssh", True), "ports.ssh", "not a port number"),
    ("missing port", _del("ports.heartbeat"), "ports.heartbeat", "missing"),
    ("unknown port", _set("ports.https", 443), "ports.https", "unknown key"),
    ("clashing tcp ports", _set("ports.admin", 80), "ports.admin", "already the http port"),
]


@pytest.mark.parametrize(("fn", "key", "reason"), [e[1:] for e in ERRORS],
                         ids=[e[0] for e in ERRORS])
def test_validation_errors(fn: Callable[[dict[str, Any]], Any], key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as exc:
        t.loads(mutated(fn), "topo.yaml")
    err = exc.value
    assert err.key == key, str(err)
    assert reason in err.reason, str(err)
    msg = str(err)
    assert msg.startswith(f"topo.yaml: {key}: " if key else "topo.yaml: ")
    assert "\n" not in msg


def test_duplicate_host_name_is_an_error() -> None:
    text = t.DEFAULT_TOPOLOGY.read_text().replace("  web1:\n", "  web0:\n")
    with pytest.raises(ConfigError) as exc:
        t.loads(text, "topo.yaml")
    assert "duplicate key 'web0'" in str(exc.value)
    assert exc.value.key.startswith("line ")


def test_yaml_syntax_error_names_line() -> None:
    with pytest.raises(ConfigError) as exc:
        t.loads("lab: halab\nnetworks: [unclosed\n", "bad.yaml")
    assert str(exc.value).startswith("bad.yaml: line ")


def test_not_a_mapping() -> None:
    with pytest.raises(ConfigError, match="must be a non-empty mapping"):
        t.loads("- just\n- a list\n", "x.yaml")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        t.load(tmp_path / "nope.yaml")


def test_another_lab_name_and_addresses(tmp_path: Path) -> None:
    def fn(data: dict[str, Any]) -> None:
        data["lab"] = "halabt"
        data["hosts"]["web2"] = {"role": "web", "addresses": {"private": "198.18.0.23"}}
    path = tmp_path / "t.yaml"
    path.write_text(mutated(fn))
    topo = t.load(path)
    assert topo.namespace("web2") == "halabt-web2"
    assert len(topo.webs) == 3
