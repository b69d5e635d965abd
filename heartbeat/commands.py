"""The daemon's external commands: one runner, and what each command did for the log.

``run`` starts every command the daemon starts (blocking: a worker thread, or the loop
when it must wait, as when the forwarding is torn down). ``outcome`` runs one and says
what it did: its exit status (or ``timeout``, or ``failed``: it could not start), how
long it took and the start of its stderr. ``InOrder`` runs resources and notify hooks
one after the other, in a worker thread, never interleaved.
"""

from __future__ import annotations

import asyncio
import functools
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
    error: str | None = None
    try:
        res = run(argv, timeout=timeout, stdout=stdout)
        status: int | str = res.returncode
        err = res.stderr.decode(errors="replace").strip()[:STDERR_KEPT]
    except subprocess.TimeoutExpired:
        status, err = "timeout", ""
    except OSError as e:
        status, err, error = "failed", "", str(e)
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
        loop = asyncio.get_running_loop()

        async def run() -> None:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            for argv in commands:
                o = await loop.run_in_executor(
                    None, functools.partial(outcome, argv, stdout=subprocess.DEVNULL))
                if o.error is not None:
                    self.log.error(what, argv=o.argv, reason=o.error)
                else:
                    self.log.log(20 if o.ok else 40, what, argv=o.argv, status=o.status,
                                 stderr=o.stderr)

        self._last = loop.create_task(run())
