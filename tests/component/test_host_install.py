"""halab's install on a host (lab/backends/ssh.py ``install_script``), run here for real:
this machine is a Debian 12 like the lab's hosts, its /usr/bin/python3 theirs. The
wheelhouse is the real one, built from this checkout as the backend builds it (from
pip's cache or PyPI); the script is the very text sent to a host, with a temporary
directory for /opt/halab and /usr/local/bin."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.backends import ssh as ssh_backend
from lab.backends.ssh import deploy as ssh_deploy
from lab.backends.ssh.deploy import WheelTarget, glibc_needed, takes_wheels, wheels_target
from lab.topology import load as load_topology

ROOT = Path(__file__).resolve().parents[2]
HOST_PYTHON = Path("/usr/bin/python3")  # a host's python3 (Debian's)
HOST_ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}  # python3 there is Debian's
LINUX = f"Linux {os.uname().machine}"


def host_python_version() -> str:
    if not HOST_PYTHON.exists():
        pytest.skip(f"no {HOST_PYTHON} here (a Debian's python3 stands for a host's)")
    return subprocess.run(
        [str(HOST_PYTHON), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True, text=True, check=True).stdout.strip()


# which wheels a host takes as they are -------------------------------------------------

@pytest.mark.parametrize(("wheel", "glibc"), [
    ("halab-0.1.0-py3-none-any.whl", (0, 0)),
    ("httptools-0.9.0-cp311-cp311-manylinux1_x86_64.manylinux_2_28_x86_64."
     "manylinux_2_5_x86_64.whl", (2, 5)),
    ("pyyaml-6.0.4-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64."
     "manylinux_2_28_x86_64.whl", (2, 17)),
    ("x-1-cp311-cp311-manylinux_2_28_x86_64.whl", (2, 28)),
    ("x-1-cp311-cp311-manylinux2010_x86_64.whl", (2, 12)),
    ("x-1-1build-cp311-cp311-linux_x86_64.whl", (2, 36)),  # built here: this glibc
    ("x-1-cp311-cp311-musllinux_1_2_x86_64.whl", None),
    ("x-1-cp311-cp311-macosx_11_0_arm64.whl", None),
])
def test_a_wheel_needs_the_oldest_glibc_of_its_tags(wheel: str,
                                                   glibc: tuple[int, int] | None) -> None:
    assert glibc_needed(wheel, (2, 36)) == glibc


def test_the_target_is_this_machines_python_and_system_and_the_wheels_glibc() -> None:
    wheels = ["halab-0.1.0-py3-none-any.whl", "rich-15.0.0-py3-none-any.whl",
              "uvloop-0.23.0-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
              "httptools-0.9.0-cp311-cp311-manylinux1_x86_64.manylinux_2_5_x86_64.whl"]
    assert wheels_target(wheels, (3, 11), "Linux x86_64", "2.36") == WheelTarget(
        "3.11", "Linux x86_64", "2.17")
    assert wheels_target(wheels[:2], (3, 12), "Linux aarch64", "2.36") == WheelTarget(
        "3.12", "Linux aarch64", None)  # pure Python: any glibc, or none
    here = wheels_target(wheels[:2])
    assert here is not None
    assert here.python == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert here.system == f"{os.uname().sysname} {os.uname().machine}"
    # wheels of another system: no host takes them as they are (pip then)
    assert wheels_target(["x-1-cp311-cp311-macosx_11_0_arm64.whl"], (3, 11),
                         "Darwin arm64", "") is None
    assert wheels_target([*wheels, "x-1-cp311-cp311-musllinux_1_2_x86_64.whl"],
                         (3, 11), "Linux x86_64", "2.36") is None


@pytest.fixture
def host_venv(tmp_path: Path) -> Path:
    """A venv as the install script makes it, by Debian's python3."""
    host_python_version()
    venv = tmp_path / "venv.new"
    subprocess.run([str(HOST_PYTHON), "-m", "venv", "--without-pip", str(venv)], check=True)
    return venv


def test_the_host_takes_the_wheels_of_its_python_system_and_glibc(host_venv: Path) -> None:
    """The decision, made by the shell test the host runs: here, for real."""
    version = host_python_version()

    def takes(target: WheelTarget | None) -> bool:
        test = takes_wheels(target, str(host_venv))
        return subprocess.run(["sh", "-c", test], env=HOST_ENV, check=False).returncode == 0

    assert takes(WheelTarget(version, LINUX, "2.17"))
    assert takes(WheelTarget(version, LINUX, None))
    major, minor = version.split(".")
    assert not takes(WheelTarget(f"{major}.{int(minor) - 1}", LINUX, "2.17"))  # another Python
    assert not takes(WheelTarget(f"{major}.{int(minor) + 1}", LINUX, None))
    assert not takes(WheelTarget(version, "Linux riscv64", None))  # another processor
    assert not takes(WheelTarget(version, LINUX, "9.99"))  # a glibc older than they need
    assert not takes(None)  # wheels no host takes


# the install itself -----------------------------------------------------------------

@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The real wheelhouse, as the backend builds it: halab's wheel, what it needs, the
    installer zipped (a few seconds from pip's cache; else from PyPI, as for a lab)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HALAB_SOURCE", str(ROOT))
        lab = ssh_backend.SshBackend(load_topology())
        lab.control_dir = tmp_path_factory.mktemp("control")
        # one of before the installer: these sources, no installer, a wheel of an
        # older build left beside the new ones (pip wheel added, never removed)
        old = lab.control_dir / "wheels"
        old.mkdir()
        (old / "source.sha256").write_text(ssh_deploy.source_digest(ROOT))
        (old / STALE).write_bytes(b"")
        wheels = lab._wheelhouse()
        stamp = (wheels / "source.sha256").stat()
        assert lab._wheelhouse() == wheels  # built once: the second call finds it
        assert (wheels / "source.sha256").stat().st_ino == stamp.st_ino
        yield wheels


STALE = "pyyaml-6.0.0-cp311-cp311-manylinux2014_x86_64.whl"


def test_the_wheelhouse_is_one_build(wheelhouse: Path) -> None:
    """Built anew: every wheel in it is installed, so none of an older build stays."""
    names = [w.name for w in wheelhouse.glob("*.whl")]
    assert STALE not in names
    projects = [n.split("-")[0] for n in names]
    assert len(set(projects)) == len(projects)
    assert {"halab", "pyyaml", "uvloop", "httptools"} <= set(projects)
    # the installer, from this machine's (no index needed: Vagrant's trigger may have
    # none), importable from its zip
    assert "installer" not in projects
    zipped = str(wheelhouse / ssh_deploy.INSTALLER_ZIP)
    found = subprocess.run([str(HOST_PYTHON), "-c", "import installer; print(installer.__file__)"],
                           env={**HOST_ENV, "PYTHONPATH": zipped},
                           capture_output=True, text=True, check=True).stdout
    assert found.startswith(zipped)


def install(tmp_path: Path, wheels: Path, target: WheelTarget | None,
            digest: str) -> subprocess.CompletedProcess[str]:
    """The script a host runs, from the archive of the wheels a host gets."""
    tar = tmp_path / ".halab-wheels.tar"
    tar.write_bytes(ssh_deploy.wheel_tar(wheels))
    script = ssh_deploy.install_script(
        str(tmp_path / "opt" / "venv"), str(tmp_path / "wheels"), digest, target,
        tar=str(tar), bin_dir=str(tmp_path / "bin"), dirs=[str(tmp_path / "run")])
    done = subprocess.run(["sh", "-c", script], env=HOST_ENV, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert not tar.exists() and not (tmp_path / "wheels").exists()
    return done


def check_installed(tmp_path: Path, digest: str) -> Path:
    venv = tmp_path / "opt" / "venv"
    assert sorted(p.name for p in (tmp_path / "opt").iterdir()) == ["venv"]  # no .new, .old
    assert (venv / "wheels.sha256").read_text() == digest + "\n"
    assert (tmp_path / "run").is_dir()
    site = venv / "lib" / f"python{host_python_version()}" / "site-packages"
    assert not list(site.rglob("*.pyc"))  # nothing compiled: Python does, on import
    assert not list(site.glob("installer*"))  # the installer is no part of halab
    # the programs, linked where a host's PATH finds them: their shebang the final path
    for program in ssh_deploy.PROGRAMS:
        link = tmp_path / "bin" / program
        assert os.readlink(link) == f"{venv}/bin/{program}"
        assert link.read_text().startswith(f"#!{venv}/bin/python\n")
    assert f"{venv}.new" not in (venv / "bin" / "activate").read_text()
    assert f"{venv}.new" not in (venv / "pyvenv.cfg").read_text()
    out = subprocess.run([str(tmp_path / "bin" / "halab"), "--help"], env=HOST_ENV,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.startswith("usage: halab ")
    subprocess.run([str(venv / "bin" / "python"), "-c",
                    "import balancer.daemon, heartbeat.daemon, halab.cli, yaml, uvloop, "
                    "httptools, rich, prometheus_client"], env=HOST_ENV, check=True)
    return site


def test_the_wheels_install_without_pip_into_a_new_venv_swapped_in(
        tmp_path: Path, wheelhouse: Path) -> None:
    names = [w.name for w in wheelhouse.glob("*.whl")]
    assert (wheelhouse / ssh_deploy.INSTALLER_ZIP).is_file()
    assert sum(n.startswith("halab-") for n in names) == 1
    target = wheels_target(names)
    assert target is not None
    if target.python != host_python_version():
        pytest.skip(f"the wheels are for Python {target.python}, {HOST_PYTHON} is "
                    f"{host_python_version()}: a host like it gets pip's install (tested below)")
    install(tmp_path, wheelhouse, target, "build-1")
    site = check_installed(tmp_path, "build-1")
    assert not list(site.glob("halab-*.dist-info/INSTALLER"))  # (pip would write one)

    # another build: the venv in place is replaced whole while a daemon runs from it
    (site / "left_over.py").write_text("")  # a module an older build had
    daemon = subprocess.Popen([str(tmp_path / "opt" / "venv" / "bin" / "python"), "-c",
                               "import sys, time, yaml; print('up', flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True,
                              env=HOST_ENV)
    try:
        assert daemon.stdout is not None and daemon.stdout.readline() == "up\n"
        install(tmp_path, wheelhouse, target, "build-2")
        assert daemon.poll() is None  # it runs on, from the old venv's open files
        site = check_installed(tmp_path, "build-2")
        assert not (site / "left_over.py").exists()
    finally:
        daemon.kill()
        daemon.wait()


def test_a_host_of_another_python_gets_pips_install(tmp_path: Path, wheelhouse: Path) -> None:
    """No target (the wheels fit no host as they are): pip, as the Debian's python3-venv
    brings it, from the wheelhouse first (--no-index: this machine's Python is the
    host's here, so no index is asked)."""
    host_python_version()
    names = [w.name for w in wheelhouse.glob("*.whl")]
    target = wheels_target(names)
    if target is None or target.python != host_python_version():
        pytest.skip("the wheels are not for this host's Python: pip would ask an index")
    if not list(Path("/usr/share/python-wheels").glob("pip-*.whl")):
        pytest.skip("no Debian pip wheel here: the script would install python3-venv")
    install(tmp_path, wheelhouse, None, "build-1")
    site = check_installed(tmp_path, "build-1")
    (info,) = site.glob("halab-*.dist-info")
    assert (info / "INSTALLER").read_text().strip() == "pip"


def test_a_failed_install_leaves_the_venv_in_place(tmp_path: Path, wheelhouse: Path) -> None:
    """An install that fails (here: the installer is missing from the wheels) changes
    nothing of the venv in place, even one that a swap cut short had left aside; and
    leaves no archive behind."""
    names = [w.name for w in wheelhouse.glob("*.whl")]
    target = wheels_target(names)
    if target is None or target.python != host_python_version():
        pytest.skip("the wheels are not for this host's Python")
    broken = tmp_path / "broken"
    broken.mkdir()
    for w in wheelhouse.glob("*.whl"):
        (broken / w.name).symlink_to(w)
    aside = tmp_path / "opt" / "venv.old"  # a swap cut short: the venv aside, none in place
    aside.mkdir(parents=True)
    (aside / "wheels.sha256").write_text("build-0\n")
    tar = tmp_path / ".halab-wheels.tar"
    tar.write_bytes(ssh_deploy.wheel_tar(broken))
    script = ssh_deploy.install_script(
        str(tmp_path / "opt" / "venv"), str(tmp_path / "wheels"), "build-1", target,
        tar=str(tar), bin_dir=str(tmp_path / "bin"))
    done = subprocess.run(["sh", "-c", script], env=HOST_ENV, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode != 0
    assert (tmp_path / "opt" / "venv" / "wheels.sha256").read_text() == "build-0\n"
    assert not tar.exists()
