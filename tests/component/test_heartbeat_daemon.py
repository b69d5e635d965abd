"""Two real heartbeat daemons: a director restarted without its state file is heard
(the generation never goes back, issue 13; the rules are in tests/unit)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# Two real daemons in a network namespace of their own (unshare -rnm: nothing of
# this machine's network is touched), one veth end each. RESTART: dir0 runs, is killed,
# loses its state file and starts again before dir1's deadtime is up. FREEZE: the
# backup is stopped (SIGSTOP) for longer than its deadtime, then continued.
SETUP = r"""
import json, os, subprocess, sys, time
from pathlib import Path
from heartbeat.ctl import ask

tmp = Path(sys.argv[1])
def sh(*argv):
    subprocess.run(argv, check=True, capture_output=True)
sh("mount", "-t", "sysfs", "sysfs", "/sys")  # this namespace's interfaces
sh("ip", "link", "set", "lo", "up")
sh("ip", "link", "add", "a0", "type", "veth", "peer", "name", "a1")
ADDR = {"dir0": "198.18.0.11", "dir1": "198.18.0.12"}
for dev, name in (("a0", "dir0"), ("a1", "dir1")):
    sh("ip", "addr", "add", ADDR[name] + "/24", "dev", dev)
    sh("ip", "link", "set", dev, "up")
key = tmp / "authkey"
key.write_text("k" * 32)
key.chmod(0o600)
CFG = '''
[node]
name = "{name}"
priority = {prio}
[cluster]
nodes = ["dir0", "dir1"]
key_file = "{key}"
port = 6694
state_file = "{tmp}/{name}/state"
control_socket = "{tmp}/{name}.sock"
[timers]
keepalive = 20
deadtime = 1000
warntime = 500
initdead = 300
[[links]]
name = "private"
bind = "{bind}"
peers = ["{peer}"]
[vip]
address = "203.0.113.100/24"
interface = "{dev}"
handover_window = 0
'''
procs = {}
def start(name):
    cfg = tmp / (name + ".toml")
    other = "dir1" if name == "dir0" else "dir0"
    cfg.write_text(CFG.format(name=name, prio=150 if name == "dir0" else 100, key=key,
                              tmp=tmp, bind=ADDR[name], peer=ADDR[other],
                              dev="a0" if name == "dir0" else "a1"))
    log = open(tmp / (name + ".log"), "a")
    procs[name] = subprocess.Popen([sys.executable, "-m", "heartbeat", "-f", str(cfg),
                                    "--log-level", "debug"], stdout=log, stderr=log)
def status(name):
    try:
        return ask(str(tmp / (name + ".sock")), "status", timeout=1.0)
    except (OSError, ValueError):
        return None
def wait(what, cond, limit=5.0):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if got := cond():
            return got
        time.sleep(0.02)
    raise SystemExit("timed out: " + what)
def answer(name):
    return wait(name + " answers", lambda: status(name))
def states():
    return {n: (status(n) or {}).get("state") for n in ("dir0", "dir1")}

"""

RESTART = r"""
out = {}
try:
    start("dir0"); start("dir1")
    wait("dir0 master", lambda: states() == {"dir0": "MASTER", "dir1": "BACKUP"})
    first = answer("dir0")["generation"]
    # dir0's sequence numbers go up a while (and the clock past its generation's second)
    time.sleep(max(2.0, first + 1.05 - time.time()))
    replays = answer("dir1")["counters"].get("event_replay", 0)
    procs["dir0"].kill(); procs["dir0"].wait()
    (tmp / "dir0" / "state").unlink()
    start("dir0")
    wait("dir0 back", lambda: (status("dir0") or {}).get("state") not in (None, "INIT"))
    seen = []  # both states every 20 ms, until past dir1's deadtime since the kill
    end = time.monotonic() + 1.3
    while time.monotonic() < end:
        seen.append(states())
        time.sleep(0.02)
    s0, s1 = answer("dir0"), answer("dir1")
    out = {"first": first, "again": s0["generation"],
           "stored": (tmp / "dir0" / "state").read_text(),
           "states": {"dir0": s0["state"], "dir1": s1["state"]},
           "dir1_sees_dir0": s1["peers"][0],
           "replays": s1["counters"].get("event_replay", 0) - replays,
           "both_masters": sum(st == {"dir0": "MASTER", "dir1": "MASTER"} for st in seen),
           "samples": len(seen)}
finally:
    for p in procs.values():
        p.kill()
    out["logs"] = {n: (tmp / (n + ".log")).read_text()[-3000:] for n in ("dir0", "dir1")}
    print(json.dumps(out))
"""


FREEZE = r"""
out = {}
try:
    start("dir0"); start("dir1")
    wait("dir0 master", lambda: states() == {"dir0": "MASTER", "dir1": "BACKUP"}, 10.0)
    procs["dir1"].send_signal(19)  # SIGSTOP: hung, its sockets open (dir0 keeps sending)
    time.sleep(1.5)  # past dir1's deadtime (1 s): the fault under test is this long
    procs["dir1"].send_signal(18)  # SIGCONT
    seen = []
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        seen.append(states())
        time.sleep(0.02)
    out = {"states": states(), "samples": len(seen),
           "dir1_master": sum(st.get("dir1") == "MASTER" for st in seen)}
finally:
    for p in procs.values():
        p.kill()
    out["logs"] = {n: (tmp / (n + ".log")).read_text()[-3000:] for n in ("dir0", "dir1")}
    print(json.dumps(out))
"""


def in_namespace(tmp_path: Path, scenario: str) -> dict[str, Any]:
    unshare = shutil.which("unshare")
    probe = subprocess.run([unshare or "unshare", "-rnm", "true"], capture_output=True) \
        if unshare else None
    if unshare is None or probe is None or probe.returncode != 0:
        pytest.skip("no network and mount namespace of our own here (unshare -rnm)")
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    res = subprocess.run([unshare, "-rnm", sys.executable, "-c", SETUP + scenario,
                          str(tmp_path)], capture_output=True, text=True, timeout=60,
                         env=env, cwd=root)
    assert res.stdout, res.stderr
    seen: dict[str, Any] = json.loads(res.stdout)
    assert res.returncode == 0 and "states" in seen, seen["logs"]
    return seen


def test_a_real_daemon_restarted_without_its_state_file_is_heard(tmp_path: Path) -> None:
    seen = in_namespace(tmp_path, RESTART)
    assert seen["again"] > seen["first"] and seen["stored"] == f"{seen['again']}\n"
    assert seen["replays"] == 0, seen["logs"]["dir1"]  # dir1 took none of it for a replay
    assert seen["samples"] > 10 and seen["both_masters"] == 0, seen["logs"]  # never split
    peer = seen["dir1_sees_dir0"]
    assert peer["alive"] and peer["state"] == seen["states"]["dir0"], seen["logs"]
    # one master: dir0 again (back within deadtime), or dir1 (a slow machine: after it)
    assert sorted(seen["states"].values()) == ["BACKUP", "MASTER"], seen["logs"]


def test_a_backup_stopped_then_continued_takes_nothing(tmp_path: Path) -> None:
    """A hung backup (SIGSTOP longer than its deadtime) that runs again first reads what
    its master sent meanwhile: it was deaf, the master was not silent. Without that it
    judged the master dead on waking, took the VIP and won the conflict by priority."""
    seen = in_namespace(tmp_path, FREEZE)
    assert "to=MASTER" not in seen["logs"]["dir1"], seen["logs"]["dir1"]
    assert seen["dir1_master"] == 0, seen["logs"]["dir1"]
    assert seen["states"] == {"dir0": "MASTER", "dir1": "BACKUP"}, seen["logs"]
    assert "event=stalled" in seen["logs"]["dir1"], seen["logs"]["dir1"]
