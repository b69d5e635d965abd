"""Load and validate ``lab/topology.yaml`` into typed, immutable objects.

The topology is the lab's single source of truth. Loading is all-or-nothing:
the first problem found raises :class:`~lab.errors.ConfigError` naming the
file, the key (``hosts.dir0.addresses.private``) and the reason, before any
backend has touched the system, so an invalid file never half-builds a lab.

Rules checked here:

* top level: ``lab``, ``networks``, ``vip``, ``ports``, ``hosts``; no other key
* no mapping repeats a key (YAML would silently keep the last one)
* ``lab`` starts with ``halab`` (namespaces are ``<lab>-<host>``)
* networks: ``public`` and ``private`` exist; subnets are IPv4 and disjoint
* hosts: a name of 1-10 lowercase letters/digits (not ``switch``), a role (client, director,
  web), addresses inside their network, neither its network nor broadcast
  address, no address used twice
* roles: a client is on public only, a director on public and private, a web
  node on private only; at least one of each, and two directors (the heartbeat
  moves the VIP between them: a lone director has no peer)
* the VIP lies inside the public network and belongs to no host
* ports: integers 1-65535; http, admin and ssh are distinct TCP ports
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from lab.errors import ConfigError

DEFAULT_TOPOLOGY = Path(__file__).with_name("topology.yaml")

# Interface numbering starts at eth1: eth0 is the VM management network.
FIRST_IFINDEX = 1
HOST_NAME = re.compile(r"^[a-z][a-z0-9]{0,9}$")
NET_NAME = re.compile(r"^[a-z][a-z0-9]{0,11}$")
# The netns lab names its switch namespace <lab>-switch.
RESERVED_HOSTS = frozenset({"switch"})
LAB_NAME = re.compile(r"^halab[a-z0-9]{0,5}$")
TOP_KEYS = ("lab", "networks", "vip", "ports", "hosts")
PORT_KEYS = ("http", "heartbeat", "admin", "ssh")


class Role(StrEnum):
    CLIENT = "client"
    DIRECTOR = "director"
    WEB = "web"


# Which networks each role must (and may only) be attached to.
ROLE_NETWORKS: dict[Role, frozenset[str]] = {
    Role.CLIENT: frozenset({"public"}),
    Role.DIRECTOR: frozenset({"public", "private"}),
    Role.WEB: frozenset({"private"}),
}


@dataclass(frozen=True)
class Network:
    name: str
    subnet: ipaddress.IPv4Network


@dataclass(frozen=True)
class Interface:
    name: str  # eth1, eth2, ... inside the host
    network: Network
    address: ipaddress.IPv4Address

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.network.subnet.prefixlen}"

    @property
    def mac(self) -> str:
        """A locally administered MAC that shows the address it carries (every backend
        uses it: 02:00 + the address's four bytes)."""
        return "02:00:" + ":".join(f"{b:02x}" for b in self.address.packed)


@dataclass(frozen=True)
class Host:
    name: str
    role: Role
    interfaces: tuple[Interface, ...]

    def interface(self, network: str) -> Interface | None:
        for iface in self.interfaces:
            if iface.network.name == network:
                return iface
        return None

    def address(self, network: str) -> ipaddress.IPv4Address:
        iface = self.interface(network)
        if iface is None:
            raise KeyError(f"host {self.name} has no address on network {network}")
        return iface.address

    @property
    def networks(self) -> tuple[str, ...]:
        return tuple(i.network.name for i in self.interfaces)


@dataclass(frozen=True)
class Vip:
    address: ipaddress.IPv4Address
    network: Network


@dataclass(frozen=True)
class Ports:
    http: int
    heartbeat: int
    admin: int
    ssh: int


@dataclass(frozen=True)
class Topology:
    lab: str
    networks: Mapping[str, Network]
    hosts: Mapping[str, Host]
    vip: Vip
    ports: Ports
    source: Path

    def by_role(self, role: Role) -> list[Host]:
        return [h for h in self.hosts.values() if h.role is role]

    @property
    def directors(self) -> list[Host]:
        return self.by_role(Role.DIRECTOR)

    @property
    def webs(self) -> list[Host]:
        return self.by_role(Role.WEB)

    @property
    def clients(self) -> list[Host]:
        return self.by_role(Role.CLIENT)

    def namespace(self, host: str) -> str:
        """The network namespace that plays ``host`` in the netns lab."""
        return f"{self.lab}-{host}"

    def peers(self, host: Host) -> list[Host]:
        """The other hosts of the same role (a director's peer directors)."""
        return [h for h in self.by_role(host.role) if h.name != host.name]

    def reachable_address(self, src: Host, dst: Host) -> ipaddress.IPv4Address | None:
        """The address of ``dst`` that ``src`` reaches directly (private first)."""
        shared = set(src.networks) & set(dst.networks)
        for net in ("private", *sorted(shared)):
            if net in shared:
                return dst.address(net)
        return None


# --- loading -----------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a mapping with a repeated key."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)


def load(path: str | Path | None = None) -> Topology:
    """Read and validate a topology file (the packaged default if ``path`` is None)."""
    p = Path(path) if path is not None else DEFAULT_TOPOLOGY
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(str(p), "", f"cannot read: {e.strerror}") from None
    return loads(text, str(p), source=p)


def loads(text: str, name: str = "<topology>", *, source: Path | None = None) -> Topology:
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        line = f"line {mark.line + 1}" if mark is not None else "yaml"
        raise ConfigError(name, line, f"{e.problem or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(name, "", f"not valid YAML: {e}") from None
    return _Validator(name).topology(data, source or Path(name))


class _Validator:
    def __init__(self, name: str) -> None:
        self.name = name

    def fail(self, key: str, reason: str) -> ConfigError:
        return ConfigError(self.name, key, reason)

    def mapping(self, value: Any, key: str) -> dict[str, Any]:
        if not isinstance(value, dict) or not value:
            raise self.fail(key, "must be a non-empty mapping")
        for k in value:
            if not isinstance(k, str):
                raise self.fail(key, f"key {k!r} must be a string")
        return value

    def only_keys(self, value: dict[str, Any], key: str, allowed: tuple[str, ...]) -> None:
        for k in value:
            if k not in allowed:
                raise self.fail(_join(key, k), f"unknown key (allowed: {', '.join(allowed)})")

    def required(self, value: dict[str, Any], key: str, name: str) -> Any:
        if name not in value:
            raise self.fail(_join(key, name), "missing")
        return value[name]

    def ipv4(self, value: Any, key: str) -> ipaddress.IPv4Address:
        try:
            return ipaddress.IPv4Address(str(value))
        except ValueError:
            raise self.fail(key, f"{value!r} is not an IPv4 address") from None

    def topology(self, data: Any, source: Path) -> Topology:
        top = self.mapping(data, "")
        self.only_keys(top, "", TOP_KEYS)
        lab = self.required(top, "", "lab")
        if not isinstance(lab, str) or not LAB_NAME.match(lab):
            raise self.fail("lab", f"{lab!r} must be 'halab' followed by up to 5 [a-z0-9]")
        networks = self.networks(self.required(top, "", "networks"))
        hosts = self.hosts(self.required(top, "", "hosts"), networks)
        vip = self.vip(self.required(top, "", "vip"), networks, hosts)
        ports = self.ports(self.required(top, "", "ports"))
        return Topology(lab=lab, networks=networks, hosts=hosts, vip=vip, ports=ports,
                        source=source)

    def networks(self, value: Any) -> dict[str, Network]:
        raw = self.mapping(value, "networks")
        nets: dict[str, Network] = {}
        for name, net_spec in raw.items():
            key = f"networks.{name}"
            if not NET_NAME.match(name):
                raise self.fail(key, "name must be 1-12 of [a-z0-9], starting with a letter")
            spec = self.mapping(net_spec, key)
            self.only_keys(spec, key, ("subnet",))
            subnet_s = self.required(spec, key, "subnet")
            try:
                subnet = ipaddress.IPv4Network(str(subnet_s), strict=True)
            except ValueError as e:
                raise self.fail(f"{key}.subnet",
                                f"{subnet_s!r} is not an IPv4 subnet: {e}") from None
            if subnet.num_addresses < 4:
                raise self.fail(f"{key}.subnet", f"{subnet} is too small for hosts")
            for other in nets.values():
                if subnet.overlaps(other.subnet):
                    raise self.fail(f"{key}.subnet", f"{subnet} overlaps network {other.name}")
            nets[name] = Network(name, subnet)
        for needed in ("public", "private"):
            if needed not in nets:
                raise self.fail(f"networks.{needed}", "missing")
        return nets

    def hosts(self, value: Any, networks: dict[str, Network]) -> dict[str, Host]:
        raw = self.mapping(value, "hosts")
        hosts: dict[str, Host] = {}
        owner: dict[ipaddress.IPv4Address, str] = {}
        for name, spec in raw.items():
            key = f"hosts.{name}"
            if not HOST_NAME.match(name):
                raise self.fail(key, "name must be 1-10 of [a-z0-9], starting with a letter")
            if name in RESERVED_HOSTS:
                raise self.fail(key, "name is reserved for the lab's switch")
            spec = self.mapping(spec, key)
            self.only_keys(spec, key, ("role", "addresses"))
            role_s = self.required(spec, key, "role")
            try:
                role = Role(role_s)
            except ValueError:
                roles = ", ".join(r.value for r in Role)
                raise self.fail(f"{key}.role", f"{role_s!r} is not a role ({roles})") from None
            addrs = self.mapping(self.required(spec, key, "addresses"), f"{key}.addresses")
            for net in addrs:
                if net not in networks:
                    raise self.fail(f"{key}.addresses.{net}", "no such network")
            if set(addrs) != ROLE_NETWORKS[role]:
                want = " and ".join(sorted(ROLE_NETWORKS[role]))
                raise self.fail(f"{key}.addresses", f"a {role.value} is attached to {want} only")
            ifaces: list[Interface] = []
            # Interface order follows the order of the networks section.
            for network in networks.values():
                if network.name not in addrs:
                    continue
                akey = f"{key}.addresses.{network.name}"
                addr = self.ipv4(addrs[network.name], akey)
                if addr not in network.subnet:
                    raise self.fail(
                        akey, f"{addr} is outside network {network.name} ({network.subnet})")
                if addr in (network.subnet.network_address, network.subnet.broadcast_address):
                    raise self.fail(akey, f"{addr} is the network or broadcast address")
                if addr in owner:
                    raise self.fail(akey, f"{addr} is already used by host {owner[addr]}")
                owner[addr] = name
                ifaces.append(Interface(f"eth{FIRST_IFINDEX + len(ifaces)}", network, addr))
            hosts[name] = Host(name, role, tuple(ifaces))
        for role in Role:
            if not any(h.role is role for h in hosts.values()):
                raise self.fail("hosts", f"needs at least one host with role {role.value}")
        directors = [h.name for h in hosts.values() if h.role is Role.DIRECTOR]
        if len(directors) < 2:
            raise self.fail("hosts", f"needs two hosts with role director, the VIP moves "
                            f"between them (has {len(directors)}: {', '.join(directors)})")
        return hosts

    def vip(self, value: Any, networks: dict[str, Network], hosts: dict[str, Host]) -> Vip:
        raw = self.mapping(value, "vip")
        self.only_keys(raw, "vip", ("address", "network"))
        addr = self.ipv4(self.required(raw, "vip", "address"), "vip.address")
        net_name = self.required(raw, "vip", "network")
        if net_name != "public":
            raise self.fail("vip.network", f"{net_name!r}: the VIP lives on the public network")
        net = networks["public"]
        if addr not in net.subnet or addr in (net.subnet.network_address,
                                              net.subnet.broadcast_address):
            raise self.fail("vip.address", f"{addr} is not a host address of public ({net.subnet})")
        for h in hosts.values():
            if addr in (i.address for i in h.interfaces):
                raise self.fail("vip.address", f"{addr} is already used by host {h.name}")
        return Vip(addr, net)

    def ports(self, value: Any) -> Ports:
        raw = self.mapping(value, "ports")
        self.only_keys(raw, "ports", PORT_KEYS)
        vals: dict[str, int] = {}
        for name in PORT_KEYS:
            v = self.required(raw, "ports", name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65535:
                raise self.fail(f"ports.{name}", f"{v!r} is not a port number (1-65535)")
            vals[name] = v
        tcp = ("http", "admin", "ssh")
        for i, a in enumerate(tcp):
            for b in tcp[i + 1:]:
                if vals[a] == vals[b]:
                    raise self.fail(f"ports.{b}", f"{vals[b]} is already the {a} port")
        return Ports(**vals)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def describe(topo: Topology) -> dict[str, Any]:
    """The topology as plain data (for JSON output and comparisons)."""
    return {
        "lab": topo.lab,
        "networks": {n.name: str(n.subnet) for n in topo.networks.values()},
        "vip": {"address": str(topo.vip.address), "network": topo.vip.network.name},
        "ports": dict(vars(topo.ports)),
        "hosts": {
            h.name: {
                "role": h.role.value,
                "interfaces": [
                    {"name": i.name, "network": i.network.name, "address": i.cidr}
                    for i in h.interfaces
                ],
            }
            for h in topo.hosts.values()
        },
    }
