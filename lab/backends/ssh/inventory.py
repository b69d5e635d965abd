"""The inventory of the ssh backend: how SSH reaches each host of the topology.

The topology says what the hosts are (roles, lab addresses); the inventory only
says how the controller logs in to each, as Ansible's does::

    # halab inventory (TOML)
    slowness = 1.0                   # optional: these hosts' pace (see Backend.slowness)
    state_dir = ".halab"             # optional: the lab's keys and files on the
                                     # controller (relative: beside this file)
    [defaults]                       # optional: for every host below
    user = "debian"                  # logs in as this user, root through `sudo -n`
    identity = "~/.ssh/id_ed25519"
    port = 22
    known_hosts = "~/.ssh/known_hosts"  # optional: check host keys against this
                                     # file (else: trust on first use, remembered)
    options = { ProxyJump = "bastion.example.net" }  # any ssh_config(5) keyword

    [hosts.dir0]
    address = "192.0.2.10"           # its management address, never a lab address
    [hosts.dir1]
    address = "192.0.2.11"
    ...

Every host of the topology needs an entry; the hosts must already carry their
lab addresses on the interfaces the topology names (eth1, eth2...).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from daemonkit import errors as daemonkit_errors
from daemonkit.config import Reader
from lab.errors import ConfigError, HalabError
from lab.topology import Topology

ENV = "HALAB_INVENTORY"
DEFAULT_KEYS = ("user", "port", "identity", "options", "known_hosts")


@dataclass(frozen=True)
class Target:
    """How SSH reaches one host."""

    address: str
    user: str = "root"
    port: int = 22
    identities: tuple[str, ...] = ()
    options: tuple[tuple[str, str], ...] = ()
    known_hosts: str | None = None


@dataclass(frozen=True)
class Inventory:
    path: Path
    hosts: dict[str, Target]
    state_dir: Path
    slowness: float = 1.0


def _target(r: Reader, defaults: dict[str, object], base: Path) -> Target:
    def get(name: str, default: object) -> object:
        return r.value(name, defaults.get(name, default))

    address = get("address", None)
    if not isinstance(address, str) or not address:
        raise r.fail("address", "missing (the host's management address or name)")
    user = get("user", "root")
    port = get("port", 22)
    if not isinstance(user, str) or not user:
        raise r.fail("user", "must be a user name")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise r.fail("port", "must be a TCP port (1-65535)")
    ident = get("identity", [])
    idents = [ident] if isinstance(ident, str) else ident
    if not isinstance(idents, list) or not all(isinstance(i, str) for i in idents):
        raise r.fail("identity", "must be a key file or a list of them")
    opts = get("options", {})
    if not isinstance(opts, dict) or not all(isinstance(v, str | int) for v in opts.values()):
        raise r.fail("options", "must be a table of ssh_config keywords and values")
    known = get("known_hosts", None)
    if known is not None and not isinstance(known, str):
        raise r.fail("known_hosts", "must be a file name")
    r.done()
    return Target(address, user, port,
                  tuple(str(_resolve(i, base)) for i in idents),
                  tuple((k, str(v)) for k, v in opts.items()),
                  str(_resolve(known, base)) if known else None)


def _resolve(path: str, base: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else base / p


def load(path: str | Path | None, topology: Topology) -> Inventory:
    """Read and check an inventory (``path``, else ``$HALAB_INVENTORY``)."""
    try:
        return _load(path, topology)
    except daemonkit_errors.ConfigError as e:  # the TOML reader's, as the lab's own
        raise ConfigError(e.path, e.key, e.reason) from None


def _load(path: str | Path | None, topology: Topology) -> Inventory:
    if path is None:
        path = os.environ.get(ENV)
    if not path:
        raise HalabError(f"the ssh backend needs an inventory: --inventory FILE (or ${ENV})")
    path = Path(path).resolve()
    r = Reader.load(path)
    base = path.parent
    slowness = r.value("slowness", 1.0)
    if not isinstance(slowness, int | float) or isinstance(slowness, bool) or slowness < 1:
        raise r.fail("slowness", "must be a number >= 1")
    state_dir = r.value("state_dir", ".halab")
    if not isinstance(state_dir, str):
        raise r.fail("state_dir", "must be a directory name")
    d = r.table("defaults")
    defaults = {k: d.value(k) for k in DEFAULT_KEYS if d.has(k)}
    d.done()  # an address, say, belongs to each host
    hosts_table = r.table("hosts", required=True)
    hosts = {}
    for name in topology.hosts:
        if not hosts_table.has(name):
            raise ConfigError(str(path), f"hosts.{name}",
                              f"missing (the topology {topology.source} has that host)")
        hosts[name] = _target(hosts_table.table(name), defaults, base)
    for name in hosts_table.data:
        if name not in topology.hosts:
            raise hosts_table.fail(name, f"no such host in the topology {topology.source} "
                                   f"(hosts: {', '.join(topology.hosts)})")
    r.done()
    return Inventory(path, hosts, _resolve(state_dir, base) / topology.lab, float(slowness))


def render(inventory: dict[str, Target], slowness: float = 1.0, state_dir: str | None = None,
           comment: str = "") -> str:
    """An inventory file for these targets (``halab --lab vagrant inventory``)."""
    def q(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = [f"# {line}" for line in comment.splitlines()]
    lines.append(f"slowness = {slowness}")
    if state_dir:
        lines.append(f"state_dir = {q(state_dir)}")
    for name, t in inventory.items():
        lines += ["", f"[hosts.{name}]", f"address = {q(t.address)}", f"user = {q(t.user)}",
                  f"port = {t.port}",
                  "identity = [" + ", ".join(q(i) for i in t.identities) + "]"]
        if t.known_hosts:
            lines.append(f"known_hosts = {q(t.known_hosts)}")
        if t.options:
            lines.append("options = { " + ", ".join(f"{k} = {q(v)}" for k, v in t.options)
                         + " }")
    return "\n".join(lines) + "\n"
