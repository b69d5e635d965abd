"""Whether the Vagrant lab is ready: every VM up and provisioned, said once.

Vagrant provisions each VM as it comes up, from a process of its own (the
Vagrantfile's trigger runs ``halab --lab vagrant provision --host NAME``, several at
once under ``vagrant up --parallel``). Each run notes on the controller, in
``.vagrant/halab/provisioned/NAME``, the libvirt domain id of the VM it provisioned:
its marker, removed as the next provisioning of that host begins (a host being
provisioned is not ready) and by ``halab --lab vagrant down``. A VM made again has
another id: it does not count until it is provisioned again.

When a run ends, it marks its host and reads every marker under one lock, so of
two VMs that finish at once only the second sees the lab complete: the lab is said
to be ready once.
"""

from __future__ import annotations

import fcntl
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

MARKERS = "provisioned"  # in the control directory: one file per host, its domain id
LOCK = "provisioned.lock"
NEXT = "tox -e integration   (or: .venv/bin/tox -e integration)"


def unmark(control_dir: Path, hosts: Iterable[str]) -> None:
    """``hosts`` are being provisioned: not ready until that succeeds."""
    for h in hosts:
        (control_dir / MARKERS / h).unlink(missing_ok=True)


def mark_provisioned(control_dir: Path, hosts: Iterable[str],
                     domains: Mapping[str, str | None]) -> str:
    """Note ``hosts`` provisioned, each on its VM of ``domains`` (every host of the
    topology, in its order: its libvirt domain id, None where there is no VM), and
    say where the lab stands (``status_line``); one process at a time."""
    markers = control_dir / MARKERS
    markers.mkdir(parents=True, exist_ok=True)
    with open(control_dir / LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for h in hosts:
            domain = domains.get(h)
            if domain is not None:
                (markers / h).write_text(domain + "\n")
        return status_line(domains, _marked(markers))


def _marked(markers: Path) -> dict[str, str]:
    """host -> the domain id it was provisioned on."""
    return {f.name: f.read_text().strip() for f in markers.iterdir() if f.is_file()}


def status_line(domains: Mapping[str, str | None], marked: Mapping[str, str]) -> str:
    """The lab is ready (and what to type next), or how many VMs are and which not yet:
    a VM counts when it was provisioned as the VM it is now (its domain id)."""
    ready = [h for h, d in domains.items() if d is not None and marked.get(h) == d]
    waiting = [h for h in domains if h not in ready]
    if not waiting:
        return (f"halab: the lab is ready: {len(ready)} VMs up and provisioned "
                f"({', '.join(ready)}). Next: {NEXT}")
    return (f"halab: {len(ready)} of {len(domains)} VMs provisioned; "
            f"waiting for {', '.join(waiting)}")


def clear(control_dir: Path) -> None:
    """Forget every marker (the VMs are gone)."""
    shutil.rmtree(control_dir / MARKERS, ignore_errors=True)
