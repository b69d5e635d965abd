"""CI's VM stage (``./bootstrap vm-test``): one VM lab, brought up once and used by every
step, each step timed; the table is printed at the end, and appended to
``$HALAB_CI_STEPS`` (a TSV that .ci/run prints with its own steps) when set.

Steps (every one bounded in time; the lab goes down at the end whatever happened):

1. ``vagrant up``: the box (built offline, cached), libvirtd, five VMs, each provisioned
   by the Vagrantfile's trigger as it comes up (``halab --lab vagrant up`` runs it
   inside halab's namespace on this kind of machine).
2. ``vagrant halt`` then ``vagrant up``: the lab comes back consistent
   (tests/vm/test_halt_up.py: one VIP owner, every service up, the client served).
3. The card's command, literally: ``tox -e integration``, no ``--lab``, no
   ``HALAB_LAB``, no VM settings in the environment: the suite finds the Vagrant lab
   by itself, and its first lines must say so (``halab lab: vagrant``).
4. The workstation's path: a plain ``vagrant up`` of one VM with halab in the system
   mode (tests/vm/workstation_path.py).
5. ``--full`` only: the same VMs as hosts someone else made, through the ssh backend
   (an inventory with Vagrant's login): provisioned again over SSH, then its whole
   suite (its own link cuts and power-loss stand-in among the rest). It costs about
   12 min even cut to those checks (5 of them provisioning over new SSH trust), which
   CI's 45 min cannot hold: CI runs steps 1-4 and 6; the README says when the full
   stage last ran and how it went.
6. ``halab --lab vagrant down``.

Usage: python tests/vm/stage.py [--full] [pytest args for both suites...]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv" / "bin"
HALAB = [str(VENV / "python"), "-m", "halab.cli", "--lab", "vagrant"]
TOX = [str(VENV / "tox"), "run", "-e", "integration", "--"]
CARD_LINE = "halab lab: vagrant"  # what the suite's first lines must say
HEADER_LINES = 6  # pytest's platform, cache, header hooks, rootdir... lines
DURATIONS = "--durations=15"  # the slowest tests of each suite, in the log
MINUTE = 60.0

ROWS: list[tuple[str, float, str]] = []


class StepFailed(Exception):
    pass


def step(name: str, argv: Sequence[str], limit_min: float, env: dict[str, str] | None = None,
         expect: str | None = None) -> None:
    """Run one step with this terminal, bounded in time; ``expect``: a text that must be
    in the header of the pytest session it runs (the lines after its "test session
    starts" banner: tox's own lines come before it), its output passed through."""
    print(f"\n=== vm stage: {name}: {' '.join(argv)}", flush=True)
    t0 = time.monotonic()
    result = "failed"
    try:
        if expect is None:
            rc = subprocess.run(argv, cwd=ROOT, env=env, timeout=limit_min * MINUTE,
                                check=False).returncode
            found = True
        else:
            rc, found = _run_expecting(argv, env, limit_min, expect)
        if rc == 0 and not found:
            print(f"vm stage: {name}: its header does not say {expect!r}", flush=True)
        result = "ok" if rc == 0 and found else f"failed (exit {rc})" if rc else "failed"
    except subprocess.TimeoutExpired:
        result = f"failed (over {limit_min:g} min)"
    finally:
        ROWS.append((name, time.monotonic() - t0, result))
    if result != "ok":
        raise StepFailed(f"{name}: {result}")


def _run_expecting(argv: Sequence[str], env: dict[str, str] | None, limit_min: float,
                   expect: str) -> tuple[int, bool]:
    with subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        timer = threading.Timer(limit_min * MINUTE, proc.kill)  # (silent or not)
        timer.start()
        try:
            assert proc.stdout is not None
            found, header = False, -1  # lines of the session's header seen (-1: not begun)
            for line in proc.stdout:
                sys.stdout.write(line)
                if header < 0 and "test session starts" in line:
                    header = 0
                elif 0 <= header < HEADER_LINES:
                    header += 1
                    found = found or expect in line
            rc = proc.wait()
        finally:
            timed_out = not timer.is_alive()
            timer.cancel()
        if timed_out:
            raise subprocess.TimeoutExpired(argv, limit_min * MINUTE)
        return rc, found


def card_env() -> dict[str, str]:
    """A user's shell: none of the settings the stage itself runs with (but the slowest
    tests' durations in the log, through pytest's own variable)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("HALAB_LAB", "HALAB_VM_DRIVER", "HALAB_VMHOST", "HALAB_INVENTORY")}
    env["PYTEST_ADDOPTS"] = f"{env.get('PYTEST_ADDOPTS', '')} {DURATIONS}".strip()
    return env


def table() -> str:
    total = sum(s for _, s, _ in ROWS)
    lines = [f"{'vm stage step':<44} {'min':>6}  result"]
    lines += [f"{name:<44} {s / MINUTE:>6.1f}  {res}" for name, s, res in ROWS]
    lines.append(f"{'vm stage, in all':<44} {total / MINUTE:>6.1f}")
    return "\n".join(lines)


def main(args: list[str]) -> int:
    full = "--full" in args
    extra = [a for a in args if a != "--full"]
    ok = False
    try:
        step("vagrant up (box, 5 VMs, provisioned)", [*HALAB, "vagrant", "--", "up", "--parallel"],
             30)
        step("vagrant halt, vagrant up: consistent", [
            str(VENV / "python"), "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
            "tests/vm/test_halt_up.py"], 20)
        step("tox -e integration (the card, literally)", [*TOX, *extra], 40,
             env=card_env(), expect=CARD_LINE)
        step("workstation path (plain vagrant up, system)",
             [str(VENV / "python"), "tests/vm/workstation_path.py"], 25)
        if full:
            with tempfile.TemporaryDirectory() as tmp:
                inv = str(Path(tmp) / "inventory.toml")
                step("ssh backend: inventory", [*HALAB, "inventory", "-o", inv], 5)
                step("ssh backend: its suite", [
                    *TOX, "--lab", "ssh", "--inventory", inv, "--artifacts",
                    str(ROOT / "artifacts-ssh"), DURATIONS, *extra], 40)
        else:
            ROWS.append(("ssh backend: its suite", 0.0, "not run (--full runs it)"))
        ok = True
    except StepFailed as e:
        print(f"\nvm stage: {e}", flush=True)
    finally:
        try:
            step("down", [*HALAB, "down"], 10)
        except StepFailed as e:
            print(f"\nvm stage: {e}", flush=True)
            ok = False
        print("\n" + table(), flush=True)
        steps_file = os.environ.get("HALAB_CI_STEPS")
        if steps_file:
            with open(steps_file, "a") as f:
                for name, s, res in ROWS:
                    f.write(f"  {name}\t{s:.0f}\t{res}\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
