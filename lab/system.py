"""Checks and helpers for the machine halab runs on: root, tools, processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lab.errors import HalabError

SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Which Debian package provides each program halab runs.
PACKAGES: dict[str, str] = {
    "ip": "iproute2",
    "nsenter": "util-linux",
    "unshare": "util-linux",
    "umount": "mount",
    "iptables-restore": "iptables",
    "ip6tables-restore": "iptables",
    "iptables-save": "iptables",
    "nginx": "nginx-light",
    "sshd": "openssh-server",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "curl": "curl",
    "conntrack": "conntrack",
    "nc": "netcat-openbsd",
    "sysctl": "procps",
    "debootstrap": "debootstrap",
    "mke2fs": "e2fsprogs",
    "qemu-img": "qemu-utils",
    "chroot": "coreutils",
    "vagrant": "vagrant vagrant-libvirt",
    "libvirtd": "libvirt-daemon-system",
    "virtlogd": "libvirt-daemon-system",
    "virsh": "libvirt-clients",
    "qemu-system-x86_64": "qemu-system-x86",
    "chronyd": "chrony",
}


def env() -> dict[str, str]:
    """The environment for commands: ours, with halab's own programs (the
    directory of this interpreter: balancerctl, ...) and the sbin directories
    on PATH."""
    e = dict(os.environ)
    path = e.get("PATH", "")
    own = os.path.dirname(sys.executable)
    e["PATH"] = ":".join(p for p in (own, path, SBIN_PATH) if p)
    return e


def which(program: str) -> str | None:
    return shutil.which(program, path=env()["PATH"])


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise HalabError(f"{what} needs root (network namespaces, iptables): run it as root")


def require_programs(programs: Sequence[str]) -> None:
    missing = [p for p in programs if which(p) is None]
    if missing:
        pkgs = sorted({PACKAGES.get(p, p) for p in missing})
        raise HalabError(
            f"missing {', '.join(missing)}: install with `apt-get install -y {' '.join(pkgs)}`"
        )


def run_local(argv: Sequence[str], *, input: bytes | None = None, check: bool = True,
              timeout: float = 30.0) -> subprocess.CompletedProcess[bytes]:
    """Run a command on this machine (root namespace)."""
    try:
        proc = subprocess.run(list(argv), input=input, capture_output=True, env=env(),
                              timeout=timeout, check=False)
    except FileNotFoundError:
        require_programs([argv[0]])
        raise
    except subprocess.TimeoutExpired:
        raise HalabError(f"`{' '.join(argv)}` did not finish within {timeout:.0f} s") from None
    if check and proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().replace("\n", " | ")
        raise HalabError(f"`{' '.join(argv)}` failed (exit {proc.returncode}): {err}")
    return proc


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    state: str  # R, S, D, Z, ...
    start: int  # clock ticks since boot
    session: int  # the session id (a service started in its own session: its pid)


def proc_info(pid: int) -> ProcInfo | None:
    """The process's state and start time, or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    rest = raw[raw.rindex(")") + 2:].split()
    return ProcInfo(pid=pid, state=rest[0], start=int(rest[19]), session=int(rest[3]))


def session_members(sid: int) -> list[ProcInfo]:
    """The live processes of session ``sid``, its leader (if alive) excluded. A PID is not
    reused while a session bears it, so these are that session's, even with its leader gone."""
    members: list[ProcInfo] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != sid:
            info = proc_info(int(entry.name))
            if info is not None and info.session == sid and info.state not in ("Z", "X"):
                members.append(info)
    return members


def alive(pid: int, start: int | None = None) -> bool:
    """True if ``pid`` runs (not a zombie) and, if given, started at ``start``."""
    info = proc_info(pid)
    if info is None or info.state in ("Z", "X"):
        return False
    return start is None or info.start == start
