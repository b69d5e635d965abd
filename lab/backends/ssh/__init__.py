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
import hashlib
import importlib.util
import io
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.backend import Backend, HostPaths, Result, ServiceSpec, ServiceState
from lab.backends.ssh import inventory as inv_mod
from lab.backends.ssh.inventory import Inventory, Target
from lab.errors import HalabError
from lab.system import run_local
from lab.topology import Topology

VENV = "/opt/halab/venv"
# PyPA's wheel installer (pure Python, installed here with halab's `vm`/`test` extras),
# zipped from this machine's copy into the wheelhouse for the hosts: without pip
# (imported and run twice, under software emulation, it took minutes per VM), one
# Python process unpacks every wheel of the build into a new venv. From this machine,
# not an index: the wheelhouse may be built where no index is reachable (Vagrant's
# trigger, in halab's namespace)
INSTALLER_ZIP = "installer.zip"
WHEELS_TMP = "/tmp/halab-wheels"  # the wheels on a host, while they are installed
# The host's venv python: install every wheel of ``argv[2]``
# into its venv; the scripts' shebang is ``argv[1]``'s python (where the venv will be).
# No bytecode is compiled: Python compiles what it imports, once.
INSTALL_PY = """\
import sys, sysconfig
from pathlib import Path
from installer import install
from installer.destinations import SchemeDictionaryDestination
from installer.sources import WheelFile
venv, wheels = sys.argv[1], Path(sys.argv[2])
include = sysconfig.get_path("include", vars={"installed_base": sys.prefix})
for whl in sorted(wheels.glob("*.whl")):
    with WheelFile.open(whl) as source:
        scheme = {**sysconfig.get_paths(), "headers": f"{include}/{source.distribution}"}
        install(source, SchemeDictionaryDestination(
            scheme, interpreter=f"{venv}/bin/python", script_kind="posix"), {})
"""
PROGRAMS = ("halab", "halab-balancer", "balancerctl", "halab-heartbeat", "hbctl")
SERVICES_DIR = "/etc/halab/services"  # one file per service provisioned: its unit
SSH_PERSIST = 600
HOST_KEY_PUB = "/etc/ssh/ssh_host_ed25519_key.pub"
POWERED_OFF = "/run/halab/powered-off"  # the units a power loss stopped


def checkout_root() -> Path:
    """The halab checkout that hosts get halab from: $HALAB_SOURCE, else the nearest
    directory here or above whose pyproject.toml is halab's."""
    if os.environ.get("HALAB_SOURCE"):
        return Path(os.environ["HALAB_SOURCE"]).resolve()
    for d in (Path.cwd(), *Path.cwd().parents):
        p = d / "pyproject.toml"
        if p.exists() and 'name = "halab"' in p.read_text(errors="replace"):
            return d
    raise HalabError("no halab checkout here or above (its wheel goes to the hosts): "
                     "run from the checkout (or set HALAB_SOURCE)")


# the packages of halab's wheel (pyproject.toml's packages.find.include, a unit test says)
WHEEL_PACKAGES = ("daemonkit", "balancer", "heartbeat", "lab", "provision", "harness", "halab")


def source_digest(root: Path) -> str:
    """What a wheel of the checkout at ``root`` is built from."""
    h = hashlib.sha256()
    files = [root / "pyproject.toml", *sorted(
        f for pkg in WHEEL_PACKAGES
        for f in (root / pkg).rglob("*") if f.is_file() and "__pycache__" not in f.parts)]
    for f in files:
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


@dataclass(frozen=True)
class WheelTarget:
    """What a host needs to take the wheelhouse's wheels as they are: this machine's
    Python (its pip built them for itself) and system, a glibc that new."""

    python: str  # major.minor: "3.11"
    system: str  # as `uname -sm` says: "Linux x86_64"
    glibc: str | None  # the oldest that every wheel runs on; None: no wheel needs one


MANYLINUX = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}


def glibc_needed(wheel: str, own: tuple[int, int]) -> tuple[int, int] | None:
    """The oldest glibc that ``wheel`` (a file name) runs on: (0, 0) for none needed,
    ``own`` (this machine's) for a wheel built here (linux_*); None for a wheel for
    another system (macOS, musl)."""
    best: tuple[int, int] | None = None
    for tag in wheel.removesuffix(".whl").split("-")[-1].split("."):
        need: tuple[int, int] | None = None
        family = tag.split("_")[0]
        if tag == "any":
            need = (0, 0)
        elif family in MANYLINUX:
            need = MANYLINUX[family]
        elif family == "manylinux" and tag.count("_") >= 3:
            major, minor = tag.split("_")[1:3]
            need = (int(major), int(minor)) if (major + minor).isdigit() else None
        elif family == "linux":
            need = own
        if need is not None and (best is None or need < best):
            best = need
    return best


def wheels_target(wheels: Sequence[str], python: tuple[int, int] | None = None,
                  system: str | None = None, glibc: str | None = None) -> WheelTarget | None:
    """Which hosts take ``wheels`` (file names) as they are: those of the Python and the
    system they were built on and for (this machine's, unless ``python``, ``system``,
    ``glibc`` say which), with a glibc as new as they need; None: no host (pip then)."""
    python = python or (sys.version_info.major, sys.version_info.minor)
    uname = os.uname()
    system = system or f"{uname.sysname} {uname.machine}"
    if glibc is None:
        try:
            glibc = (os.confstr("CS_GNU_LIBC_VERSION") or "").removeprefix("glibc ")
        except (ValueError, OSError):  # (no glibc here)
            glibc = ""
    major, _, minor = glibc.partition(".")
    own = (int(major), int(minor.split(".")[0])) if glibc else (0, 0)
    needs = [glibc_needed(w, own) for w in wheels]
    if not system.startswith("Linux ") or None in needs:
        return None
    need = max((n for n in needs if n is not None), default=(0, 0))
    return WheelTarget(f"{python[0]}.{python[1]}", system,
                       f"{need[0]}.{need[1]}" if need > (0, 0) else None)


def takes_wheels(target: WheelTarget | None, venv: str) -> str:
    """Shell: true where ``target`` is met by the host whose new venv (made by its
    python3) is ``venv``; no process but uname and getconf."""
    if target is None:
        return "false"
    test = (f'[ "$(uname -sm)" = {shlex.quote(target.system)} ] && '
            f"[ -d {venv}/lib/python{target.python}/site-packages ]")
    if target.glibc:  # (musl has no getconf GNU_LIBC_VERSION: pip then)
        test += (f' && g=$(getconf GNU_LIBC_VERSION 2>/dev/null) && '
                 f'printf "%s\\n" {target.glibc} "${{g#glibc }}" | sort -C -V')
    return test


def build_digest(wheels: Path) -> str:
    """What is installed from ``wheels``: the sources and every wheel's name (its
    version), noted in the venv."""
    return hashlib.sha256((wheels / "source.sha256").read_bytes() + "\0".join(
        sorted(w.name for w in wheels.glob("*.whl"))).encode()).hexdigest()


def installer_files() -> list[tuple[Path, str]]:
    """PyPA's installer as this machine has it: its files, each with its name in a zip
    (none where halab was installed without it: the hosts get pip's install then)."""
    spec = importlib.util.find_spec("installer")
    if spec is None or not spec.submodule_search_locations:
        return []
    package = Path(next(iter(spec.submodule_search_locations)))
    return [(f, f"installer/{f.relative_to(package)}") for f in sorted(package.rglob("*"))
            if f.is_file() and "__pycache__" not in f.parts]


def zip_installer(path: Path) -> None:
    """The installer, importable from the zip ``path`` (zipimport: on PYTHONPATH)."""
    files = installer_files()
    if not files:
        return
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for f, name in files:
            z.write(f, name)


def wheel_tar(wheels: Path) -> bytes:
    """Every wheel of the wheelhouse, and the installer, in one tar archive (one
    transfer, owner root)."""
    def root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mode = 0o644
        return info

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for f in [*sorted(wheels.glob("*.whl")), *wheels.glob(INSTALLER_ZIP)]:
            tar.add(f, arcname=f.name, filter=root)
    return buf.getvalue()


def install_script(venv: str, wheels: str, digest: str, target: WheelTarget | None, *,
                   tar: str | None = None, bin_dir: str = "/usr/local/bin",
                   dirs: Sequence[str] = ()) -> str:
    """Shell, run as root on a host: halab and what it needs installed from ``wheels``
    (a directory, unpacked first from the archive ``tar``) into a venv made anew beside
    ``venv`` (``venv``.new) and swapped in: nothing of an older build stays, and the
    venv in place stays whole until the new one is (its daemons run on, their files
    open). Where the host takes the wheels as they are (``target``), PyPA's installer
    unpacks them; elsewhere (another Python), pip installs halab's wheel and the host's
    own wheels of what it needs, from its index. Then the build's ``digest`` noted in
    the venv, the programs linked into ``bin_dir``, ``dirs`` made."""
    for path in (venv, wheels, tar or "", bin_dir, *dirs):
        if not set(path) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                "0123456789_.+-/"):
            raise ValueError(f"install_script: {path!r}: not a plain path")
    new, old = f"{venv}.new", f"{venv}.old"
    links = " ".join(f"{venv}/bin/{p}" for p in PROGRAMS)
    pip = f"$pip install -q --no-compile --find-links {wheels}"
    return "\n".join([
        "set -e",
        *([f"trap 'rm -f {tar}' EXIT",  # (whatever fails: no archive left in /tmp)
           f"rm -rf {wheels}; mkdir -m 700 {wheels}",
           f"tar -x -C {wheels} -f {tar}; rm -f {tar}"] if tar else []),
        # a swap cut short between its two renames left the venv aside: back first
        f"if [ ! -e {venv} ] && [ -d {old} ]; then mv -T {old} {venv}; fi",
        "apt_venv() { DEBIAN_FRONTEND=noninteractive apt-get update -qq && "
        "apt-get install -y -qq python3-venv; }",
        f"rm -rf {new} {old}",
        f"python3 -m venv --without-pip {new} 2>/dev/null || "
        f"{{ apt_venv && python3 -m venv --without-pip {new}; }}",
        f"if {takes_wheels(target, new)}; then",
        f"  PYTHONPATH={wheels}/{INSTALLER_ZIP} {new}/bin/python "
        f"-c {shlex.quote(INSTALL_PY)} {venv} {wheels}",
        "else",
        # pip: on Debian the one of python3-venv's wheel, run from that wheel (a venv's
        # own pip, its install compiled, cost minutes under software emulation); else
        # a venv with pip
        "  w=$(ls /usr/share/python-wheels/pip-*.whl 2>/dev/null | tail -n 1)",
        "  if [ -z \"$w\" ] && ! python3 -c 'import ensurepip' 2>/dev/null; then",
        "    apt_venv; w=$(ls /usr/share/python-wheels/pip-*.whl | tail -n 1)",
        "  fi",
        f'  if [ -n "$w" ]; then pip="{new}/bin/python $w/pip"; '
        f"else python3 -m venv {new}; pip={new}/bin/pip; fi",
        f"  {pip} --no-index {wheels}/halab-*.whl || {pip} {wheels}/halab-*.whl",
        "fi",
        # the venv's own files and pip's launchers name the venv: its final path
        f"grep -rlIF {new} {new}/bin {new}/pyvenv.cfg | xargs -r sed -i 's|{new}|{venv}|g'",
        f"echo {digest} > {new}/wheels.sha256",
        f"if [ -e {venv} ] || [ -L {venv} ]; then mv -T {venv} {old}; fi",
        f"mv -T {new} {venv}",
        f"rm -rf {old} {wheels}",
        f"mkdir -p {bin_dir} {' '.join(dirs)}",
        f"ln -sf {links} {bin_dir}/",
        "sync",  # (a power loss soon after must not leave files empty)
    ]) + "\n"


def render_unit(spec: ServiceSpec) -> str:
    """A unit for a foreground daemon that ships none of halab's own."""
    return (f"# halab: {spec.name}, rendered from its argv by halab\n"
            f"[Unit]\nDescription=halab {spec.name}\nAfter=network-online.target\n"
            f"Conflicts={distro_unit(spec)}\n\n"
            f"[Service]\nExecStart={shlex.join(spec.argv)}\nRestart=on-failure\n"
            f"RestartSec=1\nRuntimeDirectory=halab\nRuntimeDirectoryPreserve=yes\n\n"
            f"[Install]\nWantedBy=multi-user.target\n")


def distro_unit(spec: ServiceSpec) -> str:
    """The distribution's unit for the same program (nginx.service), which a rendered
    unit replaces: both would want the same ports."""
    return f"{Path(spec.argv[0]).name}.service"


def unit_for(spec: ServiceSpec) -> tuple[str, str | None]:
    """(unit name, unit text to install, or None for the system's own unit)."""
    if spec.unit:
        return spec.unit, spec.unit_text
    return f"halab-{spec.name}.service", render_unit(spec)


def restart_unless_started(spec: ServiceSpec, unit: str, text: str | None,
                           services_dir: str = SERVICES_DIR, venv: str = VENV) -> str:
    """Shell: ``systemctl restart`` the unit unless it is active and was started from
    these inputs (the spec's, its unit's text, for halab's daemons the build installed
    in ``venv``), noted on the host when it was."""
    want = hashlib.sha256(f"{spec.inputs}\0{text or unit}".encode()).hexdigest()
    ours = bool(spec.argv) and spec.argv[0].startswith(venv)
    build = f" $(cat {venv}/wheels.sha256)" if ours else ""
    started = f"{services_dir}/.{spec.name}.started"
    return (f'new="{want}{build}"; systemctl is-active -q {unit} && '
            f'[ "$(cat {started} 2>/dev/null)" = "$new" ] || '
            f'{{ systemctl restart {unit} && echo "$new" > {started}; }}')


def ssh_block(name: str, t: Target, lines: Sequence[str], login: bool = True) -> str:
    """A Host block: halab's ``lines`` first (ssh_config's first value wins), the
    login's keys (``login``), then the target's own options."""
    keys = [*(f"IdentityFile {k}" for k in t.identities),
            *(["IdentitiesOnly yes"] if t.identities else [])] if login else []
    body = [f"HostName {t.address}", f"Port {t.port}", *lines, *keys,
            *(f"{k} {v}" for k, v in t.options)]
    return f"Host {name}\n" + "".join(f"  {line}\n" for line in body)


class _TrustOnFirstUse:
    """paramiko's missing-host-key policy: remember a host's key the first time (as
    OpenSSH's StrictHostKeyChecking=accept-new), in a file shared with OpenSSH."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        with open(self.path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        client.get_host_keys().add(hostname, key.get_name(), key)


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
            raise HalabError(f"the {self.kind} backend passes no input to commands")
        self._check_on(host, argv)
        conn = self.connection(host)
        try:
            res = conn.run(self._sudo(conn.user, argv), hide=True, warn=True, in_stream=False,
                           timeout=timeout * self.slowness)
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
