"""``halab exec`` and ``halab logs -f`` as a user runs them, piped, on any backend."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import queue
import subprocess
import termios
import threading
import time

import pytest

from lab.backend import Backend
from lab.system import env
from lab.topology import Topology

from .common import halab_argv
from .test_cli_faults import ok

pytestmark = pytest.mark.integration


def test_exec_passes_piped_output_as_it_is(lab: Backend, topo: Topology) -> None:
    """(SSH backends give the command a tty, whose newlines were CRLF in a pipe.)"""
    assert ok(lab, "exec", topo.directors[0].name, "--", "printf", r"a\nb\n") == "a\nb\n"


def test_exec_leaves_the_callers_terminal_as_it_was(lab: Backend, topo: Topology) -> None:
    """Typed at a terminal with its output piped (``halab exec dir0 -- cat f > f``): the
    terminal is the user's (on netns the command shares it), so nothing may change it."""
    mine, theirs = pty.openpty()
    try:
        before = termios.tcgetattr(theirs)
        res = subprocess.run(halab_argv(lab, "exec", topo.directors[0].name, "--", "true"),
                             stdin=theirs, capture_output=True, env=env(),
                             timeout=60 * lab.slowness, check=False)
        assert res.returncode == 0, res.stderr
        assert termios.tcgetattr(theirs) == before
    finally:
        os.close(mine)
        os.close(theirs)


def test_the_daemons_tools_find_their_sockets_on_the_host(lab: Backend, topo: Topology) -> None:
    director = topo.directors[0].name
    hb = json.loads(ok(lab, "exec", director, "--", "hbctl", "status", "--json"))
    assert hb["node"] == director
    servers = ok(lab, "exec", director, "--", "balancerctl", "show", "servers")
    assert all(w.name in servers for w in topo.webs)


def test_logs_follow_prints_the_daemons_lines_as_they_come(lab: Backend,
                                                           topo: Topology) -> None:
    director = topo.directors[0].name
    proc = subprocess.Popen(halab_argv(lab, "logs", director, "heartbeat", "-f"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    out = proc.stdout

    def pump() -> None:
        for ln in out:
            lines.put(ln)
    threading.Thread(target=pump, daemon=True).start()
    try:
        # the last lines of its log come first (the heartbeat logs in logfmt), then it
        # follows: the command is still running
        deadline = time.monotonic() + 30 * lab.slowness
        seen = ""
        while " daemon=heartbeat event=" not in seen and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                seen = lines.get(timeout=1)
        assert " daemon=heartbeat event=" in seen, seen
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    finally:
        proc.kill()
        proc.wait(timeout=10)
