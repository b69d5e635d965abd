"""CLI errors: one line, naming what is wrong and how to fix it."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import cli, system
from lab.errors import HalabError


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
