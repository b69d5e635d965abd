"""A stack: what runs on the directors, when it is not halab's own daemons.

A stack is a folder (the built-in ones are in ``stacks/``; a student's own is given by
its path): ``stack.toml``, its manifest, and the Jinja2 templates it names. ``load``
reads and checks the manifest (a mistake is one line naming the file, the key and the
reason); ``render`` fills the stack in for one director, from the topology alone: the
files it writes, the services it runs (``ServiceSpec``, as halab's own), and each
rendered file's checker (``haproxy -c``, ``keepalived --config-test``, ``nginx -t``).

The manifest::

    description = "one line"
    packages = ["haproxy", ...]          # Debian packages the directors need
    requires = ["ipvsadm -L -n", ...]    # commands that must succeed on a director
    [[files]]                            # each rendered to ``path`` on every director
    template = "haproxy.cfg"             # in the folder, or a built-in's "seed/ha.cf"
    path = "/etc/haproxy/haproxy.cfg"
    mode = 0o644
    check = ["haproxy", "-c", "-f", "{path}"]      # the file's own checker
    [[services]]                         # run in the foreground, in this order
    name = "haproxy"
    command = "haproxy -W -db -f ..."    # a template too, then split as a shell would
    listens = ["http", "admin"]          # the topology's ports: ready once they listen
    reads = ["/etc/haproxy/haproxy.cfg"] # a change to these restarts it
    [adapter]                            # what the proof suite reads of the stack
    failover = "heartbeat" | "vrrp"      # who moves the VIP
    state = "haproxy" | "ipvs" | "traffic"   # where a server's state is read
    stats_socket = "..."                 # (state = "haproxy")
    standby = ["hb_standby", "all"]      # how a director steps down gracefully
    logs = ["heartbeat"]                 # its services whose logs the timelines read

What a template sees: ``host`` (``name``, ``priority``, ``public``/``private``: its
addresses, ``addresses``: all of them, ``iface.public``/``iface.private``: the
interface names), ``peers`` and ``directors`` (the same, for the other directors and
for all), ``webs`` (``name``, ``private``), ``vip`` (``address``, ``prefixlen``,
``broadcast``), ``ports``, ``paths`` (the host's run, log and state directories),
``health_path``, ``cluster_key`` (the directors' shared secret) and ``slowness``
(the lab's pace: a timer stretched by it stays honest under emulation).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from lab.backend import HostPaths, ServiceSpec
from lab.errors import ConfigError, HalabError
from lab.topology import Host, Topology
from provision import director, web

HALAB = "halab"  # the default: halab's own balancer and heartbeat (provision.director)
MANIFEST = "stack.toml"
DIRECTOR_PORTS = ("http", "admin")  # the topology's ports a stack's service may listen on
FAILOVERS = ("heartbeat", "vrrp")
STATES = ("haproxy", "ipvs", "traffic")


def builtin_root() -> Path:
    return Path(str(resources.files("stacks")))


def search_path(root: Path) -> tuple[Path, Path]:
    """Where a stack's templates are found: its folder, then the built-in stacks (a
    template may be a built-in's: "seed/ha.cf")."""
    return root, builtin_root()


def builtin() -> list[str]:
    """The stacks that come with halab, halab's own first."""
    return [HALAB, *sorted(p.parent.name for p in builtin_root().glob(f"*/{MANIFEST}"))]


@dataclass(frozen=True)
class FileSpec:
    template: str
    path: str
    mode: int = 0o644
    check: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServiceTemplate:
    name: str
    command: str
    listens: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()


@dataclass(frozen=True)
class Adapter:
    failover: str
    state: str
    stats_socket: str = ""
    standby: tuple[str, ...] = ()
    logs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stack:
    name: str
    root: Path
    description: str
    packages: tuple[str, ...]
    requires: tuple[str, ...]
    files: tuple[FileSpec, ...]
    services: tuple[ServiceTemplate, ...]
    adapter: Adapter


@dataclass(frozen=True)
class Rendered:
    """A stack filled in for one director."""

    files: tuple[tuple[str, str, int], ...]  # (path, content, mode)
    services: tuple[ServiceSpec, ...]
    checks: tuple[tuple[str, tuple[str, ...]], ...]  # (path, its checker: checker_argv)
    stats_socket: str


def find(name: str) -> Path:
    """A stack's folder: a built-in stack's name, or the path of a folder of one's own."""
    own = Path(name)
    if (own / MANIFEST).is_file():
        return own.resolve()
    here = builtin_root() / name
    if "/" not in name and (here / MANIFEST).is_file():
        return here
    known = ", ".join(builtin())
    raise HalabError(f"no stack {name!r}: a stack is one of {known}, or a folder "
                     f"with a {MANIFEST}")


def load(name: str) -> Stack:
    """The stack ``name`` (not halab's own, which is no folder), its manifest checked."""
    root = find(name)
    path = root / MANIFEST
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(str(path), "", f"not TOML: {e}") from None
    m = _Manifest(str(path))
    m.only(data, "", ("description", "packages", "requires", "files", "services", "adapter"))
    files = tuple(m.file(f, f"files[{i}]") for i, f in enumerate(m.tables(data, "files")))
    services = tuple(m.service(s, f"services[{i}]")
                     for i, s in enumerate(m.tables(data, "services")))
    if not services:
        raise ConfigError(str(path), "services", "a stack runs at least one service")
    for f in files:
        if not any((d / f.template).is_file() for d in search_path(root)):
            raise ConfigError(str(path), "files", f"no template {f.template!r} in {root}")
    return Stack(root.name, root, m.text(data, "description", required=True),
                 m.strings(data, "packages"), m.strings(data, "requires"), files, services,
                 m.adapter(data.get("adapter"), {s.name for s in services}))


class _Manifest:
    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, key: str, reason: str) -> ConfigError:
        return ConfigError(self.path, key, reason)

    def only(self, table: Mapping[str, Any], key: str, allowed: Sequence[str]) -> None:
        for k in table:
            if k not in allowed:
                where = f"{key}.{k}" if key else k
                raise self.fail(where, f"unknown key (known: {', '.join(allowed)})")

    def text(self, table: Mapping[str, Any], key: str, where: str = "",
             required: bool = False) -> str:
        value = table.get(key, "")
        if not isinstance(value, str) or (required and not value):
            raise self.fail(f"{where}{key}", "must be a non-empty string" if required
                            else "must be a string")
        return value

    def strings(self, table: Mapping[str, Any], key: str, where: str = "") -> tuple[str, ...]:
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(f"{where}{key}", "must be a list of non-empty strings")
        return tuple(value)

    def tables(self, data: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.fail(key, f"must be an array of tables ([[{key}]])")
        return value

    def file(self, t: dict[str, Any], key: str) -> FileSpec:
        self.only(t, key, ("template", "path", "mode", "check"))
        path = self.text(t, "path", f"{key}.", required=True)
        if not path.startswith("/"):
            raise self.fail(f"{key}.path", "must be an absolute path on the director")
        mode = t.get("mode", 0o644)
        if not isinstance(mode, int) or not 0 <= mode <= 0o777:
            raise self.fail(f"{key}.mode", "must be a file mode such as 0o644")
        return FileSpec(self.text(t, "template", f"{key}.", required=True), path, mode,
                        self.strings(t, "check", f"{key}."))

    def service(self, t: dict[str, Any], key: str) -> ServiceTemplate:
        self.only(t, key, ("name", "command", "listens", "reads"))
        listens = self.strings(t, "listens", f"{key}.")
        for port in listens:
            if port not in DIRECTOR_PORTS:
                raise self.fail(f"{key}.listens", f"{port!r} is not one of the topology's "
                                f"ports a director serves ({', '.join(DIRECTOR_PORTS)})")
        return ServiceTemplate(self.text(t, "name", f"{key}.", required=True),
                               self.text(t, "command", f"{key}.", required=True),
                               listens, self.strings(t, "reads", f"{key}."))

    def adapter(self, t: Any, services: set[str]) -> Adapter:
        if not isinstance(t, dict):
            raise self.fail("adapter", "missing: what the suite reads of the stack")
        self.only(t, "adapter", ("failover", "state", "stats_socket", "standby", "logs"))
        a = Adapter(self.text(t, "failover", "adapter.", required=True),
                    self.text(t, "state", "adapter.", required=True),
                    self.text(t, "stats_socket", "adapter."),
                    self.strings(t, "standby", "adapter."), self.strings(t, "logs", "adapter."))
        if a.failover not in FAILOVERS:
            raise self.fail("adapter.failover", f"one of {', '.join(FAILOVERS)}")
        if a.state not in STATES:
            raise self.fail("adapter.state", f"one of {', '.join(STATES)}")
        if a.state == "haproxy" and not a.stats_socket:
            raise self.fail("adapter.stats_socket", "needed where state = \"haproxy\"")
        for log in a.logs:
            if log not in services:
                raise self.fail("adapter.logs", f"{log!r} is none of the stack's services")
        return a


def context(topo: Topology, host: Host, paths: HostPaths, cluster_key: str,
            slowness: float = 1.0) -> dict[str, Any]:
    """What a template sees (the module's docstring lists it)."""
    def node(h: Host) -> dict[str, Any]:
        return {"name": h.name,
                "priority": director.priority(topo, h) if h in topo.directors else 0,
                "addresses": [str(i.address) for i in h.interfaces],
                "iface": {i.network.name: i.name for i in h.interfaces},
                **{i.network.name: str(i.address) for i in h.interfaces}}

    subnet = topo.vip.network.subnet
    return {
        "host": node(host),
        "peers": [node(p) for p in topo.peers(host)],
        "directors": [node(d) for d in topo.directors],
        "webs": [node(w) for w in topo.webs],
        "vip": {"address": str(topo.vip.address), "prefixlen": subnet.prefixlen,
                "broadcast": str(subnet.broadcast_address)},
        "ports": {"http": topo.ports.http, "admin": topo.ports.admin,
                  "heartbeat": topo.ports.heartbeat},
        "paths": {"run": str(paths.run), "log": str(paths.log), "state": str(paths.state)},
        "health_path": web.HEALTH_PATH,
        "cluster_key": cluster_key,
        "slowness": slowness,
    }


def checker_argv(check: Sequence[str], path: str) -> list[str]:
    """A file's checker (the manifest's ``check``), run on the file at ``path``."""
    return [a.replace("{path}", path) for a in check]


def render(stack: Stack, topo: Topology, host: Host, paths: HostPaths, cluster_key: str,
           slowness: float = 1.0) -> Rendered:
    """``stack`` filled in for the director ``host``. A template's mistake (a name it
    does not know, bad syntax) is one line naming the template and its line."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(search_path(stack.root)),
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
        trim_blocks=True, lstrip_blocks=True, autoescape=False)
    ctx = context(topo, host, paths, cluster_key, slowness)

    def fill(where: str, source: str | None = None) -> str:
        """The template ``where`` names, or ``source`` (a manifest's value) said to be
        from ``where``."""
        try:
            template = env.get_template(where) if source is None else env.from_string(source)
            return template.render(ctx)
        except jinja2.TemplateSyntaxError as e:
            raise HalabError(f"{stack.root / (e.filename or where)}:{e.lineno}: "
                             f"{e.message}") from None
        except jinja2.TemplateError as e:
            raise HalabError(f"{stack.root / where}: {e.message or e}") from None

    files = tuple((f.path, fill(f.template), f.mode) for f in stack.files)
    services = tuple(
        ServiceSpec(name=s.name,
                    argv=tuple(shlex.split(fill(f"{MANIFEST}: {s.name}", s.command))),
                    listens=tuple(getattr(topo.ports, p) for p in s.listens), reads=s.reads)
        for s in stack.services)
    checks = tuple((f.path, f.check) for f in stack.files if f.check)
    socket = fill(f"{MANIFEST}: adapter.stats_socket", stack.adapter.stats_socket)
    return Rendered(files, services, checks, socket)


def check_where(host: Host, argv: Sequence[str], timeout: float = 30) -> tuple[int, str]:
    """Run a checker as it would run on ``host``, on this machine: where the host's
    interfaces exist (keepalived checks that its interfaces do), in a network
    namespace made for it (in a user namespace of its own when not root), the host's
    interface names on veth pairs (no address, no route: nothing leaves it; this
    kernel has no dummy links). Returns its exit status and its output."""
    own_user = [] if os.geteuid() == 0 else ["--map-root-user"]
    links = "".join(f"ip link add {i.name} type veth peer name {i.name}p && "
                    for i in host.interfaces)
    try:
        res = subprocess.run(["unshare", *own_user, "--net", "sh", "-c",
                              links + 'exec "$@"', "sh", *argv],
                             capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise HalabError("unshare is not installed (util-linux)") from None
    except subprocess.TimeoutExpired:
        return 124, f"{argv[0]}: no answer after {timeout:g} s"
    return res.returncode, (res.stdout + res.stderr).strip()


@dataclass(frozen=True)
class Checked:
    host: str
    path: str  # as on the director
    local: Path  # where it was written here
    problem: str  # "" when its checker passed (or it has none)
    checker: str = ""


def check(stack: Stack, topo: Topology, out: Path,
          cluster_key: str = "0" * 32) -> list[Checked]:
    """``stack`` rendered for every director under ``out/HOST/`` (each file at its path
    there, the host's directories beside: ``run``, ``log``, ``state``), and each file's
    checker run on it; missing programs are a problem each."""
    done = []
    for host in topo.directors:
        root = out / host.name
        paths = HostPaths(root / "run", root / "log", root / "state")
        for d in (paths.run, paths.log, paths.state):
            d.mkdir(parents=True, exist_ok=True)
        rendered = render(stack, topo, host, paths, cluster_key)
        checks = dict(rendered.checks)
        for path, content, mode in rendered.files:
            local = root / path.lstrip("/")
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text(content)
            local.chmod(mode)
            argv = checker_argv(checks.get(path, ()), str(local))
            problem = ""
            if argv and shutil.which(argv[0]) is None:
                problem = f"{argv[0]} is not installed here (./bootstrap deps installs it)"
            elif argv:
                rc, said = check_where(host, argv)
                problem = "" if rc == 0 else said or f"{argv[0]} exited {rc}"
            done.append(Checked(host.name, path, local, problem, argv[0] if argv else ""))
    return done
