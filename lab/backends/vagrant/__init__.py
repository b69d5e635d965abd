"""The vagrant backend: one libvirt VM per host of the topology, made by Vagrant from
the checkout's Vagrantfile, reached over SSH as the ssh backend reaches its hosts
(lab/backends/ssh.py: fabric, files, systemd units, halab's wheel).

libvirtd is the machine's own (a workstation) or, on this kind of machine, halab's
own in the ``halabvm`` network namespace with Vagrant and the VMs' networks; SSH
then reaches the VMs' management addresses through it (``ProxyCommand ip netns
exec halabvm nc``), so nothing of the lab touches the root namespace (see
lab/backends/vagrant/vmhost.py: ``HALAB_VMHOST``).

* ``up``: libvirtd, the box (built offline and registered when it changed), the
  VMs (``vagrant up --parallel``). The Vagrantfile's trigger provisions each VM
  as soon as it is up, the same way under a plain ``vagrant up``: it records
  how SSH reaches the VM (``.vagrant/halab/ssh/NAME.json``, from Vagrant's
  ``ssh_info``) and runs ``halab --lab vagrant provision --host NAME``
* ``prepare`` (before provisioning): as the ssh backend's (halab from a wheelhouse
  built from the checkout, ``--no-index``: the VMs may have no internet), and, with
  halab's own libvirtd, the VM's clock set to follow this machine's
* the driver (``HALAB_VM_DRIVER``: kvm, or qemu for TCG, 5x slower) is recorded by
  ``up`` and by provisioning (``.vagrant/halab/driver``; the trigger's path under a
  plain ``vagrant up``), so a later run without the variable keeps the lab's pace;
  ``down`` forgets it
* ``is_up`` is cheap and harmless (the suite asks it to choose its lab): no VM recorded
  under ``.vagrant``, no libvirt or no Vagrant is "not up", and nothing is started
* the VMs get the lab's own SSH host keys (made on the controller, so known_hosts
  is complete before the VMs exist); Vagrant's login checks none (a VM made again
  has new keys until it is provisioned)
* faults: ``virsh domif-setlink`` cuts a NIC (by its MAC), ``virsh destroy`` is
  the power loss, ``virsh start`` the power coming back
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lab.backends.ssh import SshBackend, inventory
from lab.backends.ssh.inventory import Target
from lab.backends.vagrant import box, readiness, vmhost
from lab.errors import HalabError
from lab.topology import Topology

PUBLIC_BOX = "debian/bookworm64"
BOOT_ID = "/proc/sys/kernel/random/boot_id"  # a new one at every boot
DRIVER_ENV = "HALAB_VM_DRIVER"


def vagrant_dir() -> Path:
    """Where the Vagrantfile is: $HALAB_VAGRANT_DIR, else the nearest one above here."""
    if os.environ.get("HALAB_VAGRANT_DIR"):
        return Path(os.environ["HALAB_VAGRANT_DIR"]).resolve()
    for d in (Path.cwd(), *Path.cwd().parents):
        if (d / "Vagrantfile").exists():
            return d
    raise HalabError("no Vagrantfile here or above: run from the halab checkout "
                     "(or set HALAB_VAGRANT_DIR)")


def box_name() -> str:
    """$HALAB_BOX, else halab's own offline box with halab's own libvirtd, else a public
    Debian 12 box (the Vagrantfile decides the same way)."""
    return os.environ.get("HALAB_BOX") or (box.BOX_NAME if vmhost.mode() == "netns"
                                           else PUBLIC_BOX)


class VagrantBackend(SshBackend):
    kind = "vagrant"
    up_provisions = True  # the Vagrantfile's trigger, each VM as it comes up
    keeps_host_keys = False  # the lab's own, made before the VMs exist

    def __init__(self, topology: Topology, root: Path | None = None) -> None:
        super().__init__(topology)
        self.root = root or vagrant_dir()
        self.control_dir = self.root / ".vagrant" / "halab"
        self.driver = os.environ.get(DRIVER_ENV) or self._recorded_driver() or "kvm"
        # software emulation is an order of magnitude slower: so are a command's limits
        self.slowness = 5.0 if self.driver == "qemu" else 1.0
        # the power cycles each host's connection has lived through (_check_on)
        self._cycles: dict[str, int] = {}
        self._clock: str | None = None

    # vagrant and virsh ---------------------------------------------------------

    def _recorded_driver(self) -> str | None:
        """The driver this lab was brought up with (``_record_driver``), if any."""
        try:
            return (self.control_dir / "driver").read_text().strip() or None
        except OSError:
            return None

    def _record_driver(self) -> None:
        """Remember the driver for runs without $HALAB_VM_DRIVER (written whole, then
        renamed: the other VMs' provisioning, running meanwhile, may be reading it)."""
        if self._recorded_driver() == self.driver:
            return
        self.control_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.control_dir / f"driver.{os.getpid()}"
        tmp.write_text(f"{self.driver}\n")
        tmp.replace(self.control_dir / "driver")

    def _vagrant_env(self) -> dict[str, str]:
        e = vmhost.vm_env()
        e.update(HALAB_VM_DRIVER=self.driver, HALAB_TOPOLOGY=str(self.topology.source),
                 HALAB_BOX=box_name(),
                 HALAB_CLI=f"{sys.executable} -m halab.cli")  # what the trigger runs
        return e

    def vagrant_interactive(self, args: Sequence[str]) -> int:
        """``vagrant ARGS`` with this terminal, libvirtd started (``vagrant up`` alone
        yields a provisioned lab: the Vagrantfile's trigger)."""
        self._start_vmhost()
        self._register_box()
        return subprocess.run(vmhost.command(["vagrant", *args]), cwd=self.root,
                              env=self._vagrant_env(), check=False).returncode

    def vagrant(self, *args: str, timeout: float = 1800, show: bool = False,
                on_line: Callable[[str], None] | None = None) -> str:
        """``vagrant ARGS``; its output (stdout and stderr together), also passed on to
        this process's stdout line by line as it comes with ``show``, or to ``on_line``."""
        with subprocess.Popen(vmhost.command(["vagrant", *args]), cwd=self.root,
                              env=self._vagrant_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, errors="replace") as proc:
            timer = threading.Timer(timeout, proc.kill)
            timer.start()
            try:
                assert proc.stdout is not None
                lines = []
                for line in proc.stdout:
                    lines.append(line.rstrip("\n"))
                    if on_line is not None:
                        on_line(lines[-1])
                    elif show:
                        print(line, end="", flush=True)
                rc = proc.wait()
            finally:
                timer.cancel()
        if rc != 0:
            # halab's own errors (from the trigger's provisioning), else the end of it all
            said = [line.strip() for line in lines if "halab: error:" in line]
            end = f"killed after {timeout:g} s" if rc == -signal.SIGKILL else f"exit {rc}"
            raise HalabError(f"`vagrant {' '.join(args)}` failed ({end}): "
                             + " | ".join(said or lines[-5:]))
        return "\n".join(lines) + "\n"

    def domain(self, host: str) -> str:
        """The libvirt domain of ``host`` (its UUID, as Vagrant recorded it)."""
        self.host(host)
        path = self.root / ".vagrant" / "machines" / host / "libvirt" / "id"
        try:
            return path.read_text().strip()
        except OSError:
            raise HalabError(f"{host}: no VM (run `halab --lab vagrant up`)") from None

    def boot_ids(self, hosts: Sequence[str], timeout: float = 10.0) -> dict[str, str | None]:
        """Each host's kernel boot id (new at every boot of its VM), read over SSH, one
        command per host, all at once; None for a VM libvirt does not run or that does
        not answer within ``timeout`` (x slowness). Never raises. (Daemon threads, not a
        pool: one stuck connecting to a dead VM must not hold this process at exit.)"""
        found: dict[str, str | None] = dict.fromkeys(hosts)
        running = self._running_domains()

        def read(h: str) -> None:
            try:
                if running is not None and self.domain(h).encode() not in running:
                    return  # halted: there is nothing to ask
                res = self.run(h, ["cat", BOOT_ID], check=False, timeout=timeout)
                if res.ok and res.text.strip():
                    found[h] = res.text.strip()
            except Exception:  # (no VM, no SSH, no answer: no boot id)
                pass

        threads = [threading.Thread(target=read, args=(h,), daemon=True,
                                    name=f"boot-id-{h}") for h in hosts]
        for t in threads:
            t.start()
        deadline = time.monotonic() + timeout * self.slowness
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return {h: None if t.is_alive() else found[h] for h, t in zip(hosts, threads,
                                                                         strict=True)}

    def _running_domains(self) -> list[bytes] | None:
        """The uuids of the domains libvirt runs; None if it cannot say."""
        try:
            if not vmhost.available():
                return None
            return vmhost.run(["virsh", "list", "--uuid"], timeout=15).stdout.split()
        except (HalabError, OSError, subprocess.SubprocessError):
            return None

    def virsh(self, *args: str, check: bool = True) -> str:
        return vmhost.run(["virsh", *args], check=check).stdout.decode(errors="replace")

    def is_up(self) -> bool:
        """Every host's VM runs, but one a power-off turned off (``_power``). Asks
        libvirt only when Vagrant recorded a VM for every host in this checkout; never
        starts anything, never raises."""
        try:
            domains = {h: self.domain(h) for h in self.topology.hosts}
            if not vmhost.available():
                return False
            running = vmhost.run(["virsh", "list", "--uuid"], timeout=15).stdout.split()
        except (HalabError, OSError, subprocess.SubprocessError):  # (no virsh, no answer)
            return False
        return all(d.encode() in running for h, d in domains.items()
                   if self._power(h)[0] != "off")

    # up and down ------------------------------------------------------------

    def up(self, on_line: Callable[[str], None] | None = None) -> None:
        """``vagrant up``, each VM provisioned by the Vagrantfile's trigger; its output
        shown as it comes, or given to ``on_line`` line by line."""
        self._record_driver()
        self._start_vmhost()
        self._register_box()
        self._wheelhouse()  # once, before the VMs' provisioning runs want it
        self.vagrant("up", "--parallel", show=True, on_line=on_line)
        for h in self.topology.hosts:  # a VM a fault had powered off runs again
            if self._power(h)[0] == "off":
                self._set_power(h, "on")

    def _start_vmhost(self) -> None:
        """libvirtd started, and this checkout's alone in it (before the box is
        registered: that replaces the box other VMs' disks stand on)."""
        vmhost.start(self.driver)
        if others := self.others():
            raise HalabError(
                f"halab's libvirtd (in {vmhost.NS}) runs VMs this checkout did not make: "
                f"{', '.join(others)}; another checkout's lab on the same networks, most "
                "likely: bring it down there first (halab --lab vagrant down)")

    def others(self) -> list[str]:
        """The VMs (names) in halab's own libvirtd that are not this checkout's: another
        checkout's lab, whose networks, addresses and box are this one's. None in the
        ``system`` mode, where the machine's libvirtd runs the user's other VMs too."""
        if vmhost.mode() != "netns" or not vmhost.available():
            return []
        ours = set()
        for h in self.topology.hosts:
            with contextlib.suppress(HalabError):
                ours.add(self.domain(h))
        listed = self.virsh("list", "--all", "--uuid", check=False).split()
        return sorted(self.virsh("domname", u, check=False).strip() or u
                      for u in listed if u not in ours)

    def _register_box(self) -> None:
        self.control_dir.mkdir(parents=True, exist_ok=True)
        if box_name() != box.BOX_NAME:
            return  # a public box or one of the user's: Vagrant fetches it
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

    def down(self) -> None:
        self.close()
        own = vmhost.mode() == "netns"  # (the machine's own libvirtd serves others too)
        made = vmhost.available() and (self.root / ".vagrant" / "machines").exists()
        if made:
            self.vagrant("destroy", "-f")
        # another checkout's VMs left running use the networks and the libvirtd: theirs
        if not self.others():
            if made:
                for net in self.virsh("net-list", "--name", check=False).split():
                    if net.startswith(f"{self.topology.lab}-") or (
                            own and net == "vagrant-libvirt"):
                        self.virsh("net-destroy", net, check=False)
                        self.virsh("net-undefine", net, check=False)
            vmhost.stop()
        (self.control_dir / "ssh_config").unlink(missing_ok=True)
        for f in (self.control_dir / "ssh").glob("*.json"):
            f.unlink()
        (self.control_dir / "driver").unlink(missing_ok=True)
        shutil.rmtree(self.control_dir / "power", ignore_errors=True)
        readiness.clear(self.control_dir)

    # how SSH reaches the VMs ------------------------------------------------------

    def targets(self) -> dict[str, Target]:
        """How SSH reaches each VM that is up, as the Vagrantfile's trigger recorded it
        from Vagrant's ``ssh_info`` (host, port, user, keys); through the namespace where
        libvirtd runs in one."""
        proxy = ((("ProxyCommand", " ".join(vmhost.command(["nc", "%h", "%p"]))),)
                 if vmhost.mode() == "netns" else ())
        found = {}
        for h in self.topology.hosts:
            f = self.control_dir / "ssh" / f"{h}.json"
            if f.exists():
                t = json.loads(f.read_text())
                found[h] = Target(t["host"], t["user"], int(t["port"]), tuple(t["keys"]), proxy)
        return found

    def inventory_text(self) -> str:
        """An inventory for the ssh backend reaching these VMs as Vagrant's user does
        (``halab --lab vagrant inventory``): hosts that someone else made."""
        return inventory.render(self.targets(), self.slowness, comment=(
            "halab inventory: the VMs of the vagrant lab in "
            f"{self.root}, reached as Vagrant's user\n(`halab --lab vagrant inventory`)"))

    def _login_host_keys(self, host: str, t: Target) -> list[str]:
        return ["StrictHostKeyChecking no", "UserKnownHostsFile /dev/null"]

    def _trust(self, client: Any, host: str, t: Target) -> None:
        """(fabric's own policy: any key; see _login_host_keys)"""

    # A power-off and a power-on are written down in the checkout (power/HOST: "off N"
    # or "on N", N the power-offs so far), so that every process of this lab knows at
    # once (the suite's, a `halab fault power-off` run beside it): a command on a host
    # powered off fails at once, as it would on a host whose power is gone, rather than
    # after SSH's timeouts on a dead connection; a connection opened before a power
    # cycle is dropped (its VM has booted since: the connection is gone with it).

    def _power(self, host: str) -> tuple[str, int]:
        try:
            state, cycles = (self.control_dir / "power" / host).read_text().split()
            return state, int(cycles)
        except (OSError, ValueError):
            return "on", 0

    def _set_power(self, host: str, state: str) -> None:
        cycles = self._power(host)[1] + (state == "off")
        d = self.control_dir / "power"
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{host}.{os.getpid()}.{threading.get_ident()}"
        tmp.write_text(f"{state} {cycles}\n")
        tmp.replace(d / host)

    def _check_on(self, host: str, argv: Sequence[str]) -> None:
        state, cycles = self._power(host)
        if state == "off":
            raise HalabError(f"{host}: `{' '.join(argv)}`: the host is powered off")
        if self._cycles.setdefault(host, cycles) != cycles:
            self._close(host)
            self._cycles[host] = cycles

    # halab and the clock in the VM -------------------------------------------------

    def _source(self) -> Path:
        return self.root

    def prepare(self, hosts: Sequence[str]) -> None:
        self._record_driver()  # (a plain `vagrant up` comes here through its trigger)
        # halab's own libvirtd comes with a time server; elsewhere VMs keep their own NTP
        self._clock = self._time_server() if vmhost.mode() == "netns" else None
        super().prepare(hosts)

    def _prepare(self, host: str, wheels: Path) -> None:
        if self._clock is not None:
            self._sync_clock(host, self._clock)
        super()._prepare(host, wheels)

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
        # restarted only when its configuration changed: a restart syncs from scratch
        # (provisioning again, or the suite's start, waited for that each time)
        self.run(host, ["sh", "-c", 'printf %s "$1" | cmp -s - "$2" || '
                        '{ printf %s "$1" > "$2" && systemctl restart chrony; }',
                        "sh", conf, "/etc/chrony/chrony.conf"], timeout=60)
        self.run(host, ["chronyc", "waitsync", "120", "0.005", "0", "0.5"], timeout=90)

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
        self._set_power(host, "off")
        self._close(host)  # a command still waiting on the dead connection fails now

    def power_on(self, host: str) -> None:
        """Boot again; return once systemd says the boot is done (the units that were
        enabled, halab's among them, are up). A VM that runs already is left as it is:
        the fault's note is written before its power-off, and a run killed in between
        left a power loss to heal that never happened (`virsh start` refuses then)."""
        dom = self.domain(host)
        if self.virsh("domstate", dom, check=False).strip() != "running":
            self.virsh("start", dom)
        self._set_power(host, "on")
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
