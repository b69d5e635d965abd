"""The vagrant backend: one libvirt VM per host of the topology, made by Vagrant from
the checkout's Vagrantfile, reached over SSH with fabric.

On this kind of machine (see lab/vmhost.py) libvirtd, Vagrant and the VMs'
networks live in the ``halabvm`` network namespace; SSH reaches the VMs'
management addresses through it (``ProxyCommand ip netns exec halabvm nc``),
so nothing of the lab touches the root namespace.

* ``up``: libvirtd, the box (built offline and registered when it changed), the
  VMs (``vagrant up --parallel``), then halab itself in every VM: a wheelhouse
  built from the checkout, installed into /opt/halab/venv with ``--no-index``
  (the VMs have no internet), its programs linked into /usr/local/bin
* services are systemd units: halab's own from provision/units, others
  rendered from the service's argv (``halab-NAME.service``), sshd is the
  system's ssh.service with the lab's config; logs are the journal's
* faults: ``virsh domif-setlink`` cuts a NIC (by its MAC), ``virsh destroy`` is
  the power loss, ``virsh start`` the power coming back
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shlex
import subprocess
import sys
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

    def vagrant(self, *args: str, timeout: float = 1800) -> str:
        e = vmhost.vm_env()
        e.update(HALAB_VM_DRIVER=self.driver)
        e["HALAB_TOPOLOGY"] = str(self.topology.source)
        proc = subprocess.run(vmhost.command(["vagrant", *args]), cwd=self.root, env=e,
                              capture_output=True, timeout=timeout, check=False)
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
        self.control_dir.mkdir(parents=True, exist_ok=True)
        self._register_box()
        wheels = self._wheelhouse()
        self.vagrant("up", "--parallel")
        self._write_ssh_config()
        self._close_connections()
        clock = self._time_server()
        errors = []
        with ThreadPoolExecutor(max_workers=len(self.topology.hosts)) as pool:
            futures = {h: pool.submit(self._prepare, h, wheels, clock)
                       for h in self.topology.hosts}
            for host, future in futures.items():
                try:
                    future.result()
                except Exception as e:  # HalabError, or fabric's and paramiko's own
                    errors.append(f"{host}: {type(e).__name__}: {e}")
        if errors:
            raise HalabError("; ".join(errors))

    def _register_box(self) -> None:
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
        """halab and what it needs from PyPI, as wheels (the VMs have no internet)."""
        wheels = self.control_dir / "wheels"
        for old in wheels.glob("halab-*.whl"):
            old.unlink()
        run_local([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(wheels),
                   str(self.root)], timeout=600)
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

    # ssh ------------------------------------------------------------------------

    def _write_ssh_config(self) -> None:
        """Vagrant's ssh-config (the vagrant user, its key), through the namespace."""
        raw = self.vagrant("ssh-config")
        proxy = " ".join(vmhost.command(["nc", "%h", "%p"]))
        out = []
        for line in raw.splitlines():
            out.append(line)
            if line.startswith("Host "):
                out += [f"  ProxyCommand {proxy}", "  ControlMaster auto",
                        f"  ControlPath {self.control_dir}/cm-%h",
                        f"  ControlPersist {SSH_PERSIST}", "  ServerAliveInterval 10"]
        (self.control_dir / "ssh_config").write_text("\n".join(out) + "\n")

    def ssh_config_path(self) -> Path:
        path = self.control_dir / "ssh_config"
        if not path.exists():
            self._write_ssh_config()
        return path

    def ssh_config(self) -> str:
        """Every host as root with the lab operator key (after provisioning), reached
        on its management address through the namespace."""
        key = self.control_dir / "operator_ed25519"
        blocks = []
        for block in self.ssh_config_path().read_text().split("Host ")[1:]:
            name, _, rest = block.partition("\n")
            lines = [ln for ln in rest.splitlines()
                     if ln.strip().split(" ")[0] in ("HostName", "Port", "ProxyCommand")]
            blocks.append(f"Host {name.strip()}\n" + "\n".join(lines) + "\n"
                          f"  User root\n  IdentityFile {key}\n  IdentitiesOnly yes\n"
                          f"  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
                          f"  LogLevel ERROR\n  ControlMaster auto\n"
                          f"  ControlPath {self.control_dir}/root-%h\n  ControlPersist 120\n")
        return "\n".join(blocks)

    def connection(self, host: str) -> Any:
        """A fabric Connection to ``host`` (the vagrant user), kept open."""
        import fabric

        self.host(host)
        with self._lock:
            conn = self._conns.get(host)
            if conn is None:
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
        data = content.encode() if isinstance(content, str) else content
        conn = self.connection(host)
        tmp = f"/tmp/.halab-{threading.get_ident()}-{os.path.basename(path)}"
        conn.put(io.BytesIO(data), tmp)
        self.run(host, ["install", "-D", "-m", f"{mode:o}", tmp, path])
        self.run(host, ["rm", "-f", tmp])

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
        if text is not None:
            self.put_file(host, f"/etc/systemd/system/{unit}", text)
            self.run(host, ["systemctl", "daemon-reload"])
        self.put_file(host, f"{SERVICES_DIR}/{spec.name}", unit + "\n")
        self.run(host, ["systemctl", "enable", "--quiet", "--no-reload", unit])
        # (re)start: the config was just written; a notify unit returns once ready
        self.run(host, ["systemctl", "restart", unit], timeout=120)
        self._wait_ready(host, spec)
        return self._state(host, spec.name, unit)

    def enable_at_boot(self, host: str, unit: str) -> None:
        self.put_file(host, f"/etc/systemd/system/{unit}", (UNITS / unit).read_text())
        self.run(host, ["systemctl", "daemon-reload"])
        self.run(host, ["systemctl", "enable", "--quiet", "--no-reload", unit])

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
