"""What `vagrant up` says: each VM's provisioning steps as they are done, then, once,
that the lab is ready (lab/readiness.py)."""

from __future__ import annotations

import fcntl
import re
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from lab import readiness
from lab import topology as topo_mod
from lab.backend import Result, ServiceSpec, ServiceState
from lab.backends.netns import NetnsBackend
from lab.errors import HalabError
from provision import host as ph
from provision import provision

TOPO = topo_mod.load()
DOMAINS: dict[str, str | None] = {h: f"uuid-{h}" for h in TOPO.hosts}
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

    def enable_at_boot(self, host: str, unit: str) -> None:
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
    lines = [readiness.mark_provisioned(tmp_path, [h], DOMAINS) for h in TOPO.hosts]
    assert lines[:2] == ["halab: 1 of 5 VMs provisioned; waiting for dir0, dir1, web0, web1",
                         "halab: 2 of 5 VMs provisioned; waiting for dir1, web0, web1"]
    assert lines[-1] == READY
    assert [line for line in lines if "ready" in line] == [READY]


def test_a_vm_made_again_counts_once_provisioned_again(tmp_path: Path) -> None:
    readiness.mark_provisioned(tmp_path, TOPO.hosts, DOMAINS)
    remade = {**DOMAINS, "web1": "uuid-web1-new", "client": None}  # client: no VM now
    assert readiness.mark_provisioned(tmp_path, [], remade) == (
        "halab: 3 of 5 VMs provisioned; waiting for client, web1")
    assert readiness.mark_provisioned(tmp_path, ["web1", "client"], remade) == (
        "halab: 4 of 5 VMs provisioned; waiting for client")
    assert readiness.mark_provisioned(tmp_path, ["client"], {**remade, "client": "c2"}) == READY


def test_a_vm_being_provisioned_again_is_not_ready_until_it_is(tmp_path: Path) -> None:
    readiness.mark_provisioned(tmp_path, TOPO.hosts, DOMAINS)
    readiness.unmark(tmp_path, ["dir0", "web1"])
    assert readiness.mark_provisioned(tmp_path, ["dir0"], DOMAINS) == (
        "halab: 4 of 5 VMs provisioned; waiting for web1")


def test_down_forgets_every_vm(tmp_path: Path) -> None:
    readiness.mark_provisioned(tmp_path, TOPO.hosts, DOMAINS)
    readiness.clear(tmp_path)
    assert readiness.mark_provisioned(tmp_path, [], DOMAINS).startswith(
        "halab: 0 of 5 VMs provisioned; waiting for client, dir0, dir1, web0, web1")
    readiness.clear(tmp_path)  # nothing to forget: fine


def test_two_vms_that_finish_at_once_say_ready_once(tmp_path: Path) -> None:
    readiness.mark_provisioned(tmp_path, ["dir0", "dir1", "web0"], DOMAINS)
    start = threading.Barrier(2)
    lines: list[str] = []

    def finish(host: str) -> None:
        start.wait(timeout=10)
        lines.append(readiness.mark_provisioned(tmp_path, [host], DOMAINS))

    threads = [threading.Thread(target=finish, args=(h,)) for h in ("web1", "client")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(lines) == 2 and lines.count(READY) == 1
    assert {line for line in lines if line != READY} <= {
        "halab: 4 of 5 VMs provisioned; waiting for web1",
        "halab: 4 of 5 VMs provisioned; waiting for client"}


def test_the_mark_and_the_check_are_one_step_under_the_lock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process's marking cannot come between this one's marking and its reading
    of every marker (else both would see the lab complete)."""
    seen: list[bool] = []
    real = readiness._marked

    def marked(markers: Path) -> dict[str, str]:
        assert (markers / "web1").exists()  # marked already
        with open(tmp_path / readiness.LOCK, "a") as other:  # what another process does
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen.append(False)
            except BlockingIOError:
                seen.append(True)
        return real(markers)

    monkeypatch.setattr(readiness, "_marked", marked)
    readiness.mark_provisioned(tmp_path, ["web1"], DOMAINS)
    assert seen == [True]
