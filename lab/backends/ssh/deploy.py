"""halab itself onto a host: a wheelhouse built from the checkout (once for all hosts,
rebuilt when its sources change), the shell script that unpacks it with PyPA's installer
into a new venv swapped in at /opt/halab/venv, and which hosts can take its wheels."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import shlex
import sys
import tarfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lab.errors import HalabError

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
WHEEL_PACKAGES = ("daemonkit", "balancer", "heartbeat", "lab", "provision", "harness", "halab",
                  "stacks")


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


