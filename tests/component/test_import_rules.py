"""The import rules hold, and each of them fails when it is broken: ``lint-imports``
(tox -e lint) run on a copy of the tree with one forbidden import added."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("daemonkit", "balancer", "heartbeat", "lab", "provision", "harness", "halab")
LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports reads the packages of the directory it runs in."""
    return subprocess.run([LINT_IMPORTS, "--no-cache"], cwd=tree, capture_output=True,
                          text=True, timeout=120)


def test_the_tree_keeps_every_rule() -> None:
    res = lint_imports(ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Contracts: 7 kept, 0 broken." in res.stdout


@pytest.mark.parametrize(("module", "line", "rule"), [
    ("balancer/scheduler.py", "import lab.topology",
     "the daemons run on any host with their own config"),
    ("heartbeat/daemon.py", "import harness.poll",
     "the daemons run on any host with their own config"),
    ("heartbeat/daemon.py", "import balancer.http", "the two daemons do not import each other"),
    ("daemonkit/log.py", "import yaml", "daemonkit is the standard library only"),
    ("heartbeat/fsm.py", "import asyncio", "the pure cores"),
    ("balancer/health.py", "import time", "the pure cores"),
    ("balancer/retry.py", "import socket", "the pure cores"),
    ("lab/topology.py", "import rich", "the topology is data and its loader"),
    ("lab/backend.py", "import provision.host", "layers"),
    ("provision/web.py", "import halab.cli", "layers"),
    ("lab/backends/netns/plan.py", "import lab.backends.ssh.inventory",
     "each backend stands on its own"),
], ids=["balancer-lab", "heartbeat-harness", "daemon-daemon", "daemonkit-yaml",
        "fsm-asyncio", "health-clock", "retry-socket", "topology-rich", "backend-provision",
        "provision-cli", "netns-ssh"])
def test_a_broken_rule_fails(tmp_path: Path, module: str, line: str, rule: str) -> None:
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with (tmp_path / module).open("a") as f:
        f.write(f"\n{line}  # broken on purpose\n")
    res = lint_imports(tmp_path)
    assert res.returncode == 1, res.stdout
    broken = [ln for ln in res.stdout.splitlines() if " BROKEN" in f" {ln}"]
    assert len(broken) == 1, res.stdout  # this rule and no other
    assert res.stdout.count(f"{rule}") >= 1 and "Contracts: 6 kept, 1 broken." in res.stdout
