"""What makes a host a client, a director or a web node.

``plan_host`` is pure: from the topology, the host's paths and the lab's
keys it renders every file, the commands that apply them and the services to
run. ``apply`` carries a plan out through any backend, in the same order on
a network namespace, a VM or a real host:

1. write every file (so nothing below can fall back to a system default)
2. apply sysctls and the firewall (iptables-restore: atomic per table)
3. start the services that are not running, waiting until they listen; restart
   those whose files changed (one host of the director pair or of the web tier at a
   time); leave the others be, so provisioning again is a no-op

Directors run halab's balancer and heartbeat. ``provision`` says each step as it is
done through ``progress(host, step)`` (default: nothing); ``halab provision`` prints
them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from lab.backend import Backend, HostPaths, ServiceSpec
from lab.errors import HalabError
from lab.topology import Host, Role, Topology
from provision import director, firewall, ssh, units, web

SYSCTL_FILE = "/etc/sysctl.d/60-halab.conf"
IPTABLES_FILE = "/etc/halab/iptables.rules"
IP6TABLES_FILE = "/etc/halab/ip6tables.rules"
FIREWALL_UNIT = "halab-firewall.service"  # the firewall again at boot
# what provisioning says as it goes: progress(host, step), one short step at a time,
# e.g. ("dir0", "files written (0.4 s)"); called from several threads at once
Progress = Callable[[str, str], None]
PROGRAMS = ("nginx", "sshd", "ssh-keygen", "iptables-restore", "ip6tables-restore", "sysctl",
            "conntrack", "curl")

# Kernel settings per role (each network namespace has its own).
ROLE_SYSCTLS: dict[Role, dict[str, str]] = {
    Role.CLIENT: {"net.ipv4.ip_forward": "0"},
    Role.DIRECTOR: {
        "net.ipv4.ip_forward": "0",
        # bind the VIP before owning it (balancer listens on it on both directors)
        "net.ipv4.ip_nonlocal_bind": "1",
        # answer ARP only for addresses on the asking interface, and announce
        # with the best local address: no ARP flux across the two networks
        "net.ipv4.conf.all.arp_ignore": "1",
        "net.ipv4.conf.all.arp_announce": "2",
        # every packet takes the routing decision: a graceful handover routes the old
        # master's connections on by firewall mark, and early demux would hand a
        # packet to a stale local TIME_WAIT socket (a reset) before routing sees it
        "net.ipv4.tcp_early_demux": "0",
    },
    Role.WEB: {"net.ipv4.ip_forward": "0"},
}


@dataclass(frozen=True)
class File:
    path: str
    content: str
    mode: int = 0o644


@dataclass(frozen=True)
class LabKeys:
    operator: ssh.KeyPair
    host_public: Mapping[str, str]  # host name -> its host key's public line
    cluster: str = ""  # the heartbeat key shared by the directors
    host_private: Mapping[str, str] = field(default_factory=dict)  # installed on each host


@dataclass(frozen=True)
class HostPlan:
    host: str
    files: tuple[File, ...]
    commands: tuple[tuple[str, ...], ...]
    services: tuple[ServiceSpec, ...] = field(default=())
    # units (provision/units) that redo the commands at every boot, where hosts boot
    at_boot: tuple[tuple[str, str], ...] = field(default=())  # (unit, its text)
    # hosts of one rolling group start (or restart) their services one at a time,
    # even when provisioned at once: the director pair, the web tier
    rolling: str = ""


def hosts_file(topo: Topology, host: Host) -> str:
    """/etc/hosts: lab names resolve to the address this host reaches them on."""
    lines = ["127.0.0.1 localhost", f"127.0.1.1 {host.name}", ""]
    for other in topo.hosts.values():
        if other.name == host.name:
            continue
        addr = topo.reachable_address(host, other)
        if addr is not None:
            lines.append(f"{addr} {other.name}")
    for other in topo.hosts.values():
        for iface in other.interfaces:
            lines.append(f"{iface.address} {other.name}-{iface.network.name}")
    if host.interface(topo.vip.network.name) is not None:
        lines.append(f"{topo.vip.address} vip")
    return "\n".join(lines) + "\n"


def sysctl_file(host: Host) -> str:
    settings = ROLE_SYSCTLS[host.role]
    body = "".join(f"{k} = {v}\n" for k, v in settings.items())
    return f"# halab: kernel settings for a {host.role.value}\n{body}"


def plan_host(topo: Topology, host: Host, paths: HostPaths, keys: LabKeys,
              python: str = "python3", user_keys: bool = False,
              slowness: float = 1.0) -> HostPlan:
    """Everything ``host`` needs; ``python`` is the interpreter with halab on that host;
    ``user_keys``: its users keep their own authorized keys (see Backend.user_keys);
    ``slowness``: the lab's pace (Backend.slowness), which the heartbeat timers follow."""
    files = [
        File("/etc/hosts", hosts_file(topo, host)),
        File(SYSCTL_FILE, sysctl_file(host)),
        File(IP6TABLES_FILE, firewall.render_v6(host)),
        File(ssh.SSHD_CONFIG, ssh.sshd_config(topo, host, paths, user_keys)),
        File("/etc/ssh/ssh_config", ssh.ssh_config(host)),
        File("/etc/ssh/ssh_known_hosts", ssh.known_hosts(topo, keys.host_public)),
        File("/etc/ssh/authorized_keys/root", keys.operator.public),
        File(ssh.IDENTITY, keys.operator.private, 0o600),
    ]
    if host.name in keys.host_private:  # (a host that keeps its own key: no file)
        files += [File(ssh.HOST_KEY, keys.host_private[host.name], 0o600),
                  File(ssh.HOST_KEY + ".pub", keys.host_public[host.name])]
    commands: list[tuple[str, ...]] = [("sysctl", "-q", "-p", SYSCTL_FILE)]
    v4 = firewall.render_v4(topo, host)
    if v4 is not None:
        files.append(File(IPTABLES_FILE, v4))
        commands.append(("iptables-restore", IPTABLES_FILE))
    commands.append(("ip6tables-restore", IP6TABLES_FILE))
    services = [ssh.sshd_service(topo)]
    if host.role is Role.WEB:
        files += [
            File(web.NGINX_CONF, web.nginx_conf(topo, host, paths)),
            File(f"{web.docroot(paths)}/index.html", web.page(host)),
        ]
        commands.append(("mkdir", "-p", f"{paths.state}/nginx"))
        services.append(web.nginx_service(topo))
    if host.role is Role.DIRECTOR:
        files += [
            File(director.BALANCER_CONFIG, director.balancer_toml(topo, host, paths, slowness)),
            File(director.HEARTBEAT_CONFIG, director.heartbeat_toml(topo, host, paths, slowness)),
            File(director.AUTHKEY, keys.cluster + "\n", 0o600),
        ]
        commands += [
            (python, "-m", "balancer", "--check", "-f", director.BALANCER_CONFIG),
            (python, "-m", "heartbeat", "--check", "-f", director.HEARTBEAT_CONFIG),
        ]
        services += [director.balancer_service(topo, python),
                     director.heartbeat_service(paths, python)]
    # a service whose files changed restarts, the others are left be
    return HostPlan(host.name, tuple(files), tuple(commands),
                    tuple(replace(s, inputs=fingerprint([f for f in files if f.path in s.reads]))
                          for s in services),
                    at_boot=((FIREWALL_UNIT, units.text(FIREWALL_UNIT)),),
                    rolling="" if host.role is Role.CLIENT else host.role.value)


def fingerprint(files: Sequence[File]) -> str:
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.path):
        h.update(f"{f.path}\0{f.mode:o}\0{len(f.content)}\0{f.content}".encode())
    return h.hexdigest()


def silent(host: str, step: str) -> None:
    """The default progress: say nothing."""


def _since(t0: float) -> str:
    return f"({time.monotonic() - t0:.1f} s)"


def apply(backend: Backend, plan: HostPlan, progress: Progress = silent) -> None:
    host = plan.host
    t0 = time.monotonic()
    backend.put_files(host, [(f.path, f.content, f.mode) for f in plan.files])
    progress(host, f"files written {_since(t0)}")
    t0 = time.monotonic()
    for argv in plan.commands:
        backend.run(host, argv)
    for unit, text in plan.at_boot:
        backend.enable_at_boot(host, unit, text)
    checked = ", configs checked" if any("--check" in argv for argv in plan.commands) else ""
    progress(host, f"kernel settings and firewall applied{checked} {_since(t0)}")
    waiting = f"services: waiting for the other {plan.rolling} host to finish (one at a time)"
    with _rolling(backend, plan.rolling, lambda: progress(host, waiting)):
        running = []
        for spec in plan.services:
            t0 = time.monotonic()
            backend.start_service(host, spec)
            running.append(f"{spec.name} {_since(t0)}")
    progress(host, "services running: " + ", ".join(running))


@contextmanager
def _rolling(backend: Backend, group: str, busy: Callable[[], None]) -> Iterator[None]:
    """One host of ``group`` at a time (across processes: Vagrant provisions each VM
    from its own): a director pair restarting at once would have no peer to hand the
    VIP over to, nor a web tier a node to send requests to. ``busy`` is called when
    another host has the turn."""
    if not group:
        yield
        return
    backend.control_dir.mkdir(parents=True, exist_ok=True)
    with _locked(backend.control_dir / f"rolling-{group}.lock", busy):
        yield


def lab_keys(backend: Backend) -> LabKeys:
    """The lab's keys, all kept on the controller and made when missing: the operator
    key, every host's SSH host key (so one host can be provisioned, its known_hosts
    complete, before the others exist; a host that keeps its own, a real server's,
    is asked for it) and the directors' heartbeat key. Several provisioning processes
    at once (one per VM, from Vagrant's triggers) take turns."""
    with ThreadPoolExecutor(max_workers=len(backend.topology.hosts)) as pool:
        own = dict(zip(backend.topology.hosts,
                       pool.map(backend.own_host_key, backend.topology.hosts), strict=True))
    backend.control_dir.mkdir(parents=True, exist_ok=True)
    with _locked(backend.control_dir / "keys.lock"):
        operator = _keypair(backend.control_dir / "operator_ed25519",
                            f"halab-operator@{backend.topology.lab}")
        made = {h: _keypair(backend.control_dir / "host_keys" / f"{h}_ed25519", f"root@{h}")
                for h, key in own.items() if key is None}
        cluster_file = backend.control_dir / "authkey"
        if not cluster_file.exists():
            _write_private(cluster_file, running_authkey(backend) or secrets.token_hex(32))
        cluster = cluster_file.read_text().strip()
    public = {h: key or made[h].public for h, key in own.items()}
    return LabKeys(operator, public, cluster, {h: k.private for h, k in made.items()})


def running_authkey(backend: Backend) -> str | None:
    """The heartbeat key the directors already share, for a controller that has none
    (hosts provisioned from another checkout, say): a new key would split the pair,
    the restarted director deaf to the running one (each drops the other's packets,
    both MASTER) until both restarted. None if no director has one (or they differ).
    To change the key, write the new one to the control directory's ``authkey``."""
    found = set()
    for d in backend.topology.directors:
        with contextlib.suppress(HalabError):  # (not provisioned yet, not up yet)
            found.add(backend.read_file(d.name, director.AUTHKEY).decode().strip())
    found.discard("")
    return found.pop() if len(found) == 1 else None


@contextmanager
def _locked(path: Path, busy: Callable[[], None] = lambda: None) -> Iterator[None]:
    """``busy`` is called before waiting, if another holds the lock."""
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            busy()
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _keypair(private: Path, comment: str) -> ssh.KeyPair:
    if not private.exists():
        pair = ssh.generate_keypair(comment)
        private.parent.mkdir(parents=True, exist_ok=True)
        private.with_suffix(".pub").write_text(pair.public)
        _write_private(private, pair.private)  # last: its presence means both are there
    return ssh.KeyPair(private.read_text(), private.with_suffix(".pub").read_text())


def _write_private(path: Path, text: str) -> None:
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(text)


def provision(backend: Backend, hosts: Sequence[str] | None = None,
              progress: Progress = silent) -> None:
    """Make every host (or those named) what its role says, in parallel; each step
    said through ``progress`` once done (the first two for every host at once)."""
    names = [backend.host(h).name for h in hosts] if hosts else [h.name for h in backend.hosts()]

    def each(step: str) -> None:
        for h in names:
            progress(h, step)

    t0 = time.monotonic()
    backend.prepare(names)
    each(f"halab installed {_since(t0)}")
    t0 = time.monotonic()
    backend.require_programs(PROGRAMS, names)
    each(f"programs present {_since(t0)}")
    topo = backend.topology
    keys = lab_keys(backend)
    (backend.control_dir / "known_hosts").write_text(ssh.known_hosts(topo, keys.host_public))
    plans = [plan_host(topo, topo.hosts[h], backend.paths(h), keys, backend.python,
                       backend.user_keys, backend.slowness)
             for h in names]
    with ThreadPoolExecutor(max_workers=len(plans)) as pool:
        for future in [pool.submit(apply, backend, p, progress) for p in plans]:
            future.result()
