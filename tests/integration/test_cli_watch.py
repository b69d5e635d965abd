"""A teacher's two terminals, as a user runs them: ``halab watch`` in one (the live
view in a real terminal, tmux, and ``--json`` for scripts), ``halab fault power-off
--measure`` of the master in the other. One power loss proves the three: ``--measure``
prints the outage and writes the timeline; ``watch --json`` shows the VIP on the
survivor within a second of the failover; the live view shows the holder change; then
Ctrl-C in the terminal ends watch cleanly, and nothing of either watch is left on the
hosts. (One power cycle for the three: under TCG each costs more than a minute.)"""

from __future__ import annotations

import json
import queue
import re
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.faults import Faults, PowerLoss
from harness.measure import budget
from harness.poll import wait_until
from harness.traffic import vip_holders
from lab.backend import Backend
from lab.system import env
from lab.topology import Topology

from .common import halab_argv, other
from .test_cli_faults import ok, one_owner

pytestmark = pytest.mark.integration


class JsonWatch:
    """``halab watch --json`` running: its objects, one a second, read as they come."""

    def __init__(self, lab: Backend, seconds: float) -> None:
        argv = halab_argv(lab, "watch", "--json", "--seconds", f"{seconds:g}")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env())
        self.objects: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.objects.put(json.loads(line))

    def first(self, timeout: float, want: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first object (from those not read yet) that ``want`` takes."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                obj = self.objects.get(timeout=left)
            except queue.Empty:
                break
            if want(obj):
                return obj
        raise AssertionError(f"watch --json showed no such object within {timeout:g} s")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


class TmuxWatch:
    """``halab watch`` in a real terminal (a detached tmux session), read off its screen."""

    def __init__(self, lab: Backend, seconds: float) -> None:
        assert shutil.which("tmux"), "tmux is not installed (./bootstrap deps installs it)"
        self.session = f"halab-watch-test-{int(time.time())}"
        # bash says how watch ended (tmux's own pane_dead_status was seen missing, its
        # pane's process left unreaped); its trap keeps it through the terminal's SIGINT,
        # watch gets the signal as a terminal's program does
        watch = shlex.join(halab_argv(lab, "watch", "--seconds", f"{seconds:g}"))
        script = f'trap : INT; {watch}; echo "halab watch exited $?"'
        subprocess.run(["tmux", "new-session", "-d", "-s", self.session, "-x", "160", "-y",
                        "40", "exec bash -c " + shlex.quote(script)], check=True, env=env())
        # the pane stays when its command has ended, to be read
        self.tmux("set-option", "-t", self.session, "remain-on-exit", "on")

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", *args], text=True, capture_output=True,
                              check=True).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.session)

    def ctrl_c(self, timeout: float) -> int:
        """Ctrl-C typed in the terminal (the tty sends SIGINT to watch); its exit status."""
        self.tmux("send-keys", "-t", self.session, "C-c")
        ended = wait_until(lambda: re.search(r"halab watch exited (\d+)", self.screen()),
                           timeout, "halab watch ended by Ctrl-C")
        assert ended is not None
        return int(ended[1])

    def stop(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.session], capture_output=True,
                       check=False)


def test_a_power_loss_measured_and_watched(lab: Backend, topo: Topology, tmp_path: Path,
                                           healed: None, record: Callable[..., None]) -> None:
    master = one_owner(lab, topo)
    survivor = other(topo, master)
    took = budget(lab).get("total", 0.0) / 1000  # asked while both directors answer
    seconds = 120 * lab.slowness  # ended by the test before (on the VMs: after ~90 s)
    watching = JsonWatch(lab, seconds)
    terminal = TmuxWatch(lab, seconds)
    vip = f"VIP {topo.vip.address} on"
    try:
        first = watching.first(30 * lab.slowness, lambda o: True)
        assert first["vip"]["holders"] == [master]
        assert first["directors"][master]["heartbeat"]["state"] == "MASTER"
        assert {s["name"] for s in first["directors"][master]["servers"]} == \
            {w.name for w in topo.webs}
        wait_until(lambda: f"{vip} {master} " in terminal.screen(), 30 * lab.slowness,
                   f"the view showing {master} holding the VIP")

        out = ok(lab, "fault", "power-off", master, "--measure", "--out", str(tmp_path))
        assert vip_holders(lab) == [survivor]
        assert f"VIP: {master} -> {survivor}, added after" in out, out
        assert "outage" in out or "no request failed" in out, out
        assert {".json", ".txt"} <= {p.suffix for p in tmp_path.iterdir()}
        measured = json.loads(next(tmp_path.glob("*.json")).read_text())["measured"]
        assert measured["outage_ms"] > 0 and "vip_added_ms" in measured
        if "outage" in out:
            assert f"outage {measured['outage_ms']:g} ms" in out
        t_fault = next(f.at for f in Faults.load(lab).active if isinstance(f, PowerLoss))
        assert t_fault is not None

        moved = watching.first(30 * lab.slowness,
                               lambda o: bool(o["vip"]["holders"] == [survivor]))
        # a sample a second: the first one after the failover shows it (at the lab's pace)
        assert moved["t"] - t_fault <= took + 1.0 * lab.slowness + 0.5, (moved["t"] - t_fault)
        assert moved["directors"][master]["heartbeat"] is None  # powered off: no answer
        assert moved["directors"][survivor]["heartbeat"]["state"] == "MASTER"
        # the VIP went from the master to the survivor; a sample that fell between the
        # master's power loss and the survivor's takeover saw nobody hold it, as nobody did
        # (the samples are on the second, the fault at any moment of it)
        moves = [e["what"] for e in moved["events"] if e["what"].startswith("VIP: ")]
        assert moves in ([f"VIP: {master} -> {survivor}"],
                         [f"VIP: {master} -> nobody", f"VIP: nobody -> {survivor}"]), \
            moved["events"]
        assert watching.proc.poll() is None

        wait_until(lambda: f"{vip} {survivor} " in terminal.screen(), 30 * lab.slowness,
                   f"the view showing {survivor} holding the VIP")
        now = terminal.screen()
        assert f"{vip} {survivor} " in now and "no answer" in now, now
        # Ctrl-C leaves cleanly: exit status 0, no traceback
        assert terminal.ctrl_c(10 * lab.slowness) == 0, terminal.screen()
        assert "Traceback" not in terminal.screen(), terminal.screen()
    finally:
        watching.stop()
        terminal.stop()
    record(check="cli", what="halab fault power-off --measure",
           outage_ms=measured["outage_ms"], vip_added_ms=measured["vip_added_ms"])
    ok(lab, "fault", "power-on", master)
    assert ok(lab, "faults").strip() == "no fault in effect"
    assert one_owner(lab, topo) == survivor  # auto_failback off: the VIP stays
    # nothing of either watch is left on the hosts: a look ends when its reader has gone
    wait_until(lambda: not watch_left(lab), 10 * lab.slowness,
               "no look of halab watch on a director, no client loop of it on the client")


def watch_left(lab: Backend) -> list[str]:
    """What of ``halab watch`` still runs on the hosts (the survivor's looks, the client's
    loop; the powered-off director started anew)."""
    topo = lab.topology
    # (the bracket: the pattern does not match the command line that carries it)
    wanted = [(d.name, "harness[.]look") for d in topo.directors] + \
        [(topo.clients[0].name, "harness[.]probe")]
    return [f"{host}: {pattern}" for host, pattern in wanted
            if lab.run(host, ["pgrep", "-f", pattern], check=False).ok]
