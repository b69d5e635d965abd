"""The firewall policy, rendered per host from the topology as iptables-restore files.

In the spirit of the seed's ``/etc/iptables.up.rules``. Every rule is written
exactly as ``iptables-save`` prints it back, so the tests can compare the
loaded rule set with the rendered one line by line.

Directors (INPUT policy DROP; the last rules reject, so a refused flow is
told so quickly):
  lo; established/related; invalid dropped; ICMP echo; SSH; TCP http to the
  VIP and to each own address; heartbeat UDP from the peer directors'
  addresses on each shared network; any other heartbeat UDP dropped silently
  (a forger learns nothing); the admin port from the private network on the
  private interface; then TCP reset, ICMP port-unreachable, proto-unreachable.
Web nodes:
  lo; established/related; invalid dropped; ICMP echo; SSH; TCP http from
  the directors' private addresses only; then the same rejects.
Client: no filter (it plays the internet).
Every host: IPv6 closed except loopback (the lab is IPv4 only).
FORWARD is dropped everywhere: no lab host routes.
"""

from __future__ import annotations

from lab.topology import Host, Role, Topology

REJECTS = (
    "-A INPUT -p tcp -j REJECT --reject-with tcp-reset",
    "-A INPUT -p udp -j REJECT --reject-with icmp-port-unreachable",
    "-A INPUT -j REJECT --reject-with icmp-proto-unreachable",
)
COMMON_HEAD = (
    "-A INPUT -i lo -j ACCEPT",
    "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    "-A INPUT -m conntrack --ctstate INVALID -j DROP",
    "-A INPUT -p icmp -m icmp --icmp-type 8 -j ACCEPT",
)


def _tcp(port: int, *, src: str = "", dst: str = "", iface: str = "") -> str:
    return _rule("tcp", port, src=src, dst=dst, iface=iface, target="ACCEPT")


def _rule(proto: str, port: int, *, src: str = "", dst: str = "", iface: str = "",
          target: str) -> str:
    parts = ["-A INPUT"]
    if src:
        parts.append(f"-s {src}/32" if "/" not in src else f"-s {src}")
    if dst:
        parts.append(f"-d {dst}/32")
    if iface:
        parts.append(f"-i {iface}")
    parts.append(f"-p {proto} -m {proto} --dport {port} -j {target}")
    return " ".join(parts)


def input_rules(topo: Topology, host: Host) -> list[str]:
    """The INPUT chain of ``host`` as iptables-save lines (empty for no filter)."""
    ports = topo.ports
    if host.role is Role.DIRECTOR:
        rules = [*COMMON_HEAD, _tcp(ports.ssh)]
        rules.append(_tcp(ports.http, dst=str(topo.vip.address)))
        rules += [_tcp(ports.http, dst=str(i.address)) for i in host.interfaces]
        for peer in topo.peers(host):
            for iface in host.interfaces:
                peer_if = peer.interface(iface.network.name)
                if peer_if is not None:
                    rules.append(_rule("udp", ports.heartbeat, src=str(peer_if.address),
                                       dst=str(iface.address), iface=iface.name,
                                       target="ACCEPT"))
        rules.append(_rule("udp", ports.heartbeat, target="DROP"))
        private = host.interface("private")
        assert private is not None  # topology validation: directors are on private
        rules.append(_tcp(ports.admin, src=str(private.network.subnet), iface=private.name))
        return [*rules, *REJECTS]
    if host.role is Role.WEB:
        rules = [*COMMON_HEAD, _tcp(ports.ssh)]
        private = host.interface("private")
        assert private is not None  # topology validation: web nodes are on private
        for director in topo.directors:
            rules.append(_tcp(ports.http, src=str(director.address("private")),
                              dst=str(private.address), iface=private.name))
        return [*rules, *REJECTS]
    return []


def render_v4(topo: Topology, host: Host) -> str | None:
    """The iptables-restore file for ``host``, or None if the host is not filtered."""
    rules = input_rules(topo, host)
    if not rules:
        return None
    return "\n".join([
        f"# halab firewall for {host.name} ({host.role.value}), rendered from lab/topology.yaml",
        "*filter",
        ":INPUT DROP [0:0]",
        ":FORWARD DROP [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        *rules,
        "COMMIT",
        "",
    ])


def render_v6(host: Host) -> str:
    """IPv6 closed except loopback."""
    return "\n".join([
        f"# halab IPv6 policy for {host.name}: closed except loopback (the lab is IPv4 only)",
        "*filter",
        ":INPUT DROP [0:0]",
        ":FORWARD DROP [0:0]",
        ":OUTPUT DROP [0:0]",
        "-A INPUT -i lo -j ACCEPT",
        "-A OUTPUT -o lo -j ACCEPT",
        "COMMIT",
        "",
    ])


def saved_rules(iptables_save: str, table: str = "filter") -> list[str]:
    """Policies and rules of one table of an iptables-save/-restore text.

    Comments, counters and other tables are left out, so a rendered file and
    what ``iptables-save`` prints after loading it compare equal.
    """
    out: list[str] = []
    current = None
    for line in iptables_save.splitlines():
        if line.startswith("*"):
            current = line[1:].strip()
        elif current != table:
            continue
        elif line.startswith("-A "):
            out.append(line)
        elif line.startswith(":"):
            out.append(line.split(" [", 1)[0])
    return out
