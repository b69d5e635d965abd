"""A node's generation never goes back, even when its state file is lost (issue 13).

A peer drops heartbeats whose (generation, seq) is not above the newest it saw, as
replays: a director that lost its state file and started again with an older
generation was not heard by its peer, and both became MASTER.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from heartbeat import wire
from heartbeat.daemon import MAX_GENERATION, next_generation
from heartbeat.fsm import Event, Node
from heartbeat.wire import State
from tests.unit.test_heartbeat_fsm import Sim, T

NOW = 1_700_000_000.75  # a wall clock (November 2023), not on a whole second
KEY = b"k" * 32


def test_generation_grows_on_every_start_even_within_one_second(tmp_path: Path) -> None:
    path = tmp_path / "state" / "gen"
    assert [next_generation(str(path), clock=lambda: NOW) for _ in range(3)] == [
        1_700_000_000, 1_700_000_001, 1_700_000_002]
    assert path.read_text() == "1700000002\n"
    assert not path.with_suffix(".tmp").exists()


def test_a_clock_stepped_back_does_not_take_the_generation_back(tmp_path: Path) -> None:
    path = tmp_path / "gen"
    first = next_generation(str(path), clock=lambda: NOW)
    assert next_generation(str(path), clock=lambda: NOW - 86400) == first + 1  # the file


def test_a_lost_state_file_does_not_take_the_generation_back(tmp_path: Path) -> None:
    path = tmp_path / "gen"
    used = [next_generation(str(path), clock=lambda: NOW) for _ in range(3)]
    path.unlink()  # reinstalled, /var/lib wiped
    # the next start, 5 s later: above all of them (the clock has gone on)
    again = next_generation(str(path), clock=lambda: NOW + 5)
    assert again > max(used) and again == int(NOW) + 5
    assert path.read_text() == f"{again}\n"  # and stored again


def test_an_old_counter_moves_on_to_the_clock(tmp_path: Path) -> None:
    """A state file of the former rule (a counter from 1): the clock is above it."""
    path = tmp_path / "gen"
    path.write_text("7\n")
    assert next_generation(str(path), clock=lambda: NOW) == int(NOW)


@pytest.mark.parametrize("content", ["", "\n", "garbage", "1.5", "-3", str(2**32),
                                     str(10**30)])
def test_an_unreadable_state_file_is_as_a_lost_one(tmp_path: Path, content: str) -> None:
    """Empty (a power loss), corrupt, or out of the wire field's range: the clock."""
    path = tmp_path / "gen"
    path.write_text(content)
    assert next_generation(str(path), clock=lambda: NOW) == int(NOW)
    assert path.read_text() == f"{int(NOW)}\n"


def test_the_generation_fits_the_wire_field(tmp_path: Path) -> None:
    """An unsigned 32-bit field: seconds since the epoch fit it until 2106, then the
    generation stays at its largest value rather than overflowing it."""
    assert wire.HEADER.format.count("I") == 2  # cluster and generation: unsigned 32 bits
    assert MAX_GENERATION == 2**32 - 1
    today = next_generation(str(tmp_path / "a"))  # the real clock
    for gen in (today, MAX_GENERATION):
        hb = wire.Heartbeat("dir0", State.MASTER, 150, 1, gen, 2**64 - 1)
        assert wire.decode(wire.encode(hb, KEY), KEY, 1) == hb
    with pytest.raises(struct.error):
        wire.encode(wire.Heartbeat("dir0", State.MASTER, 150, 1, 2**32, 1), KEY)
    assert next_generation(str(tmp_path / "b"), clock=lambda: 2.0**33) == MAX_GENERATION
    path = tmp_path / "c"
    path.write_text(f"{MAX_GENERATION}\n")
    assert next_generation(str(path), clock=lambda: NOW) == MAX_GENERATION


def test_an_older_generation_is_still_a_replay() -> None:
    """The peer's side is unchanged: a heartbeat of an older generation (a recorded
    one of an earlier run, authenticated as it is) is dropped, whatever its seq; the
    event says which generation came and which one is the newest."""
    n = Node("dir0", 100, ["dir1"], ["private"], T, 0.0)
    gen = int(NOW)
    assert not any(isinstance(a, Event) and a.name == "replay"
                   for a in n.receive(wire.Heartbeat("dir1", State.MASTER, 100, 1, gen, 5),
                                      "private", 0.01))
    for old in (wire.Heartbeat("dir1", State.MASTER, 100, 1, gen - 1, 2**64 - 1),
                wire.Heartbeat("dir1", State.MASTER, 100, 1, gen, 5)):
        ev = n.receive(old, "private", 0.02)
        assert ev == [Event("replay", {"peer": "dir1", "link": "private",
                                       "generation": old.generation, "seq": old.seq,
                                       "newest_generation": gen})]
    assert n.peers["dir1"].generation == gen and n.peers["dir1"].seq == 5


@pytest.mark.parametrize("down", [0.05, 0.5], ids=["back_within_deadtime",
                                                   "back_after_failover"])
def test_a_director_restarted_without_its_state_file_is_heard(tmp_path: Path,
                                                              down: float) -> None:
    """dir0 (the master) runs a while (its sequence numbers go up), crashes, loses its
    state file, and starts again: dir1 hears its new heartbeats, and exactly one of
    the two is MASTER. Before, dir0 started again with the generation it had, its
    sequence numbers from 1: dir1 dropped all of it as replays, took it for dead
    and became MASTER too (dir0, back within deadtime, had become MASTER already and
    outranks dir1: a split), or (back after the failover) never saw it again."""
    sim = Sim(["dir0", "dir1"], {"dir0": 150, "dir1": 100})
    state = {n: tmp_path / f"{n}.state" for n in sim.names}

    def start(name: str) -> int:
        return next_generation(str(state[name]), clock=lambda: NOW + sim.now)

    sim.generation = {n: start(n) for n in sim.names}
    sim.run(3.0)
    assert sim.masters() == {"dir0"}
    assert sim.seq["dir0"] > 50
    before = sim.generation["dir0"]

    sim.power_off("dir0")  # a crash ...
    state["dir0"].unlink()  # ... and the state file is gone
    sim.run(down)
    sim.restart("dir0", start("dir0"))
    assert sim.generation["dir0"] > before
    back = sim.now
    sim.run(1.5)

    dir1 = sim.nodes["dir1"]
    assert dir1.peers["dir0"].alive(sim.now, T.deadtime)
    assert dir1.peers["dir0"].generation == sim.generation["dir0"]
    peer = dir1.status(sim.now)["peers"][0]
    assert peer["name"] == "dir0" and peer["alive"]
    assert len(sim.masters()) == 1 and len(sim.vip) == 1
    # no split at any time once the restarted node settled (INIT, then its decision)
    assert all(len(vip) <= 1 for t, vip, _ in sim.history if t > back + T.keepalive)
    # dir0, back before dir1 noticed, takes the VIP again; after a failover, dir1 keeps it
    assert sim.masters() == ({"dir0"} if down < T.deadtime else {"dir1"})
    # and a standby of the master hands over to the other (it is alive to it)
    master = next(iter(sim.masters()))
    sim.apply(master, sim.nodes[master].standby(sim.now))
    sim.run(0.5)
    assert sim.masters() == set(sim.names) - {master}


# Two real daemons in a network namespace of their own (unshare -rnm: nothing of
# this machine's network is touched), one veth end each: dir0 runs, is killed,
# loses its state file and starts again before dir1's deadtime is up.
IN_NAMESPACE = r"""
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


def test_a_real_daemon_restarted_without_its_state_file_is_heard(tmp_path: Path) -> None:
    unshare = shutil.which("unshare")
    probe = subprocess.run([unshare or "unshare", "-rnm", "true"], capture_output=True) \
        if unshare else None
    if unshare is None or probe is None or probe.returncode != 0:
        pytest.skip("no network and mount namespace of our own here (unshare -rnm)")
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    res = subprocess.run([unshare, "-rnm", sys.executable, "-c", IN_NAMESPACE,
                          str(tmp_path)], capture_output=True, text=True, timeout=60,
                         env=env, cwd=root)
    assert res.stdout, res.stderr
    seen = json.loads(res.stdout)
    assert res.returncode == 0 and "states" in seen, seen["logs"]
    assert seen["again"] > seen["first"] and seen["stored"] == f"{seen['again']}\n"
    assert seen["replays"] == 0, seen["logs"]["dir1"]  # dir1 took none of it for a replay
    assert seen["samples"] > 10 and seen["both_masters"] == 0, seen["logs"]  # never split
    peer = seen["dir1_sees_dir0"]
    assert peer["alive"] and peer["state"] == seen["states"]["dir0"], seen["logs"]
    # one master: dir0 again (back within deadtime), or dir1 (a slow machine: after it)
    assert sorted(seen["states"].values()) == ["BACKUP", "MASTER"], seen["logs"]
