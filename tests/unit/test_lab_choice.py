"""Which lab the proof suite tests (`vagrant up`, then `tox -e integration`), the cheap
question behind it (is this checkout's Vagrant lab up?), the pace a Vagrant lab
remembers, and the one line that stops a netns run without root."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from lab import topology as topo_mod
from lab.backend import Result
from lab.backends import choose_lab, root_refusal, vagrant, vagrant_lab_up
from lab.backends import ssh as ssh_backend
from lab.backends.vagrant import vmhost
from lab.errors import HalabError

TOPO = topo_mod.load()
ROOT = Path(__file__).resolve().parents[2]
UP = "a Vagrant lab of this checkout is up (every VM running)"
NOT_UP = "no Vagrant lab of this checkout is up: the embedded netns lab"
DRIVER_ENV = "HALAB_VM_DRIVER"


class Probe:
    """Is this checkout's Vagrant lab up? (counts how often it was asked)"""

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.calls = 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.answer


# the choice ----------------------------------------------------------------------


@pytest.mark.parametrize(("up", "kind", "why"), [(True, "vagrant", UP), (False, "netns", NOT_UP)])
def test_nothing_given_tests_the_vagrant_lab_if_it_is_up(up: bool, kind: str, why: str) -> None:
    assert choose_lab(None, None, Probe(up)) == (kind, why)
    assert choose_lab(None, "", Probe(up)) == (kind, why)  # an empty $HALAB_LAB is unset


@pytest.mark.parametrize(("option", "env", "chosen"), [
    ("netns", None, ("netns", "--lab netns given")),  # forced, with a Vagrant lab up
    ("ssh", None, ("ssh", "--lab ssh given")),
    (None, "ssh", ("ssh", "HALAB_LAB=ssh")),
    (None, "netns", ("netns", "HALAB_LAB=netns")),
    ("vagrant", "netns", ("vagrant", "--lab vagrant given")),  # the option beats the env
    ("netns", "vagrant", ("netns", "--lab netns given")),
])
def test_a_lab_named_is_obeyed_without_asking(option: str | None, env: str | None,
                                              chosen: tuple[str, str]) -> None:
    up = Probe(True)
    assert choose_lab(option, env, up) == chosen
    assert up.calls == 0


def test_halab_lab_naming_no_backend_is_refused() -> None:
    with pytest.raises(HalabError, match="HALAB_LAB='kvm': must be one of netns, vagrant, ssh"):
        choose_lab(None, "kvm", Probe(True))


# is_up: cheap, starts nothing, never raises ---------------------------------------


@pytest.fixture
def no_commands(monkeypatch: pytest.MonkeyPatch) -> list[Sequence[str]]:
    """Every command halab would run for libvirt fails as a missing program does (and
    none reaches the machine's libvirt): the commands tried are listed."""
    tried: list[Sequence[str]] = []

    def missing(argv: Sequence[str], **_: Any) -> Any:
        tried.append(argv)
        raise FileNotFoundError(2, "No such file or directory", argv[0])

    monkeypatch.setattr(subprocess, "run", missing)
    monkeypatch.setenv(vmhost.MODE_ENV, "system")  # libvirt "available": asked at once
    monkeypatch.delenv(DRIVER_ENV, raising=False)
    return tried


def record_vms(root: Path, hosts: Sequence[str]) -> list[str]:
    """VMs as Vagrant records them in the checkout (.vagrant/machines/NAME/libvirt/id)."""
    ids = []
    for i, h in enumerate(hosts):
        d = root / ".vagrant" / "machines" / h / "libvirt"
        d.mkdir(parents=True)
        ids.append(f"00000000-0000-0000-0000-00000000000{i}")
        (d / "id").write_text(ids[-1] + "\n")
    return ids


def test_no_vagrant_dir_is_not_up_and_asks_nobody(tmp_path: Path,
                                                  no_commands: list[Sequence[str]]) -> None:
    assert vagrant.VagrantBackend(TOPO, root=tmp_path).is_up() is False
    record_vms(tmp_path, list(TOPO.hosts)[:-1])  # one host never made
    assert vagrant.VagrantBackend(TOPO, root=tmp_path).is_up() is False
    assert no_commands == []


def test_no_virsh_is_not_up(tmp_path: Path, no_commands: list[Sequence[str]]) -> None:
    record_vms(tmp_path, list(TOPO.hosts))
    assert vagrant.VagrantBackend(TOPO, root=tmp_path).is_up() is False
    assert [argv[0] for argv in no_commands] == ["virsh"]


@pytest.mark.parametrize("error", [subprocess.TimeoutExpired(["virsh"], 15),
                                   PermissionError(13, "Permission denied")])
def test_libvirt_that_does_not_answer_is_not_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                no_commands: list[Sequence[str]],
                                                error: Exception) -> None:
    record_vms(tmp_path, list(TOPO.hosts))

    def fails(argv: Sequence[str], **_: Any) -> Any:
        raise error

    monkeypatch.setattr(subprocess, "run", fails)
    assert vagrant.VagrantBackend(TOPO, root=tmp_path).is_up() is False


@pytest.mark.parametrize("running", [5, 4])
def test_up_means_every_hosts_vm_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         no_commands: list[Sequence[str]], running: int) -> None:
    ids = record_vms(tmp_path, list(TOPO.hosts))
    listed = "".join(f"{i}\n" for i in [*ids[:running], "ffffffff-other-vm"])

    def virsh(argv: Sequence[str], **_: Any) -> subprocess.CompletedProcess[bytes]:
        assert list(argv) == ["virsh", "list", "--uuid"]
        return subprocess.CompletedProcess(argv, 0, listed.encode(), b"")

    monkeypatch.setattr(subprocess, "run", virsh)
    assert vagrant.VagrantBackend(TOPO, root=tmp_path).is_up() is (running == len(ids))
    # a VM that a power-off turned off may be off (halab fault power-on, heal, watch go on)
    off = list(TOPO.hosts)[running:]
    lab = vagrant.VagrantBackend(TOPO, root=tmp_path)
    for h in off[1:]:
        lab._set_power(h, "off")
    if off and running:
        assert vagrant.VagrantBackend(TOPO, root=tmp_path).is_up() is False
    for h in off[:1]:
        lab._set_power(h, "off")
    assert vagrant.VagrantBackend(TOPO, root=tmp_path).is_up() is True


def test_no_vagrantfile_is_no_vagrant_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          no_commands: list[Sequence[str]]) -> None:
    monkeypatch.delenv("HALAB_VAGRANT_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert vagrant_lab_up(TOPO) is False
    monkeypatch.setenv("HALAB_VAGRANT_DIR", str(tmp_path))  # a checkout, nothing up
    assert vagrant_lab_up(TOPO) is False
    assert no_commands == []


# the pace: the driver the lab was brought up with -----------------------------------


def test_the_recorded_driver_sets_the_pace_unless_the_environment_says(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        no_commands: list[Sequence[str]]) -> None:
    lab = vagrant.VagrantBackend(TOPO, root=tmp_path)
    assert (lab.driver, lab.slowness) == ("kvm", 1.0)  # nothing recorded, nothing said
    lab.control_dir.mkdir(parents=True)
    (lab.control_dir / "driver").write_text("qemu\n")
    lab = vagrant.VagrantBackend(TOPO, root=tmp_path)
    assert (lab.driver, lab.slowness) == ("qemu", 5.0)
    monkeypatch.setenv(DRIVER_ENV, "kvm")
    lab = vagrant.VagrantBackend(TOPO, root=tmp_path)
    assert (lab.driver, lab.slowness) == ("kvm", 1.0)


def test_provisioning_records_the_driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         no_commands: list[Sequence[str]]) -> None:
    """A plain `HALAB_VM_DRIVER=qemu vagrant up`: its trigger provisions each VM, and a
    later run without the variable keeps the pace."""
    monkeypatch.setattr(ssh_backend.SshBackend, "prepare", lambda self, hosts: None)
    monkeypatch.setenv(DRIVER_ENV, "qemu")
    vagrant.VagrantBackend(TOPO, root=tmp_path).prepare(["dir0"])
    monkeypatch.delenv(DRIVER_ENV)
    assert vagrant.VagrantBackend(TOPO, root=tmp_path).slowness == 5.0


def test_up_records_the_driver_and_down_forgets_it(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   no_commands: list[Sequence[str]]) -> None:
    monkeypatch.setattr(vmhost, "start", lambda driver: None)
    monkeypatch.setenv(DRIVER_ENV, "qemu")
    lab = vagrant.VagrantBackend(TOPO, root=tmp_path)
    for step in ("_register_box", "_wheelhouse", "vagrant"):
        monkeypatch.setattr(lab, step, lambda *args, **kw: None)
    lab.up()
    monkeypatch.delenv(DRIVER_ENV)
    lab = vagrant.VagrantBackend(TOPO, root=tmp_path)
    assert lab.driver == "qemu"
    lab.down()  # (no VMs recorded: nothing to destroy)
    assert vagrant.VagrantBackend(TOPO, root=tmp_path).driver == "kvm"
    assert no_commands == []


def test_another_checkouts_vms_in_halabs_libvirtd_stop_up_and_outlive_down(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        no_commands: list[Sequence[str]]) -> None:
    """Two checkouts share halab's libvirtd and the topology's networks: a second `up`
    would take the first lab's networks and replace the box its disks are made from (the
    CI of 2026-12-04, on a clone also named main). It refuses, naming their VMs, before
    it touches anything; `down` ends its own VMs, never the networks and daemons theirs
    still use."""
    ids = record_vms(tmp_path, list(TOPO.hosts))
    theirs = "ffffffff-0000-0000-0000-000000000001"
    names = {ids[0]: "mine_client", theirs: "main_dir0"}
    tried: list[list[str]] = []

    def virsh(argv: Sequence[str], **_: Any) -> subprocess.CompletedProcess[bytes]:
        tried.append(list(argv))
        args = list(argv)[list(argv).index("virsh") + 1:] if "virsh" in argv else []
        if args == ["list", "--all", "--uuid"]:
            return subprocess.CompletedProcess(argv, 0, "\n".join(names).encode(), b"")
        if args[:1] == ["domname"]:
            return subprocess.CompletedProcess(argv, 0, names[args[1]].encode(), b"")
        return subprocess.CompletedProcess(argv, 0, b"", b"")

    monkeypatch.setattr(subprocess, "run", virsh)
    monkeypatch.setenv(vmhost.MODE_ENV, "netns")
    monkeypatch.setattr(vmhost, "available", lambda: True)
    monkeypatch.setattr(vmhost, "start", lambda driver: None)
    stopped: list[bool] = []
    monkeypatch.setattr(vmhost, "stop", lambda: stopped.append(True))
    lab = vagrant.VagrantBackend(TOPO, root=tmp_path)
    monkeypatch.setattr(lab, "vagrant", lambda *args, **_: tried.append(["vagrant", *args]))
    assert lab.others() == ["main_dir0"]
    with pytest.raises(HalabError, match="did not make: main_dir0; another checkout"):
        lab.up()
    with pytest.raises(HalabError, match="did not make: main_dir0"):
        lab.vagrant_interactive(["up", "--parallel"])  # (`halab vagrant -- up`: CI's)
    assert not [a for a in tried if "vagrant" in a or "vol-delete" in a]
    tried.clear()
    lab.down()
    assert ["vagrant", "destroy", "-f"] in tried  # its own VMs go
    assert not [a for a in tried if "net-destroy" in a] and not stopped
    del names[theirs]  # theirs gone: down ends it all
    lab.down()
    assert stopped == [True]
    monkeypatch.setenv(vmhost.MODE_ENV, "system")  # the machine's libvirtd: others' VMs
    assert lab.others() == []


# without root ------------------------------------------------------------------------


def test_netns_without_root_is_refused_in_one_line_naming_both_ways() -> None:
    line = root_refusal("netns", 1000)
    assert line is not None and "\n" not in line
    assert "needs root" in line
    assert "sudo .venv/bin/tox -e integration" in line
    assert "vagrant up, then tox -e integration again" in line


@pytest.mark.parametrize(("kind", "euid"), [("netns", 0), ("vagrant", 1000), ("ssh", 1000)])
def test_root_or_another_lab_is_not_refused(kind: str, euid: int) -> None:
    assert root_refusal(kind, euid) is None


# the suite says which lab it tests, first and last ------------------------------------


def run_suite(tmp_path: Path, *args: str, euid: int | None = None) -> tuple[int, list[str]]:
    """`pytest tests/integration/test_lab_web.py ARGS` against a checkout with no Vagrant
    lab, in a process of its own (``euid``: the user id it believes it runs as)."""
    env = {k: v for k, v in os.environ.items() if k != "HALAB_LAB"}
    env.update(HALAB_VAGRANT_DIR=str(tmp_path), HALAB_VMHOST="system")
    pretend = "" if euid is None else f"os.geteuid = lambda: {euid}; "
    main = (f"import os, sys; {pretend}import pytest; "
            "sys.exit(pytest.main(sys.argv[1:]))")
    out = subprocess.run([sys.executable, "-c", main, "tests/integration/test_lab_web.py",
                          "-p", "no:cacheprovider", *args],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    return out.returncode, (out.stdout + out.stderr).splitlines()


@pytest.mark.parametrize(("args", "line"), [
    ((), f"halab lab: netns — {NOT_UP}"),
    (("--lab", "ssh"), "halab lab: ssh — --lab ssh given"),
], ids=["chosen", "given"])
def test_the_session_names_its_lab_in_its_header_and_summary(
        tmp_path: Path, args: tuple[str, ...], line: str) -> None:
    rc, out = run_suite(tmp_path, "--collect-only", *args)  # the lab chosen, nothing run
    assert rc == 0, "\n".join(out)
    assert line in out[:5]
    summary = out.index(next(x for x in out if "halab: what was measured" in x))
    assert next(x for x in out[summary + 1:] if x) == line  # also with nothing measured


def test_a_netns_run_without_root_stops_at_once_in_one_line(tmp_path: Path) -> None:
    rc, out = run_suite(tmp_path, "--setup-plan", euid=1000)  # (never builds a lab)
    assert rc == pytest.ExitCode.USAGE_ERROR, "\n".join(out)
    said = [x for x in out if "needs root" in x]
    refusal = root_refusal("netns", 1000)
    assert refusal is not None and len(said) == 1 and refusal in said[0]


def test_a_run_without_root_that_selects_none_of_the_suite_is_let_through(
        tmp_path: Path) -> None:
    """(`pytest` of the whole tree as a user, unit tests selected: no lab is needed)"""
    rc, out = run_suite(tmp_path, "-k", "no_such_test", euid=1000)
    assert rc == pytest.ExitCode.NO_TESTS_COLLECTED, "\n".join(out)
    assert not [x for x in out if "needs root" in x]


@pytest.mark.parametrize(("state", "started"), [("running", False), ("shut off", True)])
def test_power_on_starts_only_a_vm_that_is_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               no_commands: list[Sequence[str]], state: str,
                                               started: bool) -> None:
    """Healing a power loss that a killed run noted but never carried out: the VM runs,
    and `virsh start` would fail (every test of the next run errored on it)."""
    (dom,) = record_vms(tmp_path, ["dir0"])
    calls: list[list[str]] = []

    def virsh(argv: Sequence[str], **_: Any) -> subprocess.CompletedProcess[bytes]:
        calls.append(list(argv))
        out = f"{state}\n" if argv[1] == "domstate" else ""
        return subprocess.CompletedProcess(argv, 0, out.encode(), b"")

    monkeypatch.setattr(subprocess, "run", virsh)
    vms = vagrant.VagrantBackend(TOPO, root=tmp_path)
    booted = Result(["systemctl", "is-system-running"], 0, b"running\n")
    monkeypatch.setattr(vms, "run", lambda *a, **k: booted)
    vms.power_on("dir0")
    assert [c[1:] for c in calls if c[0] == "virsh"] == [["domstate", dom]] + (
        [["start", dom]] if started else [])


def test_a_power_cycle_by_another_process_is_known_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        no_commands: list[Sequence[str]]) -> None:
    """`halab fault power-off` in one process, the suite in another: the suite's next
    command there fails at once, not after SSH's timeouts on a dead connection (150 s
    under TCG, measured 2026-12-04), and once the VM is on again its connection from
    before the cycle is dropped, not used."""
    record_vms(tmp_path, ["dir0"])
    monkeypatch.setattr(subprocess, "run", lambda argv, **_: subprocess.CompletedProcess(
        argv, 0, b"running\n", b""))
    suite, cli = (vagrant.VagrantBackend(TOPO, root=tmp_path) for _ in range(2))
    closed: list[str] = []
    monkeypatch.setattr(suite, "_close", closed.append)
    suite._check_on("dir0", ["true"])  # a connection is made: before any cycle
    cli.power_off("dir0")
    with pytest.raises(HalabError, match="dir0: `true`: the host is powered off"):
        suite._check_on("dir0", ["true"])
    monkeypatch.setattr(cli, "run", lambda *a, **k: Result(["systemctl"], 0, b"running\n"))
    monkeypatch.setattr(cli, "virsh", lambda *a, **k: "shut off")
    cli.power_on("dir0")
    suite._check_on("dir0", ["true"])
    assert closed == ["dir0"]  # the connection from before the cycle
    suite._check_on("dir0", ["true"])
    assert closed == ["dir0"]  # the new one is kept
