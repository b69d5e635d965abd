"""``halab --lab vagrant up`` as a progress view: one row per VM with its step and how
long it has been at it, read from Vagrant's output (``==> dir0: Starting domain.``) and
halab's provisioning lines (``dir0: provisioning: files written (0.4 s)``). Vagrant's own
output instead with ``-v``, or where stdout is not a terminal."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rich.console import Group
from rich.table import Table
from rich.text import Text

# "==> dir0: Starting domain.", "    dir0: SSH address: ...", "dir0: provisioning: ..."
LINE = re.compile(r"^(?:==> |\s+)?([A-Za-z0-9][\w-]*): (.+)$")
# details under a step, not a step of their own
DETAIL = re.compile(r"^(-- |SSH (address|username|auth method)|Warning: |flag to force|"
                    r"Machine already provisioned|No version detected|generating a local "
                    r"metadata|See https://)")
READY = re.compile(r"^(provisioned in |provisioned already in this boot)")


@dataclass
class Vm:
    step: str = "waiting for Vagrant"
    since: float = 0.0  # when this step began (monotonic)
    started: float | None = None  # its first line
    ready: bool = False


@dataclass
class UpProgress:
    """Fed Vagrant's output a line at a time; ``view()`` shows it."""

    names: Sequence[str]
    clock: Callable[[], float] = time.monotonic
    vms: dict[str, Vm] = field(default_factory=dict)
    overall: str = ""  # halab's "3 of 5 VMs provisioned; waiting for ..."

    def __post_init__(self) -> None:
        now = self.clock()
        self.t0 = now
        self.vms = {n: Vm(since=now) for n in self.names}

    def feed(self, line: str) -> None:
        text = line.rstrip()
        if text.startswith("halab: "):
            self.overall = text[len("halab: "):]
            return
        m = LINE.match(text)
        if not m or m.group(1) not in self.vms:
            return
        vm, what = self.vms[m.group(1)], m.group(2).strip()
        if DETAIL.match(what):
            return
        now = self.clock()
        if vm.started is None:
            vm.started = now
        if READY.match(what):
            vm.ready, what = True, "ready"
        elif what.startswith("provisioning: "):
            what = "provisioning: " + re.sub(r" \([\d.]+ s\)$", "", what[len("provisioning: "):])
        what = what.rstrip(".")
        if what != vm.step:
            vm.step, vm.since = what, now

    def view(self) -> Group:
        now = self.clock()
        done = sum(vm.ready for vm in self.vms.values())
        t = Table("VM", "step", "for")
        for name, vm in self.vms.items():
            step = Text(vm.step, style="green" if vm.ready else "")  # Vagrant's words: no markup
            t.add_row(name, step, "" if vm.ready else _clock(now - vm.since))
        head = Text(f"vagrant up: {done} of {len(self.vms)} VMs ready "
                    f"({_clock(now - self.t0)})", style="bold")
        return Group(head, t, Text(self.overall))


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"
