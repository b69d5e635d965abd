"""The ``halab`` command as a user types it (a process of its own): its options before
or after the command's name, and ``--version``."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

TOPOLOGY = Path(__file__).resolve().parents[2] / "lab" / "topology.yaml"


def halab(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "halab", *argv], capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.mark.parametrize("argv", [
    ("--topology", "{bad}", "status"),
    ("status", "--topology", "{bad}"),
    ("status", "--json", "--topology", "{bad}"),
    ("--lab", "netns", "logs", "--topology", "{bad}", "dir0"),
], ids=["before", "after", "after-own-option", "both-around"])
def test_global_options_go_before_or_after_the_command(tmp_path: Path,
                                                       argv: tuple[str, ...]) -> None:
    bad = tmp_path / "t.yaml"
    bad.write_text("lab: halab\nnetworks:\n  public: {subnet: 203.0.113.0/24}\n")
    res = halab(*(a.format(bad=bad) for a in argv))
    assert (res.returncode, res.stdout) == (2, "")
    assert res.stderr == f"halab: error: {bad}: networks.private: missing\n"


def test_an_option_after_the_command_overrides_the_one_before(tmp_path: Path) -> None:
    bad = tmp_path / "t.yaml"
    bad.write_text("lab: [")
    res = halab("--topology", str(bad), "check", "--topology", str(TOPOLOGY))
    assert res.returncode == 0, res.stderr
    res = halab("--lab", "ssh", "status", "--lab", "bogus")
    assert res.returncode == 2 and "argument --lab: invalid choice: 'bogus'" in res.stderr


def test_a_command_s_own_argv_keeps_options_of_the_same_name() -> None:
    from halab.cli import build_parser

    args = build_parser().parse_args(["exec", "dir0", "--", "echo", "--lab", "ssh"])
    assert (args.lab, args.argv) == ("netns", ["echo", "--lab", "ssh"])


def test_version() -> None:
    res = halab("--version")
    assert (res.returncode, res.stdout) == (0, f"halab {version('halab')}\n")


def test_check_refuses_a_lab_of_one_director(tmp_path: Path) -> None:
    """It used to pass ``halab check``, then fail in ``up`` (no peer for the heartbeat)."""
    text = TOPOLOGY.read_text()
    start = text.index("  dir1:\n")
    one = tmp_path / "one.yaml"
    one.write_text(text[:start] + text[text.index("  web0:\n"):])
    res = halab("check", str(one))
    assert (res.returncode, res.stdout) == (2, "")
    assert res.stderr == (f"halab: error: {one}: hosts: needs two hosts with role director, "
                          "the VIP moves between them (has 1: dir0)\n")


def test_the_ssh_lab_without_fabric_says_which_extra_to_install(tmp_path: Path) -> None:
    """One line, not a traceback; the hosts (on loopback, closed ports) are not tried."""
    inv = tmp_path / "inventory.toml"
    inv.write_text("".join(f'[hosts.{h}]\naddress = "127.0.0.1"\nport = 1\n'
                           for h in ("client", "dir0", "dir1", "web0", "web1")))
    res = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['fabric'] = None; "
         "from halab.cli import main; sys.exit(main(sys.argv[1:]))",
         "status", "--lab", "ssh", "--inventory", str(inv)],
        capture_output=True, text=True, timeout=60, check=False)
    assert (res.returncode, res.stdout) == (2, "")
    assert res.stderr == ("halab: error: the ssh lab needs fabric, which is not installed: "
                          "pip install 'halab[ssh]' (./bootstrap deps has it)\n")
