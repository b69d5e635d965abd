"""The suite's bookkeeping, without a lab: which faults are healed, how an outage is
measured from a client loop's records, the prober's rate."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from harness import faults as faults_mod
from harness.faults import Fault, Faults
from harness.timeline import Timeline
from harness.traffic import ClientLoop
from lab.backend import Backend, Result
from lab.errors import HalabError


@dataclass
class Noted(Fault):
    """A fault that only writes down what happened to it."""

    log: list[str] = field(default_factory=list)
    broken_heal: bool = False
    refused: bool = False  # by its look-ups, before anything was done
    broken_inject: bool = False  # half done

    def _prepare(self, lab: Backend) -> None:
        if self.refused:
            raise HalabError(f"{self.host}: refused")

    def _inject(self, lab: Backend) -> None:
        self.log.append(f"inject {self.host}")
        if self.broken_inject:
            raise HalabError(f"{self.host}: half done")

    def _heal(self, lab: Backend) -> None:
        if self.broken_heal:
            raise HalabError(f"{self.host} cannot be healed")
        self.log.append(f"heal {self.host}")


@pytest.fixture
def lab(tmp_path: Path) -> Any:
    """What Faults needs of a backend here: where the controller keeps notes."""
    return SimpleNamespace(control_dir=tmp_path)


def test_heal_all_heals_what_is_left_newest_first_and_goes_on_after_an_error(
        lab: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(faults_mod, "CATALOGUE", (Noted,))
    log: list[str] = []
    faults = Faults(lab)
    a, b, c = Noted("a", log=log), Noted("b", log=log, broken_heal=True), Noted("c", log=log)
    for f in (a, b, c):
        faults.inject(f)
    faults.heal(a)
    with pytest.raises(HalabError, match="b cannot be healed"):
        faults.heal_all()
    assert log == ["inject a", "inject b", "inject c", "heal a", "heal c"]
    assert faults.active == [b]  # still in effect, and still in the note
    assert [f.host for f in Faults.load(lab).active] == ["b"]


def test_a_refused_fault_is_not_healed_and_a_half_done_one_is(lab: Any,
                                                                tmp_path: Path) -> None:
    """A heal of a fault that was never injected would change the lab (a stopped service
    that `kill` refuses to signal must not be started by the kill's heal)."""
    log: list[str] = []
    faults = Faults(lab)
    for f, why in ((Noted("a", log=log, refused=True), "refused"),
                   (Noted("b", log=log, broken_inject=True), "half done")):
        with pytest.raises(HalabError, match=why):
            faults.inject(f)
    assert log == ["inject b", "heal b"]
    assert not faults.active and not (tmp_path / "faults.json").exists()


def test_a_fault_took_effect_when_the_host_says_so(lab: Any) -> None:
    """A cut made on the host itself (the ssh backend) happens an SSH round trip after
    the call: its time is the host's, not the caller's; else the caller's."""
    lab.set_links = lambda host, up, networks=None: 1000.25
    lab.power_off = lambda host: None
    faults = Faults(lab)
    assert faults.inject(faults_mod.CutLinks("dir0")) == 1000.25
    before = time.time()
    assert before <= faults.inject(faults_mod.PowerLoss("dir1")) <= time.time()


def test_every_fault_made_by_a_command_takes_the_hosts_time(lab: Any) -> None:
    """Firewall rules, a signal, a stop: each is timed by the host that makes it; a
    firewall fault's rules are one commit, given as input (its start not counted)."""
    stamps = iter([2000.5, 3000.0])
    ran: list[tuple[list[str], str | None]] = []

    def run_timed(host: str, argv: list[str], input: str | None = None,
                  timeout: float = 30.0) -> float:
        ran.append((argv, input))
        return next(stamps)

    lab.run_timed = run_timed
    lab.host = lambda name: SimpleNamespace(interfaces=[SimpleNamespace(name="eth1")])
    lab.stop_service = lambda host, name: 4000.0
    faults = Faults(lab)
    assert faults.inject(faults_mod.Blackhole("web0")) == 2000.5
    assert ran[0][0] == ["iptables-restore", "--noflush"]
    assert ran[0][1] is not None and ran[0][1].splitlines() == [
        "*filter",
        "-I INPUT 1 -m comment --comment halab-fault-blackhole -i eth1 -j DROP",
        "-I OUTPUT 1 -m comment --comment halab-fault-blackhole -o eth1 -j DROP",
        "COMMIT"]
    signal = faults_mod.SignalService("web0", service="nginx")
    signal.pid = 42
    assert signal._inject(lab) == 3000.0 and ran[-1] == (["kill", "-QUIT", "42"], None)
    assert faults.inject(faults_mod.StopService("web1", service="nginx")) == 4000.0


def _run_here(lag: float) -> Callable[..., Result]:
    """A backend's ``run`` on this machine, ``lag`` seconds away (an SSH round trip)."""
    def run(host: str, argv: list[str], *, timeout: float = 30.0) -> Result:
        time.sleep(lag)  # the way there
        p = subprocess.run(argv, capture_output=True, timeout=timeout)
        if p.returncode:
            raise HalabError(f"{host}: {p.stderr.decode().strip()}")
        return Result(argv, p.returncode, p.stdout, p.stderr)
    return run


def test_run_timed_is_the_hosts_time_when_the_command_began(tmp_path: Path) -> None:
    """However long the way to the host takes, the time is the host's, taken just
    before the command, and the command ran."""
    lag = 0.3
    lab = SimpleNamespace(run=_run_here(lag))
    made = tmp_path / "made"
    before = time.time()
    took = Backend.run_timed(lab, "web0",  # type: ignore[arg-type]
                             ["sh", "-c", f"echo noise; touch {made}"])
    assert made.exists() and before + lag <= took <= time.time()


def test_run_timed_with_input_does_not_count_the_commands_start(tmp_path: Path) -> None:
    """With input, the clock is read once the command waits for it: a slow start
    (`ip` under TCG) is before the fault, the input's effect after the time."""
    start = 0.3
    made = tmp_path / "made"
    lab = SimpleNamespace(run=_run_here(0.0))
    before = time.time()
    took = Backend.run_timed(lab, "web0",  # type: ignore[arg-type]
                             ["sh", "-c", f"sleep {start}; read -r line; "
                                          f"echo $line > {made}; date +%s.%N >> {made}"],
                             input="cut\n")
    line, acted = made.read_text().split()
    assert line == "cut" and before + start <= took <= float(acted)


def test_run_timed_with_input_reports_a_command_that_fails_first() -> None:
    lab = SimpleNamespace(run=_run_here(0.0))
    with pytest.raises(HalabError, match="unknown"):
        Backend.run_timed(lab, "web0", ["sh", "-c", "echo unknown >&2; exit 3"],  # type: ignore[arg-type]
                          input="x\n")


def test_two_equal_faults_are_two_faults(lab: Any) -> None:
    log: list[str] = []
    faults = Faults(lab)
    first, second = Noted("a", log=log), Noted("a", log=log)
    faults.inject(first)
    faults.inject(second)
    faults.heal(first)
    assert faults.active == [second] and faults.active[0] is second


@dataclass
class Logged(Fault):
    """Heals into a file: a fault whose heal a later process can see."""

    note: str = ""

    def _inject(self, lab: Backend) -> None:
        pass

    def _heal(self, lab: Backend) -> None:
        with open(self.note, "a") as f:
            f.write(f"healed {self.host}\n")


def test_a_killed_run_leaves_a_note_and_the_next_one_heals(
        lab: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(faults_mod, "CATALOGUE", (Logged,))
    note = tmp_path / "healed.txt"
    killed = Faults(lab)
    killed.inject(Logged("web0", note=str(note)))
    killed.inject(Logged("dir1", note=str(note)))  # ... and the run dies here
    assert (tmp_path / "faults.json").exists()
    left = Faults.recover(lab)
    assert [f.host for f in left] == ["web0", "dir1"]
    assert note.read_text() == "healed dir1\nhealed web0\n"  # newest first
    assert not (tmp_path / "faults.json").exists()
    assert Faults.recover(lab) == []


def test_nothing_in_effect_leaves_no_note(lab: Any, tmp_path: Path) -> None:
    faults = Faults(lab)
    f = Noted("a")
    faults.inject(f)
    faults.heal(f)
    assert not (tmp_path / "faults.json").exists()


def req(t: float, ms: float, ok: bool = True) -> dict[str, object]:
    return {"t": t, "ms": ms, **({"status": 200, "body": "web0"} if ok else {"err": "timeout"})}


def test_outage_ends_with_the_first_success_after_the_last_failure() -> None:
    # a request slips through just after the fault was injected, before it took hold
    results = [req(99.9, 1), req(100.001, 1), req(100.004, 200, ok=False),
               req(100.206, 2), req(100.210, 2)]
    assert ClientLoop.outage(results, 100.0) == pytest.approx(0.208)
    tl = Timeline("t", 100.0)
    tl.add_requests(results)
    assert tl.measured == {"outage_ms": 208.0, "failed_requests": 1}
    assert [m.what for m in tl.marks] == ["request_failed", "first_success_after_fault"]


def test_outage_without_a_failure_and_without_recovery() -> None:
    assert ClientLoop.outage([req(99.0, 1), req(100.5, 3)], 100.0) == pytest.approx(0.503)
    assert ClientLoop.outage([req(100.1, 200, ok=False)], 100.0) == float("inf")


def test_rate_is_requests_started_per_second() -> None:
    assert ClientLoop.rate([req(10 + i * 0.005, 1) for i in range(201)]) == pytest.approx(200)
    assert ClientLoop.rate([req(1, 1)]) == 0.0
