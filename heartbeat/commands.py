"""The daemon's external commands: one runner, and what each command did for the log.

``run`` starts a command and waits for it (blocking: a worker thread, or the loop when
it must wait, as when the forwarding is torn down). ``outcome`` runs one and says what
it did: its exit status (or ``timeout``, or ``failed``: it could not start), how long it
took and the start of its stderr. ``InOrder`` runs resources and notify hooks one after
the other, never interleaved, as asyncio subprocesses: a hook that hangs blocks neither
the loop nor the daemon's exit, and leaves no worker thread busy. Both say what a
command did in the same ``Outcome``.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

from daemonkit.log import EventLog

STDERR_KEPT = 200  # characters of a command's stderr in the log


def run(argv: Sequence[str], *, input: bytes | None = None, timeout: float | None = None,
        stdout: int = subprocess.PIPE) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` to its end (killed after ``timeout``: ``TimeoutExpired``); stderr is
    read; ``OSError`` when it cannot start."""
    return subprocess.run(argv, input=input, stdout=stdout, stderr=subprocess.PIPE,
                          check=False, timeout=timeout)


@dataclass(frozen=True)
class Outcome:
    argv: str  # the command line, as logged
    status: int | str  # the exit status, or "timeout", or "failed" (it could not start)
    ms: int  # how long it took
    stderr: str | None  # its start, or None when empty
    error: str | None = None  # why it could not start

    @property
    def ok(self) -> bool:
        return self.status == 0


def outcome(argv: Sequence[str], *, timeout: float | None = None,
            stdout: int = subprocess.PIPE) -> Outcome:
    """Run ``argv`` (``run``) and say what it did; never raises for the command's sake."""
    t0 = time.monotonic()
    try:
        res = run(argv, timeout=timeout, stdout=stdout)
    except subprocess.TimeoutExpired:
        return _outcome(argv, t0, "timeout")
    except OSError as e:
        return _outcome(argv, t0, "failed", error=str(e))
    return _outcome(argv, t0, res.returncode, res.stderr)


async def outcome_async(argv: Sequence[str]) -> Outcome:
    """``outcome`` on the loop, its stdout going nowhere; cancelled, it stops waiting."""
    t0 = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
    except OSError as e:
        return _outcome(argv, t0, "failed", error=str(e))
    assert proc.returncode is not None
    return _outcome(argv, t0, proc.returncode, err)


def _outcome(argv: Sequence[str], t0: float, status: int | str, stderr: bytes = b"",
             error: str | None = None) -> Outcome:
    err = stderr.decode(errors="replace").strip()[:STDERR_KEPT]
    return Outcome(" ".join(argv), status, round((time.monotonic() - t0) * 1000),
                   err or None, error)


class InOrder:
    """Commands run one after the other, after any still running (haresources: started
    left to right, stopped right to left, never interleaved), each logged under the
    event its caller names."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self._last: asyncio.Task[None] | None = None

    def run(self, what: str, commands: list[Sequence[str]]) -> None:
        if not commands:
            return
        previous = self._last

        async def run() -> None:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            for argv in commands:
                o = await outcome_async(argv)
                if o.error is not None:
                    self.log.error(what, argv=o.argv, reason=o.error)
                else:
                    self.log.log(20 if o.ok else 40, what, argv=o.argv, status=o.status,
                                 stderr=o.stderr)

        self._last = asyncio.get_running_loop().create_task(run())
