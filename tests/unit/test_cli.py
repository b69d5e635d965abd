"""The CLI: errors in one line, naming what is wrong and how to fix it; `halab provision`
says its steps, then how far the VMs of the vagrant lab are."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pytest

import provision
from lab import cli, readiness, system
from lab import topology as topo_mod
from lab.backend import Backend
from lab.backends.netns import NetnsBackend
from lab.backends.vagrant import VagrantBackend
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


def provisioning(monkeypatch: pytest.MonkeyPatch, lab: Backend, fails: bool = False) -> None:
    """`halab provision` on ``lab``, whose provisioning says one step per host (or fails)."""
    def fake(backend: Backend, hosts: Sequence[str], progress: Progress) -> None:
        assert backend is lab
        for h in hosts:
            progress(h, "files written (0.1 s)")
        if fails:
            raise HalabError(f"{hosts[0]}: `true` failed")

    monkeypatch.setattr(cli, "load_backend", lambda args: lab)
    monkeypatch.setattr(provision, "provision", fake)


def vms(root: Path) -> VagrantBackend:
    """A vagrant lab whose five VMs Vagrant made (their libvirt ids)."""
    lab = VagrantBackend(topo_mod.load(), root=root)
    for h in lab.topology.hosts:
        (root / ".vagrant" / "machines" / h / "libvirt").mkdir(parents=True)
        (root / ".vagrant" / "machines" / h / "libvirt" / "id").write_text(f"uuid-{h}\n")
    return lab


def test_provision_says_each_step_then_how_far_the_vms_are(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    lab = vms(tmp_path)
    provisioning(monkeypatch, lab)
    assert cli.main(["--lab", "vagrant", "provision", "--host", "web1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "web1: provisioning: files written (0.1 s)"
    assert re.fullmatch(r"web1: provisioned in \d+\.\d s", out[1])
    assert out[2:] == ["halab: 1 of 5 VMs provisioned; waiting for client, dir0, dir1, web0"]


def test_the_last_vm_provisioned_says_the_lab_is_ready_and_what_next(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    lab = vms(tmp_path)
    readiness.mark_provisioned(lab.control_dir, ["client", "dir0", "dir1", "web1"],
                               {h: f"uuid-{h}" for h in lab.topology.hosts})
    provisioning(monkeypatch, lab)
    assert cli.main(["--lab", "vagrant", "provision", "--host", "web0"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "halab: the lab is ready: 5 VMs up and provisioned (client, dir0, dir1, web0, web1). "
        "Next: tox -e integration   (or: .venv/bin/tox -e integration)")


def test_a_vm_whose_provisioning_fails_is_not_counted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    lab = vms(tmp_path)
    domains = {h: f"uuid-{h}" for h in lab.topology.hosts}
    readiness.mark_provisioned(lab.control_dir, lab.topology.hosts, domains)
    provisioning(monkeypatch, lab, fails=True)
    assert cli.main(["--lab", "vagrant", "provision", "--host", "dir1"]) == 2
    out, err = capsys.readouterr()
    assert "halab: error: dir1: `true` failed" in err and "ready" not in out
    assert readiness.mark_provisioned(lab.control_dir, [], domains) == (
        "halab: 4 of 5 VMs provisioned; waiting for dir1")


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
