"""The vagrant up progress view, fed the output of a real `vagrant up --parallel` of the
VM stage (tests/unit/data/vagrant-up.log: Vagrant's lines and halab's trigger's)."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from halab.upview import UpProgress

LOG = (Path(__file__).parent / "data" / "vagrant-up.log").read_text().splitlines()
NAMES = ["client", "dir0", "dir1", "web0", "web1"]


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def shown(p: UpProgress) -> str:
    out = io.StringIO()
    Console(file=out, width=120).print(p.view())
    return out.getvalue()


def test_each_vm_shows_its_step_then_ready() -> None:
    clock = Clock()
    p = UpProgress(NAMES, clock=clock)
    assert all(vm.step == "waiting for Vagrant" for vm in p.vms.values())
    steps: dict[str, list[str]] = {n: [] for n in NAMES}
    for line in LOG:
        clock.t += 1.0
        p.feed(line)
        for n, vm in p.vms.items():
            if not steps[n] or steps[n][-1] != vm.step:
                steps[n].append(vm.step)
    for n in NAMES:
        assert "Starting domain" in steps[n]
        assert "Waiting for machine to boot. This may take a few minutes" in steps[n]
        assert "Machine booted and ready!" in steps[n]
        assert any(s.startswith("provisioning: ") for s in steps[n])
        assert steps[n][-1] == "ready" and p.vms[n].ready, steps[n]
        # the details under a step are no steps
        assert not [s for s in steps[n] if s.startswith(("SSH ", "-- ", "Warning", "No version"))]
    assert "the lab is ready" in p.overall
    assert "vagrant up: 5 of 5 VMs ready" in shown(p)


def test_a_step_counts_its_own_time() -> None:
    clock = Clock()
    p = UpProgress(["dir0"], clock=clock)
    p.feed("==> dir0: Starting domain.")
    clock.t = 75.0
    p.feed("    dir0: SSH address: 192.168.121.5:22")  # a detail: the step goes on
    clock.t = 130.0
    text = shown(p)
    assert "Starting domain" in text and "2:10" in text
    assert "vagrant up: 0 of 1 VMs ready (2:10)" in text
    p.feed("dir0: provisioning: files written (0.4 s)")
    assert p.vms["dir0"].step == "provisioning: files written"
    assert "0:00" in shown(p)


def test_vagrants_words_are_shown_as_they_are() -> None:
    """Brackets in a line are Vagrant's text, not markup (rich raised on `[/etc/hosts]`)."""
    clock = Clock()
    p = UpProgress(["dir0"], clock=clock)
    p.feed("==> dir0: Copying [/etc/hosts] to the guest...")
    assert "Copying [/etc/hosts] to the guest" in shown(p)
    clock.t = 30.0
    p.feed("==> dir0: Copying [/etc/hosts] to the guest.")  # the same step, its time goes on
    assert "0:30" in shown(p)
