"""The example configurations in examples/ pass the programs' own checks, as a user
runs them (the daemons' ``--check``, the ssh lab's inventory loader)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from heartbeat import config as hb_config
from lab import topology
from lab.backends.ssh import inventory

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def check(module: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, "--check", "-f", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)


def test_the_balancer_example_passes_check() -> None:
    res = check("balancer", EXAMPLES / "balancer.toml")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"{EXAMPLES / 'balancer.toml'}: ok: mode http")


def test_the_heartbeat_example_passes_check(tmp_path: Path) -> None:
    """Its key file is a path on a director: here one of the test's own, as --check reads
    it (and refuses one that group or others may read)."""
    key = tmp_path / "authkey"
    key.write_text("a key of at least sixteen bytes\n")
    os.chmod(key, 0o600)
    text = (EXAMPLES / "heartbeat.toml").read_text()
    assert 'key_file = "/etc/halab/authkey"' in text
    cfg = tmp_path / "heartbeat.toml"
    cfg.write_text(text.replace("/etc/halab/authkey", str(key)))
    res = check("heartbeat", cfg)
    assert res.returncode == 0, res.stderr
    assert "ok" in res.stdout


def test_an_empty_hook_list_is_no_hook() -> None:
    cfg = hb_config.load(EXAMPLES / "heartbeat.toml")
    assert cfg.notify == {"master": ("/usr/local/bin/hook",)}


def test_the_inventory_example_covers_the_default_topology() -> None:
    inv = inventory.load(EXAMPLES / "inventory.toml", topology.load(None))
    assert set(inv.hosts) == {"client", "dir0", "dir1", "web0", "web1"}
    assert inv.hosts["web1"].user == "root" and inv.hosts["dir0"].user == "debian"
