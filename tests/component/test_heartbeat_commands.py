"""The heartbeat daemon's one command runner, with real (tiny) commands: what each did,
as the handover's prepare step and the resources and hooks log it."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from daemonkit.log import EventLog
from heartbeat import config
from heartbeat.commands import InOrder, outcome
from heartbeat.handover import Handover
from tests.unit.test_heartbeat_wire_config import CFG

PY = sys.executable


def test_the_exit_status_and_the_start_of_stderr() -> None:
    o = outcome(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (o.argv, o.status, o.stderr, o.error, o.ok) == (
        "sh -c echo out; echo err >&2; exit 3", 3, "err", None, False)
    o = outcome(["true"])
    assert (o.status, o.stderr, o.ok) == (0, None, True)
    o = outcome([PY, "-c", "import sys; sys.stderr.write(' ' + 'x' * 500 + '\\n')"])
    assert o.stderr == "x" * 200


def test_a_command_past_its_timeout_is_a_timeout() -> None:
    o = outcome(["sleep", "5"], timeout=0.2)
    assert (o.status, o.stderr, o.error) == ("timeout", None, None)
    assert 150 <= o.ms < 2000


def test_a_command_that_cannot_start_failed() -> None:
    o = outcome(["/nonexistent/command"])
    assert o.status == "failed" and o.stderr is None and not o.ok
    assert o.error is not None and "No such file" in o.error


def test_the_prepare_step_logs_what_each_command_did() -> None:
    h = Handover(config.loads(CFG.format(key="/k")), EventLog("heartbeat", stream=io.StringIO()))
    ran = h._run_prepare([("sh", "-c", "echo e >&2; exit 1"), ("/nonexistent",), ("true",)])
    assert [{k: v for k, v in r.items() if k != "ms"} for r in ran] == [
        {"argv": "sh -c echo e >&2; exit 1", "status": 1, "stderr": "e"},
        {"argv": "/nonexistent", "status": "failed",
         "stderr": "[Errno 2] No such file or directory: '/nonexistent'"},
        {"argv": "true", "status": 0, "stderr": None}]
    assert all(isinstance(r["ms"], int) for r in ran)


def test_the_prepare_step_waits_at_least_a_second() -> None:
    cfg = config.loads(CFG.format(key="/k").replace("[vip]", "[vip]\nhandover_window = 100"))
    h = Handover(cfg, EventLog("heartbeat", stream=io.StringIO()))
    (ran,) = h._run_prepare([("sh", "-c", "sleep 0.5")])
    assert ran["status"] == 0  # the window is 0.1 s, the timeout 1 s


def test_commands_run_in_order_after_the_ones_before(tmp_path: Path,
                                                     capfd: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    seen = tmp_path / "seen"

    async def go() -> None:
        q = InOrder(EventLog("heartbeat", stream=out))
        q.run("resource_start", [["sh", "-c", f"sleep 0.3; echo a >> {seen}; echo hello"],
                                 ["sh", "-c", f"echo b >> {seen}; echo oops >&2; exit 2"]])
        q.run("notify", [["sh", "-c", f"echo c >> {seen}"], ["/nonexistent"]])
        q.run("notify", [])
        assert q._last is not None
        await q._last

    asyncio.run(go())
    assert seen.read_text() == "a\nb\nc\n"
    lines = [ln.split(" ", 1)[1] for ln in out.getvalue().splitlines()]
    assert lines == [
        f'level=info daemon=heartbeat event=resource_start argv="sh -c sleep 0.3; echo a >> '
        f'{seen}; echo hello" status=0',
        f'level=error daemon=heartbeat event=resource_start argv="sh -c echo b >> {seen}; '
        f'echo oops >&2; exit 2" status=2 stderr=oops',
        f'level=info daemon=heartbeat event=notify argv="sh -c echo c >> {seen}" status=0',
        "level=error daemon=heartbeat event=notify argv=/nonexistent "
        "reason=\"[Errno 2] No such file or directory: '/nonexistent'\""]
    assert "hello" not in capfd.readouterr().out  # stdout goes nowhere


def test_a_hook_that_hangs_holds_up_neither_the_loop_nor_its_end(tmp_path: Path) -> None:
    """As before the split: the daemon's exit does not wait for a hung hook (a worker
    thread running it would hold up the end of ``asyncio.run``, which shuts the
    default executor down, until the hook ended)."""
    pidfile = tmp_path / "pid"
    out = io.StringIO()
    q = InOrder(EventLog("heartbeat", stream=out))

    async def hang() -> None:
        q.run("notify", [["sh", "-c", f"echo $$ > {pidfile}; exec sleep 60"]])
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while not pidfile.exists() or not pidfile.read_text().strip():
            assert loop.time() - t0 < 10, "the hook never started"
            await asyncio.sleep(0.01)  # the loop runs while the hook hangs

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(hang())
        t0 = time.monotonic()
        loop.run_until_complete(loop.shutdown_default_executor())  # as asyncio.run ends
        assert time.monotonic() - t0 < 30  # the hook hangs for 60 s
        assert out.getvalue() == ""  # still running: nothing is logged yet
    finally:
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGKILL)  # ours
        if q._last is not None:
            loop.run_until_complete(q._last)  # it ends with the hook
        loop.close()
    assert "event=notify" in out.getvalue() and "status=-9" in out.getvalue()
