"""The netns backend's command construction and path mapping (nothing is run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import topology as t
from lab.backends.netns import NetnsBackend, plan
from lab.errors import HalabError

TOPO = t.load()


def test_namespaces_are_prefixed_and_only_missing_ones_added() -> None:
    assert plan.plan_namespaces(TOPO, set()) == [
        "netns add halab-switch", "netns add halab-client", "netns add halab-dir0",
        "netns add halab-dir1", "netns add halab-web0", "netns add halab-web1"]
    assert plan.plan_namespaces(TOPO, {"halab-switch", "halab-dir0"}) == [
        "netns add halab-client", "netns add halab-dir1", "netns add halab-web0",
        "netns add halab-web1"]


def test_switch_plan_creates_bridges_and_veths_in_namespaces() -> None:
    lines = plan.plan_switch(TOPO, set())
    assert "link add br-public type bridge stp_state 0 forward_delay 0" in lines
    assert "link add br-private type bridge stp_state 0 forward_delay 0" in lines
    # the host end is created directly in the host's namespace: never in the root one
    assert "link add dir0.eth2 type veth peer name eth2 netns halab-dir0" in lines
    assert "link set dir0.eth2 master br-private up" in lines
    assert "link set web1.eth1 master br-private up" in lines
    assert sum(line.startswith("link add") and "veth" in line for line in lines) == 7


def test_switch_plan_is_idempotent() -> None:
    existing = {"lo", "br-public", "br-private"} | {
        plan.switch_port(h, i) for h in TOPO.hosts.values() for i in h.interfaces}
    lines = plan.plan_switch(TOPO, existing)
    assert not any(line.startswith("link add") for line in lines)
    assert "link set br-public up" in lines  # state is still enforced


def test_host_plan_addresses_and_macs() -> None:
    assert plan.plan_host(TOPO.hosts["dir1"]) == [
        "link set lo up",
        "link set eth1 address 02:00:cb:00:71:0c",
        "addr replace 203.0.113.12/24 dev eth1",
        "link set eth1 up",
        "link set eth2 address 02:00:c6:12:00:0c",
        "addr replace 198.18.0.12/24 dev eth2",
        "link set eth2 up",
    ]


def test_no_plan_line_adds_a_route() -> None:
    lines = plan.plan_switch(TOPO, set()) + [
        line for h in TOPO.hosts.values() for line in plan.plan_host(h)]
    assert not any("route" in line for line in lines)


def test_interface_names_fit_the_kernel_limit() -> None:
    for h in TOPO.hosts.values():
        for i in h.interfaces:
            assert len(plan.switch_port(h, i)) <= 15
    assert all(len(plan.bridge_name(n)) <= 15 for n in TOPO.networks)


def test_host_exec_enters_network_and_uts_namespaces() -> None:
    backend = NetnsBackend(TOPO)
    assert backend.command("web0", ["nginx", "-t"]) == [
        "ip", "netns", "exec", "halab-web0",
        "nsenter", "--uts=/run/halab/halab/uts/web0", "--", "nginx", "-t"]


PATHS = NetnsBackend(TOPO).paths("dir0")


def test_paths_are_per_host() -> None:
    assert PATHS.run == Path("/run/halab/halab/dir0")
    assert PATHS.log == Path("/var/log/halab/halab/dir0")
    assert PATHS.state == Path("/var/lib/halab/halab/dir0")


def test_etc_files_go_to_etc_netns() -> None:
    local, mount = plan.host_file(TOPO, PATHS, "dir0", "/etc/halab/balancer.toml")
    assert local == Path("/etc/netns/halab-dir0/halab/balancer.toml")
    assert mount == Path("/etc/halab")
    local, mount = plan.host_file(TOPO, PATHS, "dir0", "/etc/hosts")
    assert (local, mount) == (Path("/etc/netns/halab-dir0/hosts"), Path("/etc/hosts"))


def test_host_dirs_map_to_themselves() -> None:
    path = f"{PATHS.state}/www/index.html"
    assert plan.host_file(TOPO, PATHS, "dir0", path) == (Path(path), None)


@pytest.mark.parametrize("path", ["/usr/bin/x", "/etc", "relative/x", "/etc/../root/x",
                                  "/run/halab/halab/dir1/x"])
def test_shared_paths_are_refused(path: str) -> None:
    with pytest.raises(HalabError):
        plan.host_file(TOPO, PATHS, "dir0", path)


def test_unknown_host_is_an_error() -> None:
    with pytest.raises(HalabError, match="no host 'dir9'"):
        NetnsBackend(TOPO).paths("dir9")
