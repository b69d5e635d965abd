"""The embedded lab: every host is a Linux network namespace on this machine.

Layout (for the default topology, lab name ``halab``)::

    halab-switch   one namespace holding a bridge per network (br-public,
                   br-private) and the switch side of every veth pair
                   (``<host>.<ifname>``, e.g. ``dir0.eth1``)
    halab-<host>   one namespace per host: lo and eth1, eth2, ... named as
                   on the Vagrant VMs (see lab/topology.yaml), with the
                   host's addresses and a MAC derived from each address
                   (02:00:<the four address bytes>)

Each host also has its own UTS namespace (``hostname`` prints ``dir0`` on
dir0, also over SSH), pinned at ``/run/halab/<lab>/uts/<host>``.

The root namespace gets no lab interface, address or route, and no host has
a default route: lab traffic cannot leave the lab.

Per-host files: a path under ``/etc`` on host H is stored in
``/etc/netns/<lab>-H/``, which ``ip netns exec`` bind-mounts over ``/etc``
for every process it starts on H, so dir0's daemons read dir0's
``/etc/halab/...`` at exactly the path they would read on a VM. Runtime files
live in per-host directories (``HostPaths``)::

    /run/halab/<lab>/<host>/       pidfiles, sockets
    /var/log/halab/<lab>/<host>/   logs (kept after ``down`` for a post-mortem,
                                   cleared by the next ``up``)
    /var/lib/halab/<lab>/<host>/   state, document roots

``down`` stops every service, ends every process still inside a lab
namespace (by PID), deletes the namespaces (and with them every veth,
bridge and iptables rule) and removes the run, state and /etc/netns files.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from lab.backend import Backend, HostPaths, Result, ServiceSpec, ServiceState
from lab.backends.netns.plan import (
    LOG_ROOT,
    NETNS_ETC,
    RUN_ROOT,
    RUNTIME_DIRS,
    STATE_ROOT,
    host_exec,
    host_file,
    plan_host,
    plan_namespaces,
    plan_switch,
    switch_namespace,
    switch_port,
)
from lab.backends.netns.supervisor import Supervisor, reap, terminate
from lab.errors import HalabError
from lab.system import alive, env, require_programs, require_root, run_local
from lab.topology import Topology, describe

# --- the backend ---------------------------------------------------------------


class NetnsBackend(Backend):
    kind = "netns"

    def __init__(self, topology: Topology) -> None:
        super().__init__(topology)
        self.control_dir = RUN_ROOT / topology.lab
        self.snapshot = self.control_dir / "topology.json"
        self.created_file = self.control_dir / "created.json"
        self._lock = threading.Lock()  # provisioning writes files from several threads
        self.python = sys.executable  # hosts share this machine's file system

    # namespaces -------------------------------------------------------------

    def ns(self, host: str) -> str:
        self.host(host)
        return self.topology.namespace(host)

    def existing_namespaces(self) -> set[str]:
        out = run_local(["ip", "netns", "list"]).stdout.decode()
        return {line.split()[0] for line in out.splitlines() if line.strip()}

    def lab_namespaces(self) -> list[str]:
        prefix = f"{self.topology.lab}-"
        return sorted(ns for ns in self.existing_namespaces() if ns.startswith(prefix))

    def is_up(self) -> bool:
        wanted = {switch_namespace(self.topology)} | {
            self.topology.namespace(h) for h in self.topology.hosts
        }
        return wanted <= self.existing_namespaces()

    def _links(self, ns: str) -> set[str]:
        out = run_local(["ip", "-n", ns, "-j", "link", "show"]).stdout
        return {link["ifname"] for link in json.loads(out or b"[]")}

    @staticmethod
    def _batch(ns: str | None, lines: list[str]) -> None:
        if not lines:
            return
        argv = ["ip", "-n", ns, "-batch", "-"] if ns else ["ip", "-batch", "-"]
        run_local(argv, input=("\n".join(lines) + "\n").encode())

    # paths ------------------------------------------------------------------

    def paths(self, host: str) -> HostPaths:
        self.host(host)
        lab = self.topology.lab
        return HostPaths(
            run=RUN_ROOT / lab / host,
            log=LOG_ROOT / lab / host,
            state=STATE_ROOT / lab / host,
        )

    def _local_path(self, host: str, path: str) -> Path:
        """Where a host's file lives on this machine (making /etc mountpoints as needed)."""
        local, mountpoint = host_file(self.topology, self.paths(host), host, path)
        if mountpoint is not None:
            self._ensure_mountpoint(mountpoint, is_dir=mountpoint != Path(path))
        return local

    def _ensure_mountpoint(self, target: Path, *, is_dir: bool) -> None:
        """``ip netns exec`` can only bind /etc/netns/NS/X over an existing /etc/X."""
        with self._lock:
            if target.exists():
                return
            if is_dir:
                target.mkdir(mode=0o755)
            else:
                target.touch(mode=0o644)
            self._record_created(target)

    def _record_created(self, path: Path) -> None:
        created = self._created()
        if str(path) not in created:
            created.append(str(path))
            self.control_dir.mkdir(parents=True, exist_ok=True)
            self.created_file.write_text(json.dumps(created))

    def _created(self) -> list[str]:
        try:
            data = json.loads(self.created_file.read_text())
        except (OSError, ValueError):
            return []
        return [str(x) for x in data] if isinstance(data, list) else []

    # files and commands -------------------------------------------------------

    def put_file(self, host: str, path: str, content: bytes | str, mode: int = 0o644) -> None:
        local = self._local_path(host, path)
        local.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode() if isinstance(content, str) else content
        tmp = local.with_name(f".{local.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.write(fd, data)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        tmp.replace(local)

    def read_file(self, host: str, path: str) -> bytes:
        try:
            return self._local_path(host, path).read_bytes()
        except FileNotFoundError:
            raise HalabError(f"{host}: no file {path}") from None

    def uts_file(self, host: str) -> Path:
        """The host's UTS namespace (its hostname), pinned by a bind mount."""
        return self.control_dir / "uts" / host

    def require_programs(self, programs: Sequence[str], hosts: Sequence[str] | None = None
                         ) -> None:
        require_programs(programs)  # the hosts share this machine's programs

    def enable_at_boot(self, host: str, unit: str, text: str) -> None:
        """A namespace never boots: what provisioning applied stays until `down`."""

    def command(self, host: str, argv: Sequence[str]) -> list[str]:
        return host_exec(self.ns(host), self.uts_file(host), argv)

    def execute(self, host: str, argv: Sequence[str], *, input: bytes | None,
                timeout: float) -> Result:
        try:
            proc = subprocess.run(self.command(host, argv), input=input, capture_output=True,
                                  env=env(), timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise HalabError(f"{host}: `{' '.join(argv)}` took longer than {timeout} s") from None
        return Result(list(argv), proc.returncode, proc.stdout, proc.stderr)

    # services ---------------------------------------------------------------

    def supervisor(self, host: str) -> Supervisor:
        hp = self.paths(host)
        return Supervisor(host, hp.run / "supervisor", hp.log,
                          lambda argv: self.command(host, argv))

    def start_service(self, host: str, spec: ServiceSpec) -> ServiceState:
        return self.supervisor(host).start(spec)

    def stop_service(self, host: str, name: str) -> None:
        self.supervisor(host).stop(name)

    def restart_service(self, host: str, name: str) -> ServiceState:
        return self.supervisor(host).restart(name)

    def services(self, host: str) -> list[ServiceState]:
        return self.supervisor(host).states()

    def service_log(self, host: str, name: str) -> Path:
        return self.supervisor(host).log(name)

    # ssh from this machine (testinfra, fabric) ---------------------------------

    def ssh_config(self) -> str:
        """An ssh_config that reaches every host's real sshd through its own loopback
        (``ip netns exec ... nc``): the root namespace needs no lab route."""
        known = self.control_dir / "known_hosts"
        key = self.control_dir / "operator_ed25519"
        blocks = []
        for host in self.topology.hosts.values():
            proxy = " ".join(self.command(host.name, ["nc", "127.0.0.1",
                                                      str(self.topology.ports.ssh)]))
            blocks.append(
                f"Host {host.name}\n    User root\n    ProxyCommand {proxy}\n"
                f"    IdentityFile {key}\n    IdentitiesOnly yes\n"
                f"    UserKnownHostsFile {known}\n    StrictHostKeyChecking yes\n"
                f"    BatchMode yes\n    ConnectTimeout 5\n"
                # one connection per host, reused: a new ssh per command is slow
                f"    ControlMaster auto\n    ControlPath {self.control_dir}/ssh-%h\n"
                f"    ControlPersist 30\n")
        return "\n".join(blocks)

    # faults -------------------------------------------------------------------

    def set_links(self, host: str, up: bool, networks: Sequence[str] | None = None) -> None:
        h = self.host(host)
        lines = [f"link set {switch_port(h, i)} {'up' if up else 'down'}" for i in h.interfaces
                 if networks is None or i.network.name in networks]
        self._batch(switch_namespace(self.topology), lines)

    def power_off(self, host: str) -> None:
        """As machine.md says: cut the links first, then SIGKILL, children before parents."""
        self.set_links(host, False)
        # what runs now is what starts again at boot (a stopped service stays stopped)
        sup = self.supervisor(host)
        running = [st.name for st in sup.states() if st.running]
        sup.run_dir.mkdir(parents=True, exist_ok=True)
        (sup.run_dir / "boot.json").write_text(json.dumps(running))
        pids = _netns_pids(self.ns(host))
        for pid in sorted(pids, key=_depth, reverse=True):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in pids:
            reap(pid)

    def power_on(self, host: str) -> None:
        h = self.host(host)
        ns = self.ns(host)
        # a booting host has only its configured addresses (no VIP left over)
        for iface in h.interfaces:
            run_local(["ip", "-n", ns, "addr", "flush", "dev", iface.name])
        self._batch(ns, plan_host(h))
        self.set_links(host, True)
        sup = self.supervisor(host)
        try:
            boot = json.loads((sup.run_dir / "boot.json").read_text())
        except (OSError, ValueError):
            boot = sup.names()
        for name in sup.names():
            if name in boot:
                sup.restart(name)

    # up and down ------------------------------------------------------------

    def up(self) -> None:
        require_root("the netns lab")
        require_programs(["ip", "nsenter", "unshare"])
        topo = self.topology
        fingerprint = topo_fingerprint(topo)
        if self.snapshot.exists() and self.snapshot.read_text() != fingerprint:
            raise HalabError(
                f"lab {topo.lab!r} is up with a different topology: "
                f"run `halab down` first, then `halab up --topology {topo.source}`"
            )
        existing = self.existing_namespaces()
        fresh = not ({topo.namespace(h) for h in topo.hosts} & existing)
        if fresh:
            shutil.rmtree(LOG_ROOT / topo.lab, ignore_errors=True)
        for d in (NETNS_ETC, *RUNTIME_DIRS):
            if not d.exists():
                d.mkdir(mode=0o755)
                self._record_created(d)
        self.control_dir.mkdir(parents=True, exist_ok=True)
        self._batch(None, plan_namespaces(topo, existing))
        sw = switch_namespace(topo)
        self._batch(sw, plan_switch(topo, self._links(sw)))
        for host in topo.hosts.values():
            self._batch(topo.namespace(host.name), plan_host(host))
            (NETNS_ETC / topo.namespace(host.name)).mkdir(parents=True, exist_ok=True)
            hp = self.paths(host.name)
            for d in (hp.run, hp.log, hp.state):
                d.mkdir(parents=True, exist_ok=True)
            self._ensure_uts(host.name)
        self.snapshot.write_text(fingerprint)

    def _ensure_uts(self, host: str) -> None:
        uts = self.uts_file(host)
        if _is_mountpoint(uts):
            return
        uts.parent.mkdir(parents=True, exist_ok=True)
        uts.touch()
        run_local(["unshare", f"--uts={uts}", "hostname", host])

    def down(self) -> None:
        require_root("the netns lab")
        lab = self.topology.lab
        namespaces = self.lab_namespaces()
        # 1. Graceful stop of supervised services, in reverse start order.
        lab_run = RUN_ROOT / lab
        for sup_dir in sorted(lab_run.glob("*/supervisor")):
            host = sup_dir.parent.name
            Supervisor(host, sup_dir, LOG_ROOT / lab / host, list).stop_all()
        # 2. SSH connection masters (ssh-config) end with their sockets; then whatever
        #    still runs inside a lab namespace is the lab's: end it by PID.
        for sock in sorted(lab_run.glob("ssh-*")):
            run_local(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "lab"], check=False)
        for ns in namespaces:
            for pid in _netns_pids(ns):
                if alive(pid):
                    terminate(pid, None, timeout=2.0)
        # 3. Deleting a namespace deletes its veths, bridges and iptables rules.
        self._batch(None, [f"netns del {ns}" for ns in namespaces])
        for uts in sorted((lab_run / "uts").glob("*")):
            if _is_mountpoint(uts):
                # -n: no utab update, which would leave /run/mount behind on a
                # machine that had none
                run_local(["umount", "-n", str(uts)])
        # 4. Files: per-host /etc, run and state directories; mountpoints we made.
        created = self._created()
        for ns_dir in NETNS_ETC.glob(f"{lab}-*") if NETNS_ETC.is_dir() else []:
            shutil.rmtree(ns_dir, ignore_errors=True)
        shutil.rmtree(lab_run, ignore_errors=True)
        shutil.rmtree(STATE_ROOT / lab, ignore_errors=True)
        others_up = NETNS_ETC.is_dir() and any(NETNS_ETC.glob("halab*-*"))
        if not others_up:
            for path in reversed(created):
                _remove_if_empty(Path(path))
        for root in (RUN_ROOT, STATE_ROOT):
            _remove_if_empty(root)


def topo_fingerprint(topo: Topology) -> str:
    """A canonical text of the topology, to notice a changed file while the lab is up."""
    return json.dumps(describe(topo), sort_keys=True)


def _is_mountpoint(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def _depth(pid: int) -> int:
    """How far below PID 1 a process is (children sort after their parents)."""
    depth = 0
    while pid > 1 and depth < 64:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat[stat.rindex(")") + 2:].split()[1])
        depth += 1
    return depth


def _netns_pids(ns: str) -> list[int]:
    proc = run_local(["ip", "netns", "pids", ns], check=False)
    return [int(x) for x in proc.stdout.split()]


def _remove_if_empty(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir():
            path.rmdir()
        elif path.is_file() and path.stat().st_size == 0:
            path.unlink()
