"""The CLI: errors in one line, naming what is wrong and how to fix it; `halab provision`
says its steps, then how far the VMs of the vagrant lab are."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

import provision
from halab import cli
from lab import system
from lab import topology as topo_mod
from lab.backend import Backend
from lab.backends.netns import NetnsBackend
from lab.backends.vagrant import VagrantBackend, readiness
from lab.errors import HalabError
from provision import Progress


def test_check_default_topology(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check"]) == 0
    assert "ok: lab halab, 2 networks, 5 hosts" in capsys.readouterr().out


def test_bad_topology_is_one_line_exit_2(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "t.yaml"
    bad.write_text("lab: halab\nnetworks:\n  public: {subnet: 203.0.113.0/24}\n")
    assert cli.main(["--topology", str(bad), "status"]) == 2
    err = capsys.readouterr().err
    assert err == f"halab: error: {bad}: networks.private: missing\n"


def test_missing_program_names_the_apt_command() -> None:
    with pytest.raises(HalabError) as exc:
        system.require_programs(["ip", "nginx", "no-such-program-halab"])
    msg = str(exc.value)
    assert "no-such-program-halab" in msg and "apt-get install -y" in msg
    assert "\n" not in msg


def test_missing_program_maps_to_its_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(system, "which", lambda program: None)
    with pytest.raises(HalabError, match=r"install with `apt-get install -y openssh-server`"):
        system.require_programs(["sshd"])


def test_missing_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(system.os, "geteuid", lambda: 1000)
    with pytest.raises(HalabError, match="needs root"):
        system.require_root("the netns lab")


def test_unknown_host(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["exec", "dir9", "--", "true"]) == 2
    assert "no host 'dir9' in the topology" in capsys.readouterr().err


def provisioning(monkeypatch: pytest.MonkeyPatch, lab: Backend, fails: bool = False
                 ) -> list[str]:
    """`halab provision` on ``lab``, whose provisioning says one step per host (or fails);
    the hosts provisioned, in order."""
    provisioned: list[str] = []

    def fake(backend: Backend, hosts: Sequence[str], progress: Progress) -> None:
        assert backend is lab
        for h in hosts:
            progress(h, "files written (0.1 s)")
        if fails:
            raise HalabError(f"{hosts[0]}: `true` failed")
        provisioned.extend(hosts)

    monkeypatch.setattr(cli, "load_backend", lambda args: lab)
    monkeypatch.setattr(provision, "provision", fake)
    return provisioned


class Booted(VagrantBackend):
    """A vagrant lab whose VMs' boot ids are plain data (``boots``) instead of read over
    SSH; None: the VM does not answer."""

    def __init__(self, topology: topo_mod.Topology, root: Path) -> None:
        super().__init__(topology, root=root)
        self.boots: dict[str, str | None] = {h: f"boot1-{h}" for h in topology.hosts}

    def boot_ids(self, hosts: Sequence[str], timeout: float = 10.0) -> dict[str, str | None]:
        return {h: self.boots[h] for h in hosts}


@pytest.fixture(autouse=True)
def _vagrant_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Vagrant command around this process, the machine's own libvirtd, KVM."""
    for var in (cli.RUN_ENV, "HALAB_VM_DRIVER", "HALAB_VAGRANT_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HALAB_VMHOST", "system")


def vms(root: Path, topology: Path | None = None) -> Booted:
    """A vagrant lab of a checkout at ``root`` whose five VMs Vagrant made (their libvirt
    ids), booted once."""
    (root / "pyproject.toml").write_text("[project]\nname = 'halab'\n")
    (root / "lab").mkdir(exist_ok=True)
    (root / "lab" / "cli.py").write_text("# halab's sources\n")
    lab = Booted(topo_mod.load(topology), root)
    for h in lab.topology.hosts:
        (root / ".vagrant" / "machines" / h / "libvirt").mkdir(parents=True, exist_ok=True)
        (root / ".vagrant" / "machines" / h / "libvirt" / "id").write_text(f"uuid-{h}\n")
    return lab


def said(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().out.splitlines()


READY = ("halab: the lab is ready: 5 VMs up and provisioned (client, dir0, dir1, web0, "
         "web1). Next: tox -e integration   (or: .venv/bin/tox -e integration)")
SKIPPED = "provisioned already in this boot with this build (vagrant provision does it again)"


def test_provision_says_each_step_then_how_far_the_vms_are(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    lab = vms(tmp_path)
    provisioning(monkeypatch, lab)
    assert cli.main(["--lab", "vagrant", "provision", "--host", "web1"]) == 0
    out = said(capsys)
    assert out[0] == "web1: provisioning: files written (0.1 s)"
    assert re.fullmatch(r"web1: provisioned in \d+\.\d s", out[1])
    assert out[2:] == ["halab: 1 of 5 VMs provisioned; waiting for client, dir0, dir1, web0"]
    marker = readiness.marked(lab.control_dir)["web1"]
    assert (marker.domain, marker.boot) == ("uuid-web1", "boot1-web1")


def test_the_last_vm_provisioned_says_the_lab_is_ready_and_what_next(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    lab = vms(tmp_path)
    provisioning(monkeypatch, lab)
    assert cli.main(["--lab", "vagrant", "provision", "--host", "client", "--host", "dir0",
                     "--host", "dir1", "--host", "web1"]) == 0
    assert cli.main(["--lab", "vagrant", "provision", "--host", "web0"]) == 0
    assert said(capsys)[-1] == READY


def test_after_halt_and_up_the_first_vm_provisioned_does_not_say_ready(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    lab = vms(tmp_path)
    provisioned = provisioning(monkeypatch, lab)
    assert cli.main(["--lab", "vagrant", "provision"]) == 0
    lab.boots = {h: f"boot2-{h}" for h in lab.topology.hosts}  # halted, then up
    lab.boots["dir0"] = lab.boots["dir1"] = None  # still booting: no answer yet
    said(capsys)
    assert cli.main(["--lab", "vagrant", "provision", "--host", "web0", "--if-needed"]) == 0
    out = said(capsys)
    assert out[0] == "web0: provisioning: needed (booted since it was provisioned)"
    assert out[-1] == "halab: 1 of 5 VMs provisioned; waiting for client, dir0, dir1, web1"
    assert provisioned[-1:] == ["web0"]


def test_a_vm_whose_provisioning_fails_is_not_counted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    lab = vms(tmp_path)
    provisioning(monkeypatch, lab)
    assert cli.main(["--lab", "vagrant", "provision"]) == 0
    provisioning(monkeypatch, lab, fails=True)
    assert cli.main(["--lab", "vagrant", "provision", "--host", "dir1"]) == 2
    out, err = capsys.readouterr()
    assert "halab: error: dir1: `true` failed" in err and "ready" not in out.splitlines()[-1]
    assert "dir1" not in readiness.marked(lab.control_dir)


def test_up_of_a_provisioned_lab_provisions_nothing_and_says_ready_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`vagrant up` of the lab up already: each VM's trigger (`--if-needed`, in the same
    Vagrant command) skips it; the first says that the lab is ready, the others only
    that they skipped."""
    lab = vms(tmp_path)
    provisioned = provisioning(monkeypatch, lab)
    monkeypatch.setenv(cli.RUN_ENV, "1001")
    assert cli.main(["--lab", "vagrant", "provision"]) == 0
    said(capsys)
    monkeypatch.setenv(cli.RUN_ENV, "1002")  # the next vagrant up
    outs = []
    for h in lab.topology.hosts:
        assert cli.main(["--lab", "vagrant", "provision", "--host", h, "--if-needed"]) == 0
        outs.append(said(capsys))
    assert provisioned == list(lab.topology.hosts)  # the first provisioning alone
    assert outs[0] == [f"client: {SKIPPED}", READY]
    assert outs[1:] == [[f"{h}: {SKIPPED}"] for h in ("dir0", "dir1", "web0", "web1")]


def test_provision_without_if_needed_always_provisions(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    lab = vms(tmp_path)
    provisioned = provisioning(monkeypatch, lab)
    assert cli.main(["--lab", "vagrant", "provision", "--host", "dir0"]) == 0
    assert cli.main(["--lab", "vagrant", "provision", "--host", "dir0"]) == 0
    assert provisioned == ["dir0", "dir0"]


def changed_sources(lab: Booted) -> None:
    (lab.root / "lab" / "cli.py").write_text("# halab's sources, edited\n")


def changed_topology(lab: Booted) -> None:
    lab.topology.source.write_text(lab.topology.source.read_text() + "# a comment\n")


def changed_keys(lab: Booted) -> None:
    (lab.control_dir / "authkey").write_text("another heartbeat key\n")


def rebooted(lab: Booted) -> None:
    lab.boots["dir0"] = "boot2-dir0"


def made_again(lab: Booted) -> None:
    (lab.root / ".vagrant" / "machines" / "dir0" / "libvirt" / "id").write_text("uuid-new\n")


def unmarked(lab: Booted) -> None:
    readiness.unmark(lab.control_dir, ["dir0"])


@pytest.mark.parametrize(("change", "why"), [
    (changed_sources, "the build or its inputs changed"),
    (changed_topology, "the build or its inputs changed"),
    (changed_keys, "the build or its inputs changed"),
    (rebooted, "booted since it was provisioned"),
    (made_again, "a new VM"),
    (unmarked, "no record of it provisioned"),
])
def test_if_needed_provisions_whatever_changed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        change: Callable[[Booted], None], why: str) -> None:
    topology = tmp_path / "topology.yaml"
    topology.write_text(topo_mod.DEFAULT_TOPOLOGY.read_text())
    lab = vms(tmp_path, topology)
    provisioned = provisioning(monkeypatch, lab)
    assert cli.main(["--lab", "vagrant", "provision", "--host", "dir0"]) == 0
    assert cli.main(["--lab", "vagrant", "provision", "--host", "dir0", "--if-needed"]) == 0
    assert provisioned == ["dir0"]  # the same: skipped
    change(lab)
    said(capsys)
    assert cli.main(["--lab", "vagrant", "provision", "--host", "dir0", "--if-needed"]) == 0
    assert said(capsys)[0] == f"dir0: provisioning: needed ({why})"
    assert provisioned == ["dir0", "dir0"]
    assert cli.main(["--lab", "vagrant", "provision", "--host", "dir0", "--if-needed"]) == 0
    assert said(capsys)[0] == f"dir0: {SKIPPED}"  # provisioned as it is now
    assert provisioned == ["dir0", "dir0"]


def test_if_needed_provisions_again_under_another_pace(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The driver (KVM or TCG) sets the timers provisioning renders."""
    lab = vms(tmp_path)
    provisioned = provisioning(monkeypatch, lab)
    assert cli.main(["--lab", "vagrant", "provision", "--host", "web0"]) == 0
    monkeypatch.setenv("HALAB_VM_DRIVER", "qemu")
    tcg = Booted(lab.topology, tmp_path)
    assert tcg.slowness == 5
    provisioned = provisioning(monkeypatch, tcg)
    said(capsys)
    assert cli.main(["--lab", "vagrant", "provision", "--host", "web0", "--if-needed"]) == 0
    assert said(capsys)[0] == "web0: provisioning: needed (the build or its inputs changed)"
    assert provisioned == ["web0"]


def test_other_labs_say_the_steps_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    lab = NetnsBackend(topo_mod.load())
    lab.control_dir = tmp_path
    provisioning(monkeypatch, lab)
    assert cli.main(["provision"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:5] == [f"{h}: provisioning: files written (0.1 s)" for h in lab.topology.hosts]
    assert re.fullmatch(r"client, dir0, dir1, web0, web1: provisioned in \d+\.\d s", out[5])
    assert len(out) == 6 and not (tmp_path / readiness.MARKERS).exists()


@pytest.mark.parametrize("given", ["inf", "nan", "0", "-5", "x", "86401"])
def test_watch_always_ends_by_itself(given: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args(["watch", "--seconds", given])
    assert exc.value.code == 2
    assert f"--seconds: {given}: more than 0 and at most 86400 (a day)" in capsys.readouterr().err


def test_a_timeline_without_its_png_says_which_extra_to_install(
        capsys: pytest.CaptureFixture[str]) -> None:
    from halab.faultcmd import Measured, report
    report(Measured("t", True, 30.0, 10, 0, {}, 211.0, (["dir0"], ["dir0"]), [Path("t.json")]))
    assert "pip install 'halab[plots]'" in capsys.readouterr().out
