"""The vagrant backend: one libvirt VM per host of the topology, made by Vagrant from
the checkout's Vagrantfile, reached over SSH with fabric.

On this kind of machine (see lab/vmhost.py) libvirtd, Vagrant and the VMs'
networks live in the ``halabvm`` network namespace; SSH reaches the VMs'
management addresses through it (``ProxyCommand ip netns exec halabvm nc``),
so nothing of the lab touches the root namespace.

* ``up``: libvirtd, the box (built offline and registered when it changed), the
  VMs (``vagrant up --parallel``). The Vagrantfile's trigger provisions each VM
  as soon as it is up, the same way under a plain ``vagrant up``: it records
  how SSH reaches the VM (``.vagrant/halab/ssh/NAME.json``, from Vagrant's
  ``ssh_info``) and runs ``halab --lab vagrant provision --host NAME``
* ``prepare`` (before provisioning): halab itself in the VM, from a wheelhouse
  built from the checkout (once for all VMs), installed into /opt/halab/venv
  with ``--no-index`` (the VMs have no internet), its programs linked into
  /usr/local/bin; the VM's clock set to follow this machine's
* services are systemd units: halab's own from provision/units, others
  rendered from the service's argv (``halab-NAME.service``), sshd is the
  system's ssh.service with the lab's config; logs are the journal's
* faults: ``virsh domif-setlink`` cuts a NIC (by its MAC), ``virsh destroy`` is
  the power loss, ``virsh start`` the power coming back
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import provision
from lab import box, vmhost
from lab.backend import Backend, HostPaths, Result, ServiceSpec, ServiceState
from lab.errors import HalabError
from lab.system import run_local
from lab.topology import Topology

UNITS = Path(provision.__file__).parent / "units"
VENV = "/opt/halab/venv"
PROGRAMS = ("halab", "halab-balancer", "balancerctl", "halab-heartbeat", "hbctl")
SERVICES_DIR = "/etc/halab/services"  # one file per service provisioned: its unit
SSH_PERSIST = 600


def vagrant_dir() -> Path:
    """Where the Vagrantfile is: $HALAB_VAGRANT_DIR, else the nearest one above here."""
    if os.environ.get("HALAB_VAGRANT_DIR"):
        return Path(os.environ["HALAB_VAGRANT_DIR"]).resolve()
    for d in (Path.cwd(), *Path.cwd().parents):
        if (d / "Vagrantfile").exists():
            return d
    raise HalabError("no Vagrantfile here or above: run from the halab checkout "
                     "(or set HALAB_VAGRANT_DIR)")


def source_digest(root: Path) -> str:
    """What a wheel of the checkout at ``root`` is built from."""
    h = hashlib.sha256()
    files = [root / "pyproject.toml", *sorted(
        f for pkg in ("lab", "provision", "balancer", "heartbeat")
        for f in (root / pkg).rglob("*") if f.is_file() and "__pycache__" not in f.parts)]
    for f in files:
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def render_unit(spec: ServiceSpec) -> str:
    """A unit for a foreground daemon that ships none of halab's own."""
    return (f"# halab: {spec.name}, rendered by the vagrant backend\n"
            f"[Unit]\nDescription=halab {spec.name}\nAfter=network-online.target\n\n"
            f"[Service]\nExecStart={shlex.join(spec.argv)}\nRestart=on-failure\n"
            f"RestartSec=1\nRuntimeDirectory=halab\nRuntimeDirectoryPreserve=yes\n\n"
            f"[Install]\nWantedBy=multi-user.target\n")


def unit_for(spec: ServiceSpec) -> tuple[str, str | None]:
    """(unit name, unit text to install, or None for the system's own unit)."""
    if spec.unit and (UNITS / spec.unit).exists():
        return spec.unit, (UNITS / spec.unit).read_text()
    if spec.unit:
        return spec.unit, None
    return f"halab-{spec.name}.service", render_unit(spec)


class VagrantBackend(Backend):
    kind = "vagrant"
    user_keys = True  # Vagrant logs in as its own user
    up_provisions = True  # the Vagrantfile's trigger, each VM as it comes up

    def __init__(self, topology: Topology, root: Path | None = None) -> None:
        super().__init__(topology)
        self.root = root or vagrant_dir()
        self.control_dir = self.root / ".vagrant" / "halab"
        self.python = f"{VENV}/bin/python"
        self.driver = os.environ.get("HALAB_VM_DRIVER", "kvm")
        # software emulation is an order of magnitude slower: so are a command's limits
        self.slowness = 5.0 if self.driver == "qemu" else 1.0
        self._conns: dict[str, Any] = {}
        self._lock = threading.Lock()
        # hosts this backend powered off: a command there fails at once, as it would on
        # a host whose power is gone (not after SSH's timeouts on a dead connection)
        self._off: set[str] = set()

    # vagrant and virsh ---------------------------------------------------------

    def _vagrant_env(self) -> dict[str, str]:
        e = vmhost.vm_env()
        e.update(HALAB_VM_DRIVER=self.driver, HALAB_TOPOLOGY=str(self.topology.source),
                 HALAB_CLI=f"{sys.executable} -m lab.cli")  # what the trigger runs
        return e

    def vagrant_interactive(self, args: Sequence[str]) -> int:
        """``vagrant ARGS`` with this terminal, libvirtd started (``vagrant up`` alone
        yields a provisioned lab: the Vagrantfile's trigger)."""
        vmhost.start(self.driver)
        self._register_box()
        return subprocess.run(vmhost.command(["vagrant", *args]), cwd=self.root,
                              env=self._vagrant_env(), check=False).returncode

    def vagrant(self, *args: str, timeout: float = 1800) -> str:
        proc = subprocess.run(vmhost.command(["vagrant", *args]), cwd=self.root,
                              env=self._vagrant_env(), capture_output=True, timeout=timeout,
                              check=False)
        if proc.returncode != 0:
            tail = proc.stderr.decode(errors="replace").strip().splitlines()[-5:]
            raise HalabError(f"`vagrant {' '.join(args)}` failed (exit {proc.returncode}): "
                             + " | ".join(tail))
        return proc.stdout.decode(errors="replace")

    def domain(self, host: str) -> str:
        """The libvirt domain of ``host`` (its UUID, as Vagrant recorded it)."""
        self.host(host)
        path = self.root / ".vagrant" / "machines" / host / "libvirt" / "id"
        try:
            return path.read_text().strip()
        except OSError:
            raise HalabError(f"{host}: no VM (run `halab --lab vagrant up`)") from None

    def virsh(self, *args: str, check: bool = True) -> str:
        return vmhost.run(["virsh", *args], check=check).stdout.decode(errors="replace")

    def is_up(self) -> bool:
        if not vmhost.running():
            return False
        try:
            running = self.virsh("list", "--uuid").split()
            return all(self.domain(h) in running for h in self.topology.hosts)
        except HalabError:
            return False

    # up and down ------------------------------------------------------------

    def up(self) -> None:
        vmhost.start(self.driver)
        self._register_box()
        self._wheelhouse()  # once, before the VMs' provisioning runs want it
        self.vagrant("up", "--parallel")  # each VM provisioned by the trigger

    def prepare(self, hosts: Sequence[str]) -> None:
        wheels = self._wheelhouse()
        clock = self._time_server()
        errors = []
        with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
            futures = {h: pool.submit(self._prepare, h, wheels, clock) for h in hosts}
            for host, future in futures.items():
                try:
                    future.result()
                except Exception as e:  # HalabError, or fabric's and paramiko's own
                    errors.append(f"{host}: {type(e).__name__}: {e}")
        if errors:
            raise HalabError("; ".join(errors))

    def _register_box(self) -> None:
        self.control_dir.mkdir(parents=True, exist_ok=True)
        if os.environ.get("HALAB_BOX", box.BOX_NAME) != box.BOX_NAME:
            return  # a box of the user's: Vagrant fetches it
        built = box.build()
        stamp = self.control_dir / "box"
        listed = vmhost.run(["vagrant", "box", "list"]).stdout.decode()
        if stamp.exists() and stamp.read_text() == built.name and box.BOX_NAME in listed:
            return
        # a new box: VMs made from the old one go, and so does libvirt's copy of it
        if (self.root / ".vagrant" / "machines").exists():
            self.vagrant("destroy", "-f")
        for vol in self.virsh("vol-list", "default", check=False).split():
            if vol.startswith(box.BOX_NAME.replace("/", "-VAGRANTSLASH-")):
                self.virsh("vol-delete", "--pool", "default", vol, check=False)
        vmhost.run(["vagrant", "box", "add", "--force", "--name", box.BOX_NAME, str(built)],
                   timeout=600)
        stamp.write_text(built.name)

    def _wheelhouse(self) -> Path:
        """halab and what it needs from PyPI, as wheels (the VMs have no internet),
        rebuilt when the checkout's sources changed; one builder at a time."""
        wheels = self.control_dir / "wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        with open(self.control_dir / "wheels.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            digest = source_digest(self.root)
            stamp = wheels / "source.sha256"
            if stamp.exists() and stamp.read_text() == digest:
                return wheels
            for old in wheels.glob("halab-*.whl"):
                old.unlink()
            run_local([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(wheels),
                       str(self.root)], timeout=600)
            stamp.write_text(digest)
        return wheels

    def _prepare(self, host: str, wheels: Path, clock: str) -> None:
        self._sync_clock(host, clock)
        self._install(host, wheels)

    def _time_server(self) -> str:
        """This machine's address on the management network (chronyd serves it)."""
        xml = self.virsh("net-dumpxml", "vagrant-libvirt")
        m = re.search(r"<ip address=['\"]([0-9.]+)['\"]", xml)
        if m is None:
            raise HalabError("no address on Vagrant's management network")
        return m.group(1)

    def _sync_clock(self, host: str, server: str) -> None:
        """The VM's clock follows this machine's closely (chrony, polling 4x a second)."""
        conf = (f"# halab: this VM's clock follows the machine that runs the lab\n"
                f"server {server} iburst minpoll -2 maxpoll -2\nmakestep 0.001 -1\n"
                f"driftfile /var/lib/chrony/chrony.drift\n")
        self.put_file(host, "/etc/chrony/chrony.conf", conf)
        self.run(host, ["systemctl", "restart", "chrony"], timeout=60)
        self.run(host, ["chronyc", "waitsync", "120", "0.005", "0", "0.5"], timeout=90)

    def _install(self, host: str, wheels: Path) -> None:
        digest = hashlib.sha256(b"".join(w.read_bytes() for w in sorted(wheels.glob("*.whl"))))
        stamp = f"{VENV}/wheels.sha256"
        have = self.run(host, ["cat", stamp], check=False).text.strip()
        if have == digest.hexdigest():
            return  # this very build is installed
        tmp = "/tmp/halab-wheels"
        self.run(host, ["sh", "-c", f"rm -rf {tmp} && mkdir -m 1777 -p {tmp}"])
        conn = self.connection(host)
        for whl in sorted(wheels.glob("*.whl")):
            conn.put(str(whl), f"{tmp}/{whl.name}")
        links = " ".join(f"{VENV}/bin/{p}" for p in PROGRAMS)
        self.run(host, ["sh", "-c",
                        f"[ -x {VENV}/bin/python ] || python3 -m venv {VENV}; "
                        f"{VENV}/bin/pip install -q --no-index --find-links {tmp} "
                        f"--force-reinstall --no-deps {tmp}/halab-*.whl && "
                        f"{VENV}/bin/pip install -q --no-index --find-links {tmp} halab && "
                        f"ln -sf {links} /usr/local/bin/ && rm -rf {tmp}"], timeout=900)
        hp = self.paths(host)
        self.run(host, ["mkdir", "-p", str(hp.run), str(hp.log), str(hp.state)])
        self.put_file(host, stamp, digest.hexdigest() + "\n")

    def down(self) -> None:
        self._close_connections()
        if vmhost.running() and (self.root / ".vagrant" / "machines").exists():
            self.vagrant("destroy", "-f")
            for net in self.virsh("net-list", "--name", check=False).split():
                if net.startswith(f"{self.topology.lab}-") or net == "vagrant-libvirt":
                    self.virsh("net-destroy", net, check=False)
                    self.virsh("net-undefine", net, check=False)
        vmhost.stop()
        (self.control_dir / "ssh_config").unlink(missing_ok=True)
        for f in (self.control_dir / "ssh").glob("*.json"):
            f.unlink()

    # ssh ------------------------------------------------------------------------

    def _ssh_targets(self) -> dict[str, dict[str, Any]]:
        """How SSH reaches each VM that is up, as the Vagrantfile's trigger recorded it
        from Vagrant's ``ssh_info``: host, port, user, keys."""
        found = {}
        for h in self.topology.hosts:
            f = self.control_dir / "ssh" / f"{h}.json"
            if f.exists():
                found[h] = json.loads(f.read_text())
        return found

    def _ssh_blocks(self, user: str | None, keys: Sequence[str], options: str,
                    control: str, known_hosts: Path | None = None) -> str:
        """One Host block per VM that is up, through the namespace. ``known_hosts``:
        check the host key against the lab's (by the host's name), else not at all."""
        proxy = " ".join(vmhost.command(["nc", "%h", "%p"]))
        blocks = []
        for h, t in self._ssh_targets().items():
            check = (f"  StrictHostKeyChecking yes\n  UserKnownHostsFile {known_hosts}\n"
                     f"  HostKeyAlias {h}\n" if known_hosts else
                     "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n")
            blocks.append(
                f"Host {h}\n  HostName {t['host']}\n  Port {t['port']}\n"
                f"  User {user or t['user']}\n"
                + "".join(f"  IdentityFile {k}\n" for k in (keys or t["keys"]))
                + f"  IdentitiesOnly yes\n  PasswordAuthentication no\n{check}{options}"
                f"  ProxyCommand {proxy}\n  ControlMaster auto\n"
                f"  ControlPath {self.control_dir}/{control}-%h\n")
        return "\n".join(blocks)

    def ssh_config_path(self) -> Path:
        """An ssh_config for Vagrant's user (its key) on every VM that is up; rewritten
        at each call, as VMs come up (the host keys are not the lab's until provisioned)."""
        text = self._ssh_blocks(None, (), "  LogLevel FATAL\n  ServerAliveInterval 10\n"
                                f"  ControlPersist {SSH_PERSIST}\n", "cm")
        path = self.control_dir / "ssh_config"
        tmp = path.with_name(f".ssh_config.{os.getpid()}.{threading.get_ident()}")
        tmp.write_text(text)
        os.replace(tmp, path)
        return path

    def ssh_config(self) -> str:
        """Every host as root with the lab operator key (after provisioning), its host
        key checked against the lab's."""
        return self._ssh_blocks("root", [str(self.control_dir / "operator_ed25519")],
                                "  LogLevel ERROR\n  ControlPersist 120\n", "root",
                                self.control_dir / "known_hosts")

    def connection(self, host: str) -> Any:
        """A fabric Connection to ``host`` (the vagrant user), kept open."""
        import fabric

        self.host(host)
        with self._lock:
            conn = self._conns.get(host)
            if conn is None:
                if not (self.control_dir / "ssh" / f"{host}.json").exists():
                    raise HalabError(f"{host}: no VM up (run `halab --lab vagrant up`)")
                cfg = fabric.Config(runtime_ssh_path=str(self.ssh_config_path()))
                # an SSH handshake under TCG, five at once, can take many seconds
                wait = 30 * self.slowness
                conn = fabric.Connection(host, config=cfg, connect_timeout=wait,
                                         connect_kwargs={"banner_timeout": wait,
                                                         "auth_timeout": wait})
                self._conns[host] = conn
            return conn

    def _close(self, host: str) -> None:
        with self._lock:
            conn = self._conns.pop(host, None)
        if conn is not None:
            conn.close()

    def _close_connections(self) -> None:
        with self._lock:
            for conn in self._conns.values():
                conn.close()
            self._conns.clear()
        cfg = self.control_dir / "ssh_config"
        if cfg.exists():  # the ssh connection masters (command())
            for h in self.topology.hosts:
                subprocess.run(["ssh", "-F", str(cfg), "-O", "exit", h], capture_output=True,
                               check=False)

    # commands and files ---------------------------------------------------------

    def command(self, host: str, argv: Sequence[str]) -> list[str]:
        """ssh with a tty (the remote command ends with the session), riding on a
        connection master started beforehand: a master forked by this very command
        would hold its stdout open after the command ended."""
        self.host(host)
        cfg = str(self.ssh_config_path())
        if subprocess.run(["ssh", "-F", cfg, "-O", "check", host], capture_output=True,
                          check=False).returncode != 0:
            subprocess.run(["ssh", "-F", cfg, "-f", "-N", "-o", "ControlMaster=yes", host],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=60 * self.slowness, check=False)
        return ["ssh", "-F", cfg, "-tt", "-o", "ControlMaster=no", "-o", "LogLevel=ERROR", host,
                "sudo -n -- " + shlex.join(argv)]

    def run(
        self,
        host: str,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        check: bool = True,
        timeout: float = 30.0,
    ) -> Result:
        if input is not None:
            raise HalabError("the vagrant backend passes no input to commands")
        if host in self._off:
            raise HalabError(f"{host}: `{' '.join(argv)}`: the host is powered off")
        conn = self.connection(host)
        try:
            res = conn.run("sudo -n -- " + shlex.join(argv), hide=True, warn=True,
                           in_stream=False, timeout=timeout * self.slowness)
        except Exception as e:  # invoke's CommandTimedOut, paramiko's SSH errors
            raise HalabError(f"{host}: `{' '.join(argv)}`: {type(e).__name__}: {e}") from None
        out = Result(list(argv), res.exited, res.stdout.encode(), res.stderr.encode())
        if check and not out.ok:
            err = res.stderr.strip().replace("\n", " | ")
            raise HalabError(f"{host}: `{' '.join(argv)}` failed (exit {out.returncode}): {err}")
        return out

    def put_file(self, host: str, path: str, content: bytes | str, mode: int = 0o644) -> None:
        self.put_files(host, [(path, content, mode)])

    def put_files(self, host: str, files: Sequence[tuple[str, bytes | str, int]]) -> None:
        """One tar archive (owner root, each file's mode), unpacked at / in one command
        (every command is an SSH round trip: half a second under TCG), then synced: a
        power loss soon after must not leave them empty (ext4's delayed allocation)."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for path, content, mode in files:
                data = content.encode() if isinstance(content, str) else content
                info = tarfile.TarInfo(path.lstrip("/"))
                info.size, info.mode, info.mtime = len(data), mode, int(time.time())
                tar.addfile(info, io.BytesIO(data))
        buf.seek(0)
        tmp = f"/tmp/.halab-{os.getpid()}-{threading.get_ident()}.tar"
        self.connection(host).put(buf, tmp)
        self.run(host, ["sh", "-c", f"tar -x --no-overwrite-dir -C / -f {tmp}; r=$?; "
                                    f"rm -f {tmp}; sync; exit $r"])

    def read_file(self, host: str, path: str) -> bytes:
        res = self.run(host, ["cat", path], check=False)
        if not res.ok:
            raise HalabError(f"{host}: no file {path}")
        return res.stdout

    def paths(self, host: str) -> HostPaths:
        self.host(host)
        return HostPaths(run=Path("/run/halab"), log=Path("/var/log/halab"),
                         state=Path("/var/lib/halab"))

    # services (systemd) -------------------------------------------------------

    def _unit(self, host: str, name: str) -> str:
        try:
            return self.read_file(host, f"{SERVICES_DIR}/{name}").decode().strip()
        except HalabError:
            raise HalabError(f"{host}: no service {name!r}") from None

    def start_service(self, host: str, spec: ServiceSpec) -> ServiceState:
        unit, text = unit_for(spec)
        # (re)start: the config was just written; a notify unit returns once ready
        self._install_unit(host, unit, text, f"systemctl restart {unit}",
                           [(f"{SERVICES_DIR}/{spec.name}", unit + "\n", 0o644)])
        self._wait_ready(host, spec)
        return self._state(host, spec.name, unit)

    def enable_at_boot(self, host: str, unit: str) -> None:
        self._install_unit(host, unit, (UNITS / unit).read_text())

    def _install_unit(self, host: str, unit: str, text: str | None, then: str = "",
                      files: Sequence[tuple[str, bytes | str, int]] = ()) -> None:
        """Install ``unit`` (None: the system's own), enable it, run ``then``: in one
        command, and without what costs seconds under TCG when nothing changed
        (systemd's daemon-reload, `systemctl enable`)."""
        path = f"/etc/systemd/system/{unit}"
        staged = f"{SERVICES_DIR}/.{unit}.new"
        script = ""
        if text is not None:
            files = [*files, (staged, text, 0o644)]
            script = (f"if cmp -s {staged} {path}; then rm {staged}; "
                      f"else mv {staged} {path} && systemctl daemon-reload; fi && ")
        script += (f"{{ systemctl is-enabled -q {unit} || "
                   f"systemctl enable -q --no-reload {unit}; }}")
        if then:
            script += f" && {then}"
        if files:
            self.put_files(host, files)
        self.run(host, ["sh", "-c", script], timeout=120)

    def _wait_ready(self, host: str, spec: ServiceSpec) -> None:
        deadline = time.monotonic() + 60
        while True:
            ports = self.run(host, ["ss", "-Hltn"]).text
            listening = all(f":{p} " in ports for p in spec.listens)
            ready = spec.ready_path is None or self.run(
                host, ["test", "-e", spec.ready_path], check=False).ok
            if listening and ready:
                return
            if time.monotonic() > deadline:
                raise HalabError(f"{host}: {spec.name} not ready within 60 s")
            time.sleep(0.2)

    def _state(self, host: str, name: str, unit: str) -> ServiceState:
        out = self.run(host, ["systemctl", "show", "-p", "ActiveState,MainPID", unit]).text
        props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        pid = int(props.get("MainPID", "0") or 0)
        active = props.get("ActiveState") == "active"
        return ServiceState(host, name, active, pid or None, f"{unit} {props.get('ActiveState')}")

    def stop_service(self, host: str, name: str) -> None:
        self.run(host, ["systemctl", "stop", self._unit(host, name)], timeout=60)

    def restart_service(self, host: str, name: str) -> ServiceState:
        unit = self._unit(host, name)
        self.run(host, ["systemctl", "restart", unit], timeout=120)
        return self._state(host, name, unit)

    def services(self, host: str) -> list[ServiceState]:
        names = self.run(host, ["ls", SERVICES_DIR], check=False).text.split()
        return [self._state(host, n, self._unit(host, n)) for n in names]

    def service_log(self, host: str, name: str) -> Path:
        raise HalabError(f"{host}: {name} logs to the journal: "
                         f"halab exec {host} -- journalctl -u {self._unit(host, name)}")

    def log_text(self, host: str, name: str) -> str:
        return self.run(host, ["journalctl", "-q", "-o", "cat", "--no-pager", "-u",
                               self._unit(host, name)], timeout=60).text

    # faults ---------------------------------------------------------------------

    def set_links(self, host: str, up: bool, networks: Sequence[str] | None = None) -> None:
        h = self.host(host)
        dom = self.domain(host)
        for iface in h.interfaces:
            if networks is None or iface.network.name in networks:
                self.virsh("domif-setlink", dom, iface.mac,
                           "up" if up else "down")

    def power_off(self, host: str) -> None:
        """A hard power-off of the domain: no process gets to say goodbye."""
        self.virsh("destroy", self.domain(host))
        self._off.add(host)
        self._close(host)  # a command still waiting on the dead connection fails now

    def power_on(self, host: str) -> None:
        """Boot again; return once systemd says the boot is done (the units that were
        enabled, halab's among them, are up)."""
        self.virsh("start", self.domain(host))
        self._off.discard(host)
        deadline = time.monotonic() + 900
        while True:
            try:
                state = self.run(host, ["systemctl", "is-system-running", "--wait"],
                                 check=False, timeout=600).text.strip()
            except HalabError:  # sshd is not up yet
                state = "booting"
                self._close(host)
            if state in ("running", "degraded"):
                return
            if time.monotonic() > deadline:
                raise HalabError(f"{host} did not boot within 900 s (last: {state})")
            time.sleep(1)
