"""The ssh backend: existing hosts (real servers, or VMs someone else made), reached
over SSH with fabric; and the base of the vagrant backend, whose VMs are reached the
same way.

``--lab ssh --inventory FILE`` (lab/backends/ssh/inventory.py says how SSH reaches each host of
the topology): ``halab up`` checks that every host answers and provisions them with
the same provision/ code as every other backend.

* logins: the inventory's user, root through ``sudo -n``; each host's SSH host key
  is checked against the inventory's ``known_hosts`` file, else trusted on first use
  and remembered (``STATE/known_hosts.login``, for OpenSSH and paramiko alike). The
  hosts keep their own host keys: the lab reads them instead of making new ones
* ``prepare`` (before provisioning): halab itself on the host, from a wheelhouse
  built from the checkout (once for all hosts), unpacked by PyPA's installer (no pip)
  into a new venv swapped in at /opt/halab/venv, its programs linked into
  /usr/local/bin; a host of another Python gets pip's install, from its own index for
  what the wheelhouse has not for it
* services are systemd units: halab's own as the service spec carries them, others rendered
  from the service's argv (``halab-NAME.service``, the distribution's unit of the
  same program disabled), sshd is the system's ssh.service with the lab's config;
  logs are the journal's
* faults from inside the host, as there is no hypervisor to ask: ``ip link set
  down`` cuts a lab interface (the management link, which SSH rides, is no lab
  interface); a power loss is a stand-in, said so: the lab links cut, then the
  lab's services SIGKILLed (no goodbye leaves the host); power on removes every
  address not configured (a VIP left over), plugs the links and starts them again.
  The kernel, sshd and what else runs on the host are untouched
* ``down`` stops the lab's services and keeps them from starting at boot; the host,
  its packages, files and firewall stay
"""

from __future__ import annotations

import fcntl
import io
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lab.backend import Backend, HostPaths, Result, ServiceSpec, ServiceState
from lab.backends.ssh import inventory as inv_mod
from lab.backends.ssh.deploy import (
    INSTALLER_ZIP,
    VENV,
    WHEELS_TMP,
    build_digest,
    checkout_root,
    install_script,
    installer_files,
    source_digest,
    wheel_tar,
    wheels_target,
    zip_installer,
)
from lab.backends.ssh.inventory import Inventory, Target
from lab.backends.ssh.systemd import (
    POWERED_OFF,
    SERVICES_DIR,
    distro_unit,
    restart_unless_started,
    unit_for,
)
from lab.backends.ssh.transport import HOST_KEY_PUB, SSH_PERSIST, _TrustOnFirstUse, ssh_block
from lab.errors import HalabError
from lab.system import run_local
from lab.topology import Topology


class SshBackend(Backend):
    kind = "ssh"
    user_keys = True  # the hosts' users keep their own keys (the inventory's login)
    keeps_host_keys = True

    def __init__(self, topology: Topology, inventory: Inventory | None = None) -> None:
        super().__init__(topology)
        self.python = f"{VENV}/bin/python"
        self._conns: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.inventory = inventory
        if inventory is not None:  # (the vagrant backend finds its VMs by itself)
            self.control_dir = inventory.state_dir
            self.slowness = inventory.slowness

    @classmethod
    def from_inventory(cls, topology: Topology, path: str | Path | None) -> SshBackend:
        return cls(topology, inv_mod.load(path, topology))

    # where the hosts are ----------------------------------------------------------

    def targets(self) -> dict[str, Target]:
        """How SSH reaches each host (that is up)."""
        assert self.inventory is not None
        return self.inventory.hosts

    def _target(self, host: str) -> Target:
        self.host(host)
        t = self.targets().get(host)
        if t is None:
            raise HalabError(f"{host}: not up (run `halab --lab {self.kind} up`)")
        return t

    def is_up(self) -> bool:
        return not self._unreachable()

    def _unreachable(self) -> list[str]:
        def answers(h: str) -> str | None:
            try:
                self.run(h, ["true"], timeout=30)
                return None
            except HalabError as e:
                return str(e)

        with ThreadPoolExecutor(max_workers=len(self.topology.hosts)) as pool:
            return [e for e in pool.map(answers, self.topology.hosts) if e]

    def up(self) -> None:
        """The hosts exist already: check that every one answers."""
        self.control_dir.mkdir(parents=True, exist_ok=True)
        errors = self._unreachable()
        if errors:
            raise HalabError(f"{self.inventory.path if self.inventory else ''}: "
                             + "; ".join(errors))

    def down(self) -> None:
        """Stop the lab's services (sshd aside) and keep them from starting at boot."""
        for h in self.targets():
            units = [u for u in self._units(h) if u != "ssh.service"]
            if units:
                self.run(h, ["systemctl", "disable", "-q", "--now", *units], timeout=120)
        self.close()

    # ssh --------------------------------------------------------------------------

    def _login_host_keys(self, host: str, t: Target) -> list[str]:
        """How a login checks the host's key: against the inventory's known_hosts, else
        trusted on first use and remembered."""
        if t.known_hosts:
            return ["StrictHostKeyChecking yes", f"UserKnownHostsFile {t.known_hosts}"]
        return ["StrictHostKeyChecking accept-new",
                f"UserKnownHostsFile {self._tofu_file()}"]

    def _tofu_file(self) -> Path:
        path = self.control_dir / "known_hosts.login"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        return path

    def _trust(self, client: Any, host: str, t: Target) -> None:
        """paramiko's side of ``_login_host_keys``."""
        import paramiko

        known = Path(t.known_hosts) if t.known_hosts else self._tofu_file()
        try:
            client.get_host_keys().load(str(known))
        except OSError as e:
            raise HalabError(f"{host}: known_hosts {known}: {e.strerror}") from None
        client.set_missing_host_key_policy(paramiko.RejectPolicy() if t.known_hosts
                                           else _TrustOnFirstUse(known))

    def ssh_config_path(self) -> Path:
        """An ssh_config for the inventory's login on every host (that is up); rewritten
        at each call (VMs come up one by one)."""
        text = "\n".join(
            ssh_block(h, t, [f"User {t.user}", *self._login_host_keys(h, t),
                             "PasswordAuthentication no", "LogLevel FATAL",
                             "ServerAliveInterval 10", f"ControlPersist {SSH_PERSIST}",
                             "ControlMaster auto", f"ControlPath {self.control_dir}/cm-%h"])
            for h, t in self.targets().items())
        path = self.control_dir / "ssh_config"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".ssh_config.{os.getpid()}.{threading.get_ident()}")
        tmp.write_text(text)
        os.replace(tmp, path)
        return path

    def ssh_config(self) -> str:
        """Every host as root with the lab operator key (after provisioning), its host
        key checked against the lab's."""
        return "\n".join(
            ssh_block(h, t, ["User root", f"IdentityFile {self.control_dir}/operator_ed25519",
                             "IdentitiesOnly yes", "PasswordAuthentication no",
                             "StrictHostKeyChecking yes",
                             f"UserKnownHostsFile {self.control_dir}/known_hosts",
                             f"HostKeyAlias {h}", "LogLevel ERROR", "ControlPersist 120",
                             "ControlMaster auto", f"ControlPath {self.control_dir}/root-%h"],
                      login=False)
            for h, t in self.targets().items())

    def connection(self, host: str) -> Any:
        """A fabric Connection to ``host`` (the login user), kept open."""
        import fabric

        with self._lock:
            conn = self._conns.get(host)
            if conn is None:
                t = self._target(host)  # (once per connection: the vagrant backend reads
                # its VMs' records from disk)
                cfg = fabric.Config(runtime_ssh_path=str(self.ssh_config_path()))
                # an SSH handshake under TCG, five at once, can take many seconds
                wait = 30 * self.slowness
                conn = fabric.Connection(host, config=cfg, connect_timeout=wait,
                                         connect_kwargs={"banner_timeout": wait,
                                                         "auth_timeout": wait})
                self._trust(conn.client, host, t)
                self._conns[host] = conn
            return conn

    def _close(self, host: str) -> None:
        with self._lock:
            conn = self._conns.pop(host, None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        with self._lock:
            for conn in self._conns.values():
                conn.close()
            self._conns.clear()
        cfg = self.control_dir / "ssh_config"
        if cfg.exists():  # the ssh connection masters (command())
            for h in self.topology.hosts:
                subprocess.run(["ssh", "-F", str(cfg), "-O", "exit", h], capture_output=True,
                               check=False)

    # commands and files -------------------------------------------------------------

    @staticmethod
    def _sudo(user: str, argv: Sequence[str]) -> str:
        line = shlex.join(argv)
        return line if user == "root" else "sudo -n -- " + line

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
                self._sudo(self._target(host).user, argv)]

    def _check_on(self, host: str, argv: Sequence[str]) -> None:
        """Before a command: raise if it cannot run there (the vagrant backend: a VM
        whose power is off)."""

    def execute(self, host: str, argv: Sequence[str], *, input: bytes | None,
                timeout: float) -> Result:
        if input is not None:
            raise HalabError(f"the {self.kind} backend passes no input to commands")
        self._check_on(host, argv)
        conn = self.connection(host)
        try:
            res = conn.run(self._sudo(conn.user, argv), hide=True, warn=True, in_stream=False,
                           timeout=timeout * self.slowness)
        except Exception as e:  # invoke's CommandTimedOut, paramiko's SSH errors
            raise HalabError(f"{host}: `{' '.join(argv)}`: {type(e).__name__}: {e}") from None
        return Result(list(argv), res.exited, res.stdout.encode(), res.stderr.encode())

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

    def own_host_key(self, host: str) -> str | None:
        if not self.keeps_host_keys:
            return None
        # (a host without an ed25519 key gets one, as Debian's openssh-server would make)
        return self.run(host, ["sh", "-c", f"[ -s {HOST_KEY_PUB} ] || ssh-keygen -A; "
                                           f"cat {HOST_KEY_PUB}"]).text

    # halab on the hosts ---------------------------------------------------------------

    def prepare(self, hosts: Sequence[str]) -> None:
        wheels = self._wheelhouse()
        errors = []
        with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
            futures = {h: pool.submit(self._prepare, h, wheels) for h in hosts}
            for host, future in futures.items():
                try:
                    future.result()
                except Exception as e:  # HalabError, or fabric's and paramiko's own
                    errors.append(f"{host}: {type(e).__name__}: {e}")
        if errors:
            raise HalabError("; ".join(errors))

    def _prepare(self, host: str, wheels: Path) -> None:
        self._check_addresses(host)
        self._install(host, wheels)

    def _check_addresses(self, host: str) -> None:
        """The lab addresses are the host's own configuration (halab does not touch a
        real server's network setup): each on the interface the topology names. A host
        that just booted may still be configuring them: wait a while."""
        def missing() -> list[str]:
            out = self.run(host, ["ip", "-o", "-4", "addr", "show"]).text.split("\n")
            have = {(f[1], f[3]) for f in (line.split() for line in out) if len(f) > 3}
            return [f"{i.name} {i.cidr}" for i in self.host(host).interfaces
                    if (i.name, i.cidr) not in have]

        deadline = time.monotonic() + 10 * self.slowness
        while gone := missing():
            if time.monotonic() > deadline:
                raise HalabError(f"{host}: lab addresses missing: {', '.join(gone)} (the "
                                 f"topology {self.topology.source} says so; configure them)")
            time.sleep(0.5)

    def _source(self) -> Path:
        return checkout_root()

    def _wheelhouse(self) -> Path:
        """halab and what it needs from PyPI, as wheels (a host may have no internet),
        and PyPA's installer to install them; built anew when the checkout's sources
        changed (nothing of an older build stays: each wheel of it is installed); one
        builder at a time."""
        wheels = self.control_dir / "wheels"
        self.control_dir.mkdir(parents=True, exist_ok=True)
        with open(self.control_dir / "wheels.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            digest = source_digest(self._source())
            stamp = wheels / "source.sha256"
            if (stamp.exists() and stamp.read_text() == digest
                    and (wheels / INSTALLER_ZIP).exists() == bool(installer_files())):
                return wheels
            new, old = wheels.with_name("wheels.new"), wheels.with_name("wheels.old")
            for d in (new, old):
                shutil.rmtree(d, ignore_errors=True)
            run_local([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(new),
                       str(self._source())], timeout=600)
            zip_installer(new / INSTALLER_ZIP)
            (new / "source.sha256").write_text(digest)
            if wheels.exists():
                wheels.rename(old)
            new.rename(wheels)
            shutil.rmtree(old, ignore_errors=True)
        return wheels

    def _install(self, host: str, wheels: Path) -> None:
        """halab into the host's venv, unless this very build is there: the wheels in
        one archive, then one command (install_script); an SSH round trip costs a
        second under software emulation."""
        digest = build_digest(wheels)
        have = self.run(host, ["cat", f"{VENV}/wheels.sha256"], check=False).text.strip()
        if have == digest:
            return  # this very build is installed
        tar = f"/tmp/.halab-wheels-{os.getpid()}-{threading.get_ident()}.tar"
        self.connection(host).put(io.BytesIO(wheel_tar(wheels)), tar)
        hp = self.paths(host)
        target = (wheels_target([w.name for w in wheels.glob("*.whl")])
                  if (wheels / INSTALLER_ZIP).exists() else None)  # (else pip)
        self.run(host, ["sh", "-c", install_script(
            VENV, WHEELS_TMP, digest, target, tar=tar,
            dirs=[str(hp.run), str(hp.log), str(hp.state)])], timeout=900)

    # services (systemd) ---------------------------------------------------------------

    def _unit(self, host: str, name: str) -> str:
        try:
            return self.read_file(host, f"{SERVICES_DIR}/{name}").decode().strip()
        except HalabError:
            raise HalabError(f"{host}: no service {name!r}") from None

    def _units(self, host: str) -> list[str]:
        """The units of every service provisioned on ``host``."""
        out = self.run(host, ["sh", "-c", f"cat {SERVICES_DIR}/* 2>/dev/null; true"]).text
        return out.split()

    def start_service(self, host: str, spec: ServiceSpec) -> ServiceState:
        """Restart the unit where it is not active or was started from other inputs
        (its files, its unit, for halab's daemons the halab build installed), which
        are noted on the host; else leave it running. A notify unit returns once ready."""
        unit, text = unit_for(spec)
        self._install_unit(host, unit, text, restart_unless_started(spec, unit, text),
                           [(f"{SERVICES_DIR}/{spec.name}", unit + "\n", 0o644)],
                           replaces=distro_unit(spec) if spec.unit is None else None)
        self._wait_ready(host, spec)
        return self._state(host, spec.name, unit)

    def enable_at_boot(self, host: str, unit: str, text: str) -> None:
        self._install_unit(host, unit, text)

    def _install_unit(self, host: str, unit: str, text: str | None, then: str = "",
                      files: Sequence[tuple[str, bytes | str, int]] = (),
                      replaces: str | None = None) -> None:
        """Install ``unit`` (None: the system's own), enable it, run ``then``: in one
        command, and without what costs seconds under TCG when nothing changed
        (systemd's daemon-reload, `systemctl enable`). ``replaces``: the distribution's
        unit that this one stands in for, stopped and disabled when it is installed."""
        path = f"/etc/systemd/system/{unit}"
        staged = f"{SERVICES_DIR}/.{unit}.new"
        script = ""
        if text is not None:
            files = [*files, (staged, text, 0o644)]
            off = (f"systemctl disable -q --now {replaces} 2>/dev/null; " if replaces else "")
            script = (f"if cmp -s {staged} {path}; then rm {staged}; "
                      f"else {off}mv {staged} {path} && systemctl daemon-reload; fi && ")
        script += (f"{{ systemctl is-enabled -q {unit} || "
                   f"systemctl enable -q --no-reload {unit}; }}")
        if then:
            script += f" && {{ {then}; }}"
        if files:
            self.put_files(host, files)
        self.run(host, ["sh", "-c", script], timeout=120)

    def _wait_ready(self, host: str, spec: ServiceSpec) -> None:
        deadline = time.monotonic() + 60 * self.slowness
        while True:
            ports = self.run(host, ["ss", "-Hltn"]).text
            listening = all(f":{p} " in ports for p in spec.listens)
            ready = spec.ready_path is None or self.run(
                host, ["test", "-e", spec.ready_path], check=False).ok
            if listening and ready:
                return
            if time.monotonic() > deadline:
                raise HalabError(f"{host}: {spec.name} not ready within "
                                 f"{60 * self.slowness:g} s")
            time.sleep(0.2)

    def _state(self, host: str, name: str, unit: str) -> ServiceState:
        out = self.run(host, ["systemctl", "show", "-p", "ActiveState,MainPID", unit]).text
        props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        pid = int(props.get("MainPID", "0") or 0)
        active = props.get("ActiveState") == "active"
        return ServiceState(host, name, active, pid or None, f"{unit} {props.get('ActiveState')}")

    def stop_service(self, host: str, name: str) -> float:
        return self.run_timed(host, ["systemctl", "stop", self._unit(host, name)], timeout=60)

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

    # faults, from inside the host ------------------------------------------------------

    def set_links(self, host: str, up: bool, networks: Sequence[str] | None = None
                  ) -> float | None:
        """``ip link set down``: the host's lab interface goes dark (its addresses stay,
        as on a pulled cable; the management link is none of the lab's). Returns the
        host's time of the cut (an SSH round trip can take a second under TCG, the
        start of `ip` there half of one: neither is counted)."""
        h = self.host(host)
        lines = [f"link set dev {i.name} {'up' if up else 'down'}" for i in h.interfaces
                 if networks is None or i.network.name in networks]
        return self.run_timed(host, ["ip", "-batch", "-"], input="\n".join(lines) + "\n")

    def power_off(self, host: str) -> float | None:
        """A stand-in for a power loss where no power switch is in reach: the lab links
        cut first (nothing the host does from now on reaches the lab), then the lab's
        services SIGKILLed and kept from restarting; which ones ran is noted on the host."""
        took = self.set_links(host, False)
        units = [u for u in self._units(host) if u != "ssh.service"]
        q = " ".join(units)
        self.run(host, ["sh", "-c",
                        f"for u in {q}; do systemctl is-active -q $u && echo $u; done "
                        f"> {POWERED_OFF}; systemctl kill -s KILL {q}; systemctl stop {q}"],
                 timeout=60)
        return took

    def power_on(self, host: str) -> None:
        """As a boot would: only the configured addresses, links up, the lab's services
        that ran started again."""
        h = self.host(host)
        script = []
        for i in h.interfaces:
            script.append(f"ip -o -4 addr show dev {i.name} | awk '{{print $4}}' | "
                          f"grep -vx {i.cidr} | "
                          f"xargs -r -n1 ip addr del dev {i.name}")
        self.run(host, ["sh", "-c", "; ".join(script)])
        self.set_links(host, True)
        self.run(host, ["sh", "-c", f"[ -s {POWERED_OFF} ] && systemctl start "
                                    f"$(cat {POWERED_OFF}); rm -f {POWERED_OFF}"], timeout=120)
