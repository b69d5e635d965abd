"""What `vagrant up` says: each VM's provisioning steps as they are done, then, once,
that the lab is ready (lab/backends/vagrant/readiness.py)."""

from __future__ import annotations

import fcntl
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pytest

from lab import topology as topo_mod
from lab.backend import Result, ServiceSpec, ServiceState
from lab.backends.netns import NetnsBackend
from lab.backends.vagrant import readiness
from lab.errors import HalabError
from provision import host as ph
from provision import provision

TOPO = topo_mod.load()
VMS = {h: readiness.Vm(f"uuid-{h}", f"boot1-{h}") for h in TOPO.hosts}  # as they are now
MARKS = {h: readiness.Marker(f"uuid-{h}", f"boot1-{h}", "inputs-1") for h in TOPO.hosts}


def now(vms: Mapping[str, readiness.Vm]) -> readiness.Look:
    """What the VMs are now: plain data, whatever the markers say."""
    return lambda marked: vms


def mark(tmp_path: Path, hosts: Iterable[str], vms: Mapping[str, readiness.Vm] = VMS,
         run: str | None = None, inputs: str = "inputs-1") -> str:
    """``hosts`` provisioned as the VMs they are in ``vms``, with ``inputs``."""
    done = {h: readiness.Marker(d, b, inputs) for h in hosts
            if (d := vms[h].domain) is not None and (b := vms[h].boot) is not None}
    return readiness.mark_provisioned(tmp_path, done, now(vms), run, inputs)
READY = ("halab: the lab is ready: 5 VMs up and provisioned (client, dir0, dir1, web0, "
         "web1). Next: tox -e integration   (or: .venv/bin/tox -e integration)")


class Recording(NetnsBackend):
    """Provisioning's calls, in order, instead of doing them (nothing on this machine)."""

    def __init__(self, control_dir: Path, calls: list[str]) -> None:
        super().__init__(TOPO)
        self.control_dir = control_dir
        self.calls = calls

    def prepare(self, hosts: Sequence[str]) -> None:
        self.calls.append(f"prepare {' '.join(hosts)}")

    def require_programs(self, programs: Sequence[str], hosts: Sequence[str] | None = None
                         ) -> None:
        self.calls.append("require programs")

    def read_file(self, host: str, path: str) -> bytes:
        raise HalabError(f"{host}: no file {path}")

    def put_files(self, host: str, files: Sequence[tuple[str, bytes | str, int]]) -> None:
        self.calls.append("put files")

    def run(self, host: str, argv: Sequence[str], *, input: bytes | None = None,
            check: bool = True, timeout: float = 30.0) -> Result:
        self.calls.append(f"run {argv[0]}")
        return Result(list(argv), 0)

    def enable_at_boot(self, host: str, unit: str, text: str) -> None:
        self.calls.append(f"boot {unit}")

    def start_service(self, host: str, spec: ServiceSpec) -> ServiceState:
        self.calls.append(f"start {spec.name}")
        return ServiceState(host, spec.name, True)


def said(calls: list[str]) -> ph.Progress:
    """A progress that notes each step among the backend's calls (times left out)."""
    def progress(host: str, step: str) -> None:
        calls.append(f"{host}: " + re.sub(r"\(\d+\.\d s\)", "(T)", step))
    return progress


def test_provisioning_says_each_step_once_it_is_done(tmp_path: Path) -> None:
    calls: list[str] = []
    provision(Recording(tmp_path, calls), ["dir0"], progress=said(calls))
    runs = [c for c in calls if c.startswith("run ")]
    assert calls == [
        "prepare dir0",
        "dir0: halab installed (T)",
        "require programs",
        "dir0: programs present (T)",
        "put files",
        "dir0: files written (T)",
        *runs,
        f"boot {ph.FIREWALL_UNIT}",
        "dir0: kernel settings and firewall applied, configs checked (T)",
        "start sshd", "start balancer", "start heartbeat",
        "dir0: services running: sshd (T), balancer (T), heartbeat (T)",
    ]
    assert runs and runs[0] == "run sysctl"


def test_each_host_says_its_own_steps(tmp_path: Path) -> None:
    calls: list[str] = []
    provision(Recording(tmp_path, calls), ["client", "web0"], progress=said(calls))
    assert [c for c in calls if c.startswith("web0: ")] == [
        "web0: halab installed (T)", "web0: programs present (T)", "web0: files written (T)",
        "web0: kernel settings and firewall applied (T)",
        "web0: services running: sshd (T), nginx (T)"]
    assert "client: services running: sshd (T)" in calls


def test_provisioning_says_nothing_unless_asked(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    provision(Recording(tmp_path, []), ["web1"])
    assert capsys.readouterr() == ("", "")


def test_a_host_waiting_for_its_groups_turn_says_so(tmp_path: Path) -> None:
    """The other director has the turn: dir1 says that it waits, and goes on once the
    turn is over."""
    calls: list[str] = []
    waiting = threading.Event()

    def progress(host: str, step: str) -> None:
        said(calls)(host, step)
        if "waiting" in step:
            waiting.set()

    backend = Recording(tmp_path, calls)
    plan = ph.plan_host(TOPO, TOPO.hosts["dir1"], backend.paths("dir1"), ph.lab_keys(backend))
    dir1 = threading.Thread(target=ph.apply, args=(backend, plan, progress))
    with open(tmp_path / "rolling-director.lock", "a") as turn:  # dir0's
        fcntl.flock(turn, fcntl.LOCK_EX)
        dir1.start()
        said_so = waiting.wait(timeout=10)
        started = [c for c in calls if c.startswith("start ")]
    dir1.join()
    assert said_so and not started
    i = calls.index("dir1: services: waiting for the other director host to finish "
                    "(one at a time)")
    assert calls[i + 1:] == ["start sshd", "start balancer", "start heartbeat",
                             "dir1: services running: sshd (T), balancer (T), heartbeat (T)"]


def test_the_last_vm_provisioned_says_the_lab_is_ready(tmp_path: Path) -> None:
    lines = [mark(tmp_path, [h]) for h in TOPO.hosts]
    assert lines[:2] == ["halab: 1 of 5 VMs provisioned; waiting for dir0, dir1, web0, web1",
                         "halab: 2 of 5 VMs provisioned; waiting for dir1, web0, web1"]
    assert lines[-1] == READY
    assert [line for line in lines if "ready" in line] == [READY]


def test_a_vm_made_again_counts_once_provisioned_again(tmp_path: Path) -> None:
    mark(tmp_path, TOPO.hosts)
    remade = {**VMS, "web1": readiness.Vm("uuid-web1-new", "boot1-web1"),
              "client": readiness.Vm(None, None)}  # client: no VM now
    assert mark(tmp_path, [], remade) == (
        "halab: 3 of 5 VMs provisioned; waiting for client, web1")
    assert mark(tmp_path, ["web1", "client"], remade) == (
        "halab: 4 of 5 VMs provisioned; waiting for client")
    assert mark(tmp_path, ["client"], {**remade, "client": readiness.Vm("c2", "b")}) == READY


def test_after_halt_and_up_old_markers_do_not_make_the_lab_ready(tmp_path: Path) -> None:
    """`vagrant halt`, `vagrant up`: the same VMs (domain ids), booted again. The first VM
    provisioned again does not count the others, provisioned in their previous boot."""
    mark(tmp_path, TOPO.hosts)
    rebooted = {h: readiness.Vm(f"uuid-{h}", f"boot2-{h}") for h in TOPO.hosts}
    assert mark(tmp_path, ["web0"], rebooted) == (
        "halab: 1 of 5 VMs provisioned; waiting for client, dir0, dir1, web1")
    lines = [mark(tmp_path, [h], rebooted) for h in ("client", "web1", "dir1", "dir0")]
    assert lines[-1] == READY and lines.count(READY) == 1


def test_a_vm_of_an_older_build_is_not_ready(tmp_path: Path) -> None:
    """`vagrant provision` after a change, one VM after the other: the first one done
    does not count the others, still as an older build provisioned them."""
    mark(tmp_path, TOPO.hosts)
    assert mark(tmp_path, ["client"], inputs="inputs-2") == (
        "halab: 1 of 5 VMs provisioned; waiting for dir0, dir1, web0, web1")
    lines = [mark(tmp_path, [h], inputs="inputs-2") for h in ("dir0", "dir1", "web0", "web1")]
    assert lines[-1] == READY and lines.count(READY) == 1


def test_a_vm_that_does_not_say_its_boot_is_not_ready(tmp_path: Path) -> None:
    mark(tmp_path, TOPO.hosts)
    silent = {**VMS, "dir1": readiness.Vm("uuid-dir1", None)}  # down, or no SSH answer
    assert mark(tmp_path, [], silent) == "halab: 4 of 5 VMs provisioned; waiting for dir1"


def test_a_marker_of_an_older_halab_counts_as_none(tmp_path: Path) -> None:
    mark(tmp_path, TOPO.hosts)
    (tmp_path / readiness.MARKERS / "web0").write_text("uuid-web0\n")  # the domain id alone
    assert readiness.marked(tmp_path).keys() == set(TOPO.hosts) - {"web0"}
    assert mark(tmp_path, []) == "halab: 4 of 5 VMs provisioned; waiting for web0"


def test_a_vm_being_provisioned_again_is_not_ready_until_it_is(tmp_path: Path) -> None:
    mark(tmp_path, TOPO.hosts)
    readiness.unmark(tmp_path, ["dir0", "web1"])
    assert mark(tmp_path, ["dir0"]) == "halab: 4 of 5 VMs provisioned; waiting for web1"


def test_down_forgets_every_vm(tmp_path: Path) -> None:
    mark(tmp_path, TOPO.hosts)
    readiness.clear(tmp_path)
    assert mark(tmp_path, []).startswith(
        "halab: 0 of 5 VMs provisioned; waiting for client, dir0, dir1, web0, web1")
    readiness.clear(tmp_path)  # nothing to forget: fine


def test_two_vms_that_finish_at_once_say_ready_once(tmp_path: Path) -> None:
    mark(tmp_path, ["dir0", "dir1", "web0"])
    start = threading.Barrier(2)
    lines: list[str] = []

    def finish(host: str) -> None:
        start.wait(timeout=10)
        lines.append(mark(tmp_path, [host]))

    threads = [threading.Thread(target=finish, args=(h,)) for h in ("web1", "client")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(lines) == 2 and lines.count(READY) == 1
    assert {line for line in lines if line != READY} <= {
        "halab: 4 of 5 VMs provisioned; waiting for web1",
        "halab: 4 of 5 VMs provisioned; waiting for client"}


def other_process_can_lock(tmp_path: Path) -> bool:
    with open(tmp_path / readiness.LOCK, "a") as other:  # what another process does
        try:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False


def test_the_mark_and_the_check_are_one_step_under_the_lock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process's marking cannot come between this one's marking and its reading
    of every marker and of the VMs' boot ids (else both would see the lab complete)."""
    seen: list[bool] = []
    real = readiness._marked

    def marked(markers: Path) -> dict[str, readiness.Marker]:
        assert (markers / "web1").exists()  # marked already
        seen.append(other_process_can_lock(tmp_path))
        return real(markers)

    def look(marked: Mapping[str, readiness.Marker]) -> Mapping[str, readiness.Vm]:
        seen.append(other_process_can_lock(tmp_path))
        return VMS

    monkeypatch.setattr(readiness, "_marked", marked)
    readiness.mark_provisioned(tmp_path, {"web1": MARKS["web1"]}, look)
    readiness.status_if_changed(tmp_path, look, None)
    assert seen == [False, False, False, False]


# --if-needed: provisioned already on this VM, in this boot, with this build and inputs

def test_a_host_provisioned_in_this_boot_with_this_build_is_skipped() -> None:
    assert readiness.why_provision(MARKS["dir0"], VMS["dir0"], "inputs-1") is None


@pytest.mark.parametrize(("marker", "vm", "inputs", "why"), [
    (None, VMS["dir0"], "inputs-1", "no record of it provisioned"),
    (MARKS["dir0"], readiness.Vm("uuid-dir0-new", "boot1-dir0"), "inputs-1", "a new VM"),
    (MARKS["dir0"], readiness.Vm(None, None), "inputs-1", "a new VM"),
    (MARKS["dir0"], readiness.Vm("uuid-dir0", "boot2-dir0"), "inputs-1",
     "booted since it was provisioned"),
    (MARKS["dir0"], readiness.Vm("uuid-dir0", None), "inputs-1", "its boot id unknown"),
    (MARKS["dir0"], VMS["dir0"], "inputs-2", "the build or its inputs changed"),
])
def test_anything_else_is_provisioned(marker: readiness.Marker | None, vm: readiness.Vm,
                                      inputs: str, why: str) -> None:
    assert readiness.why_provision(marker, vm, inputs) == why


def test_the_inputs_digest_changes_with_any_part_and_not_with_their_order() -> None:
    parts = {"sources": "abc", "topology": "lab: halab\n", "slowness": "1"}
    digest = readiness.inputs_digest(parts)
    assert readiness.inputs_digest(dict(reversed(parts.items()))) == digest
    for name in parts:
        assert readiness.inputs_digest({**parts, name: parts[name] + "x"}) != digest
    assert readiness.inputs_digest({**parts, "vmhost": "netns"}) != digest


def test_skipped_hosts_say_where_the_lab_stands_once_per_vagrant_command(
        tmp_path: Path) -> None:
    """Every VM of a `vagrant up` skipped: the first says the lab is ready, the others
    nothing; the next `vagrant up` says it again; by hand (no command), always."""
    mark(tmp_path, TOPO.hosts, run="vagrant-1")
    assert [readiness.status_if_changed(tmp_path, now(VMS), "vagrant-2")
            for _ in TOPO.hosts] == [READY, None, None, None, None]
    assert readiness.status_if_changed(tmp_path, now(VMS), "vagrant-3") == READY
    assert readiness.status_if_changed(tmp_path, now(VMS), None) == READY
    assert readiness.status_if_changed(tmp_path, now(VMS), None) == READY


def test_a_skipped_host_says_what_changed_and_never_repeats_a_ready_said(
        tmp_path: Path) -> None:
    mark(tmp_path, ["client", "dir0", "dir1", "web0"], run="up")
    waiting = "halab: 4 of 5 VMs provisioned; waiting for web1"
    assert readiness.status_if_changed(tmp_path, now(VMS), "up") is None  # said already
    readiness.unmark(tmp_path, ["web0"])  # web0's provisioning began
    assert readiness.status_if_changed(tmp_path, now(VMS), "up") == (
        "halab: 3 of 5 VMs provisioned; waiting for web0, web1")
    assert mark(tmp_path, ["web0"], run="up") == waiting
    assert mark(tmp_path, ["web1"], run="up") == READY  # said by the last one provisioned
    assert readiness.status_if_changed(tmp_path, now(VMS), "up") is None
