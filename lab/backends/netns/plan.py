"""The netns lab as a plan, pure: its paths on this machine, the namespaces, bridges,
veth pairs and addresses to create (as iproute2 batch lines), how a command and a file
reach a host. The backend (``lab.backends.netns``) carries it out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from lab.backend import HostPaths
from lab.errors import HalabError
from lab.topology import Host, Interface, Topology

SWITCH = "switch"
RUN_ROOT = Path("/run/halab")
LOG_ROOT = Path("/var/log/halab")
STATE_ROOT = Path("/var/lib/halab")
NETNS_ETC = Path("/etc/netns")
# Directories that a VM's init creates for its daemons (systemd's
# RuntimeDirectory=sshd); the netns lab creates them while it is up.
RUNTIME_DIRS = (Path("/run/sshd"),)


def switch_namespace(topo: Topology) -> str:
    return topo.namespace(SWITCH)


def bridge_name(network: str) -> str:
    return f"br-{network}"


def switch_port(host: Host, iface: Interface) -> str:
    return f"{host.name}.{iface.name}"


def plan_namespaces(topo: Topology, existing: set[str]) -> list[str]:
    """``ip -batch`` lines that add the missing namespaces."""
    wanted = [switch_namespace(topo)] + [topo.namespace(h) for h in topo.hosts]
    return [f"netns add {ns}" for ns in wanted if ns not in existing]


def plan_switch(topo: Topology, existing_links: set[str]) -> list[str]:
    """``ip -n <switch> -batch`` lines: bridges and the switch side of each veth."""
    lines = ["link set lo up"]
    for net in topo.networks:
        br = bridge_name(net)
        if br not in existing_links:
            lines.append(f"link add {br} type bridge stp_state 0 forward_delay 0")
        lines.append(f"link set {br} up")
    for host in topo.hosts.values():
        for iface in host.interfaces:
            port = switch_port(host, iface)
            if port not in existing_links:
                lines.append(
                    f"link add {port} type veth peer name {iface.name} "
                    f"netns {topo.namespace(host.name)}"
                )
            lines.append(f"link set {port} master {bridge_name(iface.network.name)} up")
    return lines


def plan_host(host: Host) -> list[str]:
    """``ip -n <host> -batch`` lines: loopback, MACs, addresses, links up."""
    lines = ["link set lo up"]
    for iface in host.interfaces:
        lines += [
            f"link set {iface.name} address {iface.mac}",
            f"addr replace {iface.cidr} dev {iface.name}",
            f"link set {iface.name} up",
        ]
    return lines


def host_exec(ns: str, uts: Path, argv: Sequence[str]) -> list[str]:
    """Run ``argv`` on a host: its network namespace (and /etc), its hostname.

    Both ``ip netns exec`` and ``nsenter`` exec, so the PID is argv's own.
    """
    return ["ip", "netns", "exec", ns, "nsenter", f"--uts={uts}", "--", *argv]


def host_file(topo: Topology, paths: HostPaths, host: str, path: str) -> tuple[Path, Path | None]:
    """Map a path as ``host`` sees it to this machine's file system.

    Returns the local path and, for ``/etc/X/...``, the ``/etc/X`` that must
    exist in the root namespace for ``ip netns exec`` to bind over it.
    Anything outside /etc and the host's own directories is shared with this
    machine, so it is refused rather than written.
    """
    p = PurePosixPath(path)
    if not p.is_absolute() or ".." in p.parts:
        raise HalabError(f"{host}: {path!r} must be an absolute path without '..'")
    if len(p.parts) >= 3 and p.parts[1] == "etc":
        local = NETNS_ETC / topo.namespace(host) / Path(*p.parts[2:])
        return local, Path("/etc", p.parts[2])
    for base in (paths.run, paths.log, paths.state):
        if p == PurePosixPath(base) or PurePosixPath(base) in p.parents:
            return Path(p), None
    raise HalabError(
        f"{host}: {path} is not private to the host in the netns lab "
        f"(use /etc/... or the host's run/log/state directories)"
    )


