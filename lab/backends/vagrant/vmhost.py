"""Where libvirtd and Vagrant run: the machine's own (``system``) or halab's own in a
network namespace (``netns``). ``HALAB_VMHOST`` says which; unset: ``netns`` while
halab's own libvirtd runs, else ``system`` where a libvirtd answers on its socket
(a workstation), else ``netns``.

``system`` (a workstation): the machine's libvirtd (``qemu:///system``, the user in
the ``libvirt`` group, no root), Vagrant and SSH run as they are; the VMs keep
their own clocks (NTP).

``netns``: on this kind of machine the VMs' networks must not touch the root namespace:
libvirtd, its bridges and dnsmasq, every QEMU, Vagrant and every SSH session to
a VM live in ``halabvm``, which has no default route. So libvirt's management
network (192.168.121.0/24) and the lab networks exist only there.

* ``start(driver)``: the namespace, then virtlogd and libvirtd inside it
  (pidfiles under /run/halab/vm). With ``driver="qemu"`` (TCG: nested KVM hangs
  here) /dev/kvm is hidden behind an empty file in the daemons' mount namespace,
  so libvirt probes QEMU once instead of on nearly every call; that needs
  ``namespaces = []`` in /etc/libvirt/qemu.conf (libvirt's per-VM /dev would
  try to move the bind mount).
* chronyd serves this machine's time to the VMs from inside the namespace
  (``-x``: it never sets this machine's clock), so the timestamps of several
  VMs can stand on one failover timeline.
* ``stop()``: ends the daemons it started (by PID) and deletes the namespace,
  which takes every bridge and firewall rule libvirt made with it.
* ``command(argv)``: run something inside (vagrant, virsh, ssh).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from lab.errors import HalabError
from lab.system import alive, env, require_programs, require_root, run_local

NS = "halabvm"
RUN = Path("/run/halab/vm")
QEMU_CONF = Path("/etc/libvirt/qemu.conf")
NO_KVM = RUN / "nokvm"
URI = "qemu:///system"
# Vagrant's boxes (with the kernel QEMU boots) where QEMU's user can read them
VAGRANT_HOME = Path("/var/lib/halab/vagrant.d")


MODE_ENV = "HALAB_VMHOST"
MODES = ("netns", "system")
SYSTEM_SOCKET = Path("/run/libvirt/libvirt-sock")


def mode() -> str:
    """``netns`` or ``system`` (above)."""
    m = os.environ.get(MODE_ENV)
    if m:
        if m not in MODES:
            raise HalabError(f"{MODE_ENV}={m!r}: must be one of {', '.join(MODES)}")
        return m
    if running():
        return "netns"
    return "system" if _answers(SYSTEM_SOCKET) else "netns"


def _answers(path: Path) -> bool:
    """Does a daemon listen on this unix socket (not a file left behind)?"""
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False


def command(argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", NS, *argv] if mode() == "netns" else list(argv)


def vm_env() -> dict[str, str]:
    e = env()
    e.update(VAGRANT_CHECKPOINT_DISABLE="1", VAGRANT_BOX_UPDATE_CHECK_DISABLE="1",
             VAGRANT_DEFAULT_PROVIDER="libvirt", HALAB_VMHOST=mode())
    if mode() == "netns":
        e.update(LIBVIRT_DEFAULT_URI=URI, VAGRANT_HOME=str(VAGRANT_HOME))
    else:  # the user's own settings stand
        e.setdefault("LIBVIRT_DEFAULT_URI", URI)
    return e


def run(argv: Sequence[str], *, check: bool = True, timeout: float = 60,
        input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(command(argv), input=input, capture_output=True, env=vm_env(),
                          timeout=timeout, check=False)
    if check and proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().replace("\n", " | ")
        where = f" in {NS}" if mode() == "netns" else ""
        raise HalabError(f"`{' '.join(argv)}`{where} failed (exit {proc.returncode}): {err}")
    return proc


def _pid(name: str) -> int | None:
    try:
        pid = int((RUN / f"{name}.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if alive(pid) else None


def running() -> bool:
    """Whether halab's own libvirtd runs (the netns mode)."""
    return _pid("libvirtd") is not None


def available() -> bool:
    """Whether libvirtd is there to ask about VMs."""
    return running() if mode() == "netns" else True


def start(driver: str) -> None:
    if mode() == "system":
        require_programs(["virsh", "vagrant"])
        res = run(["virsh", "version"], check=False)
        if res.returncode != 0:
            raise HalabError(f"the machine's libvirtd does not answer at "
                             f"{vm_env()['LIBVIRT_DEFAULT_URI']} (is it running, are you in "
                             f"the libvirt group?): "
                             + res.stderr.decode(errors="replace").strip())
        return
    require_root("the VM lab in its own namespace")
    require_programs(["libvirtd", "virtlogd", "virsh", "vagrant", "qemu-system-x86_64",
                      "chronyd"])
    if running():
        return
    RUN.mkdir(parents=True, exist_ok=True)
    if NS not in run_local(["ip", "netns", "list"]).stdout.decode().split():
        run_local(["ip", "netns", "add", NS])
    run_local(["ip", "-n", NS, "link", "set", "lo", "up"])
    script = "set -e\n"
    if driver == "qemu":
        conf = QEMU_CONF.read_text() if QEMU_CONF.exists() else ""
        if "\nnamespaces = []" not in "\n" + conf:
            QEMU_CONF.write_text(conf + "\n# halab: /dev/kvm is hidden in the VM lab\n"
                                        "namespaces = []\n")
        NO_KVM.touch(mode=0o600)
        script += f"[ -e /dev/kvm ] && mount --bind {NO_KVM} /dev/kvm\n"
    (RUN / "chrony.conf").write_text(
        f"# halab: this machine's time for the VMs\nlocal stratum 8\nallow\ncmdport 0\n"
        f"pidfile {RUN}/chronyd.pid\n")
    script += (f"virtlogd -d -p {RUN}/virtlogd.pid\n"
               f"libvirtd -d -p {RUN}/libvirtd.pid\n"
               f"chronyd -x -f {RUN}/chrony.conf\n")
    run(["sh", "-c", script])
    deadline = time.monotonic() + 60
    while run(["virsh", "version"], check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise HalabError(f"libvirtd in {NS} did not answer within 60 s")
        time.sleep(0.2)


def _end_proxies(pids: list[int]) -> None:
    """SSH's ProxyCommands into the namespace (``nc``, from halab's ssh_configs) that
    outlived their ssh, a VM gone beneath them: nothing else would end them."""
    proxies = []
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0] == b"nc":
            proxies.append(pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while any(alive(p) for p in proxies) and time.monotonic() < deadline:
        time.sleep(0.05)


def stop() -> None:
    """End the daemons started here (by PID) and delete the namespace (the machine's own
    libvirtd, in the system mode, is left as it is)."""
    if mode() == "system":
        return
    for name in ("chronyd", "libvirtd", "virtlogd"):
        pid = _pid(name)
        if pid is None:
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
        (RUN / f"{name}.pid").unlink(missing_ok=True)
    if NS in run_local(["ip", "netns", "list"]).stdout.decode().split():
        left = [int(p) for p in run_local(["ip", "netns", "pids", NS]).stdout.split()]
        _end_proxies(left)
        left = [p for p in left if alive(p)]
        if left:
            raise HalabError(f"processes still in {NS}: {' '.join(map(str, left))}")
        run_local(["ip", "netns", "del", NS])
    shutil.rmtree(RUN, ignore_errors=True)
    with contextlib.suppress(OSError):
        RUN.parent.rmdir()  # /run/halab, unless a netns lab still uses it
