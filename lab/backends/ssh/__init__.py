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
import shutil
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lab.backend import Backend, HostPaths
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
from lab.backends.ssh.inventory import Inventory
from lab.backends.ssh.systemd import POWERED_OFF, SystemdServices
from lab.backends.ssh.transport import HOST_KEY_PUB, SshTransport
from lab.errors import HalabError
from lab.system import run_local
from lab.topology import Topology


class SshBackend(SshTransport, SystemdServices, Backend):
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

    # files -----------------------------------------------------------------------------

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
