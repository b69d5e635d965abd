"""A node's generation never goes back, even when its state file is lost (issue 13).

A peer drops heartbeats whose (generation, seq) is not above the newest it saw, as
replays: a director that lost its state file and started again with an older
generation was not heard by its peer, and both became MASTER.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from heartbeat import wire
from heartbeat.fsm import Event, EventKind, Node
from heartbeat.identity import MAX_GENERATION, next_generation
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
    assert not any(isinstance(a, Event) and a.kind is EventKind.REPLAY
                   for a in n.receive(wire.Heartbeat("dir1", State.MASTER, 100, 1, gen, 5),
                                      "private", 0.01))
    for old in (wire.Heartbeat("dir1", State.MASTER, 100, 1, gen - 1, 2**64 - 1),
                wire.Heartbeat("dir1", State.MASTER, 100, 1, gen, 5)):
        ev = n.receive(old, "private", 0.02)
        assert ev == [Event(EventKind.REPLAY, {"peer": "dir1", "link": "private",
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
