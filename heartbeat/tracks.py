"""The tracked resources: each checked every ``interval`` (a TCP connect or a command,
within ``timeout``), counted with rise/fall; a change is reported to the daemon."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from daemonkit.check import tcp_check
from daemonkit.log import EventLog
from daemonkit.risefall import RiseFall
from heartbeat import config

Report = Callable[[str, bool, str], None]  # (track, ok, reason)


async def check(t: config.Track) -> tuple[bool, str]:
    """One check of ``t``: whether it passed, and why (a short phrase for the log)."""
    if t.tcp is not None:
        out = await tcp_check(*t.tcp, t.timeout)  # (its own timeout, its own reasons)
        return out.ok, out.reason
    assert t.command is not None
    try:
        async with asyncio.timeout(t.timeout):
            proc = await asyncio.create_subprocess_exec(
                *t.command, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL)
            rc = await proc.wait()
            return rc == 0, f"exit {rc}"
    except TimeoutError:
        return False, "timeout"
    except OSError as e:
        return False, e.strerror or type(e).__name__


class Tracks:
    def __init__(self, log: EventLog, report: Report) -> None:
        self.log = log
        self.report = report
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, tracks: tuple[config.Track, ...]) -> None:
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._watch(t)) for t in tracks]

    def cancel(self) -> None:
        for t in self.tasks:
            t.cancel()

    async def _watch(self, t: config.Track) -> None:
        counts = RiseFall(t.rise, t.fall)
        while True:
            ok, reason = await check(t)
            if counts.result(ok):
                if not ok:
                    self.log.warning("track_failed", track=t.name, reason=reason)
                self.report(t.name, ok, reason)
            await asyncio.sleep(t.interval)
