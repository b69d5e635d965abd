"""Whether the Vagrant lab is ready: every VM up and provisioned, said once; and whether
a VM needs provisioning at all.

Vagrant provisions each VM as it comes up, from a process of its own (the
Vagrantfile's trigger runs ``halab --lab vagrant provision --host NAME``, several at
once under ``vagrant up --parallel``). Each run notes on the controller, in
``.vagrant/halab/provisioned/NAME``, which VM it provisioned, in which boot, from
what: its marker (``Marker``: the libvirt domain id, the kernel's boot id, a digest of
the build and inputs), written once the provisioning succeeded, removed as the next
provisioning of that host begins (a host being provisioned is not ready) and by
``halab --lab vagrant down``. A host counts as ready only while its marker names the
VM it is now and the boot it is in: a VM made again has another domain id, and a VM
that booted again (``vagrant halt`` then ``vagrant up``) another boot id, so an old
marker never makes the lab look ready before its VM has been provisioned again.

When a run ends, it marks its host and, under one lock, reads every marker and asks
the VMs the markers name for their boot ids (``Look``: one bounded SSH command each,
at once; a VM that does not answer is not ready). So of two VMs that finish at once
only the second sees the lab complete: the lab is said to be ready once.

After ``vagrant up`` the trigger runs with ``--if-needed`` (as Vagrant's own rule: ``up``
of a running, provisioned machine does not provision it again): a host whose marker
names this VM, this boot and this build and inputs (``why_provision``) is skipped.
A skipped host says where the lab stands only when that changed within the same
Vagrant command (``status_if_changed``): when every VM of a ``vagrant up`` skips, the
first says the lab is ready and the others say nothing more.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

MARKERS = "provisioned"  # in the control directory: one file per host, its Marker
LOCK = "provisioned.lock"
SAID = "provisioned.said"  # the last status line said, and in which Vagrant command
NEXT = "tox -e integration   (or: .venv/bin/tox -e integration)"


@dataclass(frozen=True)
class Vm:
    """A host's VM as it is now: its libvirt domain id and its kernel's boot id
    (``/proc/sys/kernel/random/boot_id``); None where there is no VM or it did not say."""

    domain: str | None
    boot: str | None


@dataclass(frozen=True)
class Marker:
    """What a host was provisioned as: on this VM (domain id), in this boot (boot id),
    with this build and these inputs (``inputs_digest``)."""

    domain: str
    boot: str
    inputs: str


# What every host's VM is now, given the markers (so only the VMs a marker names need
# to be asked for their boot id); never raises
Look = Callable[[Mapping[str, Marker]], Mapping[str, Vm]]


def inputs_digest(parts: Mapping[str, str]) -> str:
    """One digest of what provisioning renders from (the sources' digest, the topology's
    text, the lab's pace, ...), whatever order the parts come in."""
    h = hashlib.sha256()
    for name in sorted(parts):
        h.update(name.encode() + b"\0" + parts[name].encode() + b"\0")
    return h.hexdigest()


def why_provision(marker: Marker | None, now: Vm, inputs: str) -> str | None:
    """Why a host must be provisioned (``--if-needed``), or None: its marker says it was
    provisioned on the VM it is now, in the boot it is in, with these inputs."""
    if marker is None:
        return "no record of it provisioned"
    if now.domain is None or marker.domain != now.domain:
        return "a new VM"
    if now.boot is None:
        return "its boot id unknown"
    if marker.boot != now.boot:
        return "booted since it was provisioned"
    if marker.inputs != inputs:
        return "the build or its inputs changed"
    return None


def ready(vms: Mapping[str, Vm], marked: Mapping[str, Marker],
          inputs: str | None = None) -> list[str]:
    """The hosts provisioned as the VM they are now, in the boot they are in (and, given
    ``inputs``, with these: a VM of an older build is not ready while another VM's
    provisioning of the new one has just ended)."""
    found = []
    for h, vm in vms.items():
        m = marked.get(h)
        if (m is not None and vm.domain is not None and vm.boot is not None
                and (m.domain, m.boot) == (vm.domain, vm.boot)
                and inputs in (None, m.inputs)):
            found.append(h)
    return found


def status_line(vms: Mapping[str, Vm], marked: Mapping[str, Marker],
                inputs: str | None = None) -> str:
    """The lab is ready (and what to type next), or how many VMs are and which not yet.
    ``vms``: every host of the topology, in its order; ``inputs``: see ``ready``."""
    done = ready(vms, marked, inputs)
    waiting = [h for h in vms if h not in done]
    if not waiting:
        return (f"halab: the lab is ready: {len(done)} VMs up and provisioned "
                f"({', '.join(done)}). Next: {NEXT}")
    return (f"halab: {len(done)} of {len(vms)} VMs provisioned; "
            f"waiting for {', '.join(waiting)}")


def unmark(control_dir: Path, hosts: Iterable[str]) -> None:
    """``hosts`` are being provisioned: not ready until that succeeds."""
    for h in hosts:
        (control_dir / MARKERS / h).unlink(missing_ok=True)


def marked(control_dir: Path) -> dict[str, Marker]:
    """Every host's marker (a file that is not one, as an older halab's, counts as none)."""
    markers = control_dir / MARKERS
    return _marked(markers) if markers.is_dir() else {}


def mark_provisioned(control_dir: Path, done: Mapping[str, Marker], look: Look,
                     run: str | None = None, inputs: str | None = None) -> str:
    """Note the hosts of ``done`` provisioned (each as its marker says) and say where the
    lab stands (``status_line``; ``look``: what the VMs are now), one process at a time.
    ``run``: the Vagrant command this is part of (see ``status_if_changed``)."""
    with _locked(control_dir) as markers:
        for h, m in done.items():
            tmp = markers / f".{h}.tmp"
            tmp.write_text(json.dumps(asdict(m)) + "\n")
            tmp.replace(markers / h)
        return _said(control_dir, run, _status(markers, look, inputs))


def status_if_changed(control_dir: Path, look: Look, run: str | None,
                      inputs: str | None = None) -> str | None:
    """Where the lab stands, for a host that was not provisioned (it was already): None
    when that line was the last one said in the same Vagrant command ``run`` (so the
    VMs of a ``vagrant up`` that all skip say the lab is ready once); without a ``run``
    (halab run by hand), always the line."""
    with _locked(control_dir) as markers:
        line = _status(markers, look, inputs)
        last = _last_said(control_dir)
        if run is not None and last == {"run": run, "line": line}:
            return None
        return _said(control_dir, run, line)


def clear(control_dir: Path) -> None:
    """Forget every marker (the VMs are gone)."""
    shutil.rmtree(control_dir / MARKERS, ignore_errors=True)
    (control_dir / SAID).unlink(missing_ok=True)


@contextmanager
def _locked(control_dir: Path) -> Iterator[Path]:
    """The markers' directory, this process alone reading and writing markers."""
    markers = control_dir / MARKERS
    markers.mkdir(parents=True, exist_ok=True)
    with open(control_dir / LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield markers


def _status(markers: Path, look: Look, inputs: str | None) -> str:
    found = _marked(markers)
    return status_line(look(found), found, inputs)


def _marked(markers: Path) -> dict[str, Marker]:
    """host -> what it was provisioned as (files that are no marker are left out)."""
    found = {}
    for f in markers.iterdir():
        if not f.is_file() or f.name.startswith("."):
            continue
        try:
            data = json.loads(f.read_text())
            found[f.name] = Marker(str(data["domain"]), str(data["boot"]), str(data["inputs"]))
        except (OSError, ValueError, TypeError, KeyError):
            continue  # (an older halab's marker: the domain id alone)
    return found


def _last_said(control_dir: Path) -> object:
    try:
        return json.loads((control_dir / SAID).read_text())
    except (OSError, ValueError):
        return None


def _said(control_dir: Path, run: str | None, line: str) -> str:
    (control_dir / SAID).write_text(json.dumps({"run": run, "line": line}) + "\n")
    return line
