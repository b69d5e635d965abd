"""The Vagrantfile's settings as Vagrant itself reads them (its Ruby library loads the
file, as `vagrant up` does); nothing is started. Skipped where Vagrant is not installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Vagrant's communicator wraps each SSH attempt in a 60 s timeout that it retries
# (communicators/ssh/communicator.rb, `connect`); net-ssh's own banner timeout it does not
VAGRANT_RETRIED_CAP = 60

pytestmark = pytest.mark.skipif(shutil.which("vagrant") is None or shutil.which("ruby") is None,
                                reason="Vagrant is not installed here")


def vagrant_config(driver: str, expr: str) -> str:
    script = ('require "vagrant"; c = Vagrant::Environment.new(cwd: ARGV[0]).vagrantfile.config; '
              f"puts({expr})")
    env = {**os.environ, "HALAB_VM_DRIVER": driver, "HALAB_VMHOST": "netns"}
    res = subprocess.run(["ruby", "-e", script, str(ROOT)], env=env, capture_output=True,
                         text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout.strip()


def test_under_emulation_a_slow_ssh_banner_is_waited_for_then_retried() -> None:
    """The VM stage's `vagrant up` after `vagrant halt` failed once with net-ssh's
    "timeout during server version negotiating": a fresh sshd in a TCG guest, all VMs
    booting at once, answered after Vagrant's default 15 s, an error Vagrant does not
    retry. Under qemu the wait is longer than Vagrant's own retried cap."""
    assert int(vagrant_config("qemu", "c.ssh.connect_timeout")) > VAGRANT_RETRIED_CAP


def test_under_kvm_vagrant_keeps_its_own_ssh_timeout() -> None:
    assert vagrant_config("kvm", "c.ssh.connect_timeout") == "15"
