"""The heartbeat state machine on a simulated clock and network (with hypothesis)."""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from heartbeat.fsm import (
    Announce,
    Event,
    EventKind,
    Node,
    PrepareHandover,
    ReleaseVip,
    Send,
    TakeVip,
    Timers,
)
from heartbeat.wire import Heartbeat, State

T = Timers(keepalive=0.05, deadtime=0.2, warntime=0.1, initdead=1.0)
LINKS = ["private", "public"]
DT = 0.005


@dataclass
class Sim:
    """Two (or more) nodes, links that can be cut, delay, loss and duplication."""

    names: list[str]
    priorities: dict[str, int] = field(default_factory=dict)
    loss: float = 0.0
    delay: tuple[float, float] = (0.0005, 0.002)
    dup: float = 0.0
    seed: int = 0
    now: float = 0.0
    prep_time: float = 0.01  # how long a node takes to prepare a handover (its commands)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.nodes = {n: Node(n, self.priorities.get(n, 100), [p for p in self.names if p != n],
                              LINKS, T, 0.0) for n in self.names}
        self.up = {link: True for link in LINKS}
        self.powered = {n: True for n in self.names}
        self.vip: set[str] = set()
        self.seq = {n: 0 for n in self.names}
        self.generation = {n: 1 for n in self.names}
        self.queue: list[tuple[float, int, str, str, Heartbeat]] = []
        self.counter = itertools.count()
        self.announces: list[tuple[float, str]] = []
        self.history: list[tuple[float, frozenset[str], bool]] = []
        self.preparing: list[tuple[float, str, str]] = []  # (ready at, node, from peer)

    def apply(self, name: str, actions: list[object]) -> None:
        node = self.nodes[name]
        for a in actions:
            if isinstance(a, Send):
                self.seq[name] += 1
                hb = Heartbeat(name, a.state, a.priority, 1, self.generation[name],
                               self.seq[name], a.flags)
                for link in LINKS:
                    copies = 2 if self.rng.random() < self.dup else 1
                    for _ in range(copies):
                        if not self.up[link] or self.rng.random() < self.loss:
                            continue
                        t = self.now + self.rng.uniform(*self.delay)
                        for peer in node.peers:
                            heapq.heappush(self.queue, (t, next(self.counter), peer, link, hb))
            elif isinstance(a, TakeVip):
                self.vip.add(name)
            elif isinstance(a, ReleaseVip):
                self.vip.discard(name)
            elif isinstance(a, Announce):
                self.announces.append((self.now, name))
            elif isinstance(a, PrepareHandover):
                self.preparing.append((self.now + self.prep_time, name, a.peer))

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now = round(self.now + DT, 6)
            while self.queue and self.queue[0][0] <= self.now:
                _, _, dst, link, hb = heapq.heappop(self.queue)
                if self.powered[dst] and self.up[link]:
                    self.apply(dst, self.nodes[dst].receive(hb, link, self.now))
            for ready in [p for p in self.preparing if p[0] <= self.now]:
                self.preparing.remove(ready)
                if self.powered[ready[1]]:
                    self.apply(ready[1], self.nodes[ready[1]].handover_prepared(ready[2],
                                                                                self.now))
            for name, node in self.nodes.items():
                if self.powered[name]:
                    self.apply(name, node.tick(self.now))
            self.history.append((self.now, frozenset(self.vip), any(self.up.values())))

    def play(self, script: list[tuple[str, float]]) -> None:
        """Cut or heal links ("cut_private", "cut_public", "cut_all", "heal"), then run."""
        for what, dt in script:
            if what == "heal":
                self.up = {link: True for link in LINKS}
            elif what == "cut_all":
                self.up = {link: False for link in LINKS}
            else:
                self.up[what.split("_")[1]] = False
            self.run(dt)

    def masters(self) -> set[str]:
        return {n for n, node in self.nodes.items()
                if self.powered[n] and node.state is State.MASTER}

    def power_off(self, name: str) -> None:
        self.powered[name] = False
        self.vip.discard(name)  # the address dies with the host

    def restart(self, name: str, generation: int) -> None:
        """The node's daemon starts afresh (as after a crash): INIT, ``generation``, and
        its sequence numbers from 1 again."""
        self.power_off(name)
        self.powered[name] = True
        self.generation[name] = generation
        self.seq[name] = 0
        self.nodes[name] = Node(name, self.priorities.get(name, 100),
                                [p for p in self.names if p != name], LINKS, T, self.now)


def test_start_elects_exactly_one_master_by_priority() -> None:
    sim = Sim(["dir0", "dir1"], {"dir0": 150, "dir1": 100})
    sim.run(1.5)
    assert sim.masters() == {"dir0"} and sim.vip == {"dir0"}
    assert sim.nodes["dir1"].state is State.BACKUP


def test_equal_priorities_break_ties_by_name() -> None:
    sim = Sim(["dir0", "dir1"])
    sim.run(1.5)
    assert sim.masters() == {"dir1"}


def test_alone_becomes_master_after_initdead() -> None:
    sim = Sim(["dir0", "dir1"])
    sim.power_off("dir1")
    sim.run(T.initdead - 0.1)
    assert sim.masters() == set()
    sim.run(0.2)
    assert sim.masters() == {"dir0"}


def test_power_loss_fails_over_within_deadtime() -> None:
    sim = Sim(["dir0", "dir1"], {"dir0": 150, "dir1": 100})
    sim.run(1.5)
    t0 = sim.now
    sim.power_off("dir0")
    sim.run(T.deadtime + 0.02)
    assert sim.masters() == {"dir1"} and sim.vip == {"dir1"}
    took = next(t for t, vip, _ in sim.history if t > t0 and "dir1" in vip)
    assert took - t0 <= T.deadtime + DT


def test_one_link_down_is_no_failover() -> None:
    sim = Sim(["dir0", "dir1"], {"dir0": 150, "dir1": 100})
    sim.run(1.5)
    sim.up["public"] = False
    sim.run(1.0)
    assert sim.masters() == {"dir0"}
    assert sim.nodes["dir1"].status(sim.now)["peers"][0]["links"] == {
        "private": "up", "public": "down"}


def test_partition_then_heal_leaves_one_master_at_once() -> None:
    sim = Sim(["dir0", "dir1"], {"dir0": 150, "dir1": 100})
    sim.run(1.5)
    sim.up = {link: False for link in LINKS}
    sim.run(0.5)
    assert sim.masters() == {"dir0", "dir1"}  # split brain while cut off (documented)
    sim.up = {link: True for link in LINKS}
    heal = sim.now
    sim.run(T.keepalive + 0.02)
    assert sim.masters() == {"dir0"} and sim.vip == {"dir0"}
    assert any(t > heal and n == "dir0" for t, n in sim.announces)  # re-announced


def test_standby_hands_over_without_leaving_the_vip_unowned() -> None:
    sim = Sim(["dir0", "dir1"], {"dir0": 150, "dir1": 100})
    sim.run(1.5)
    t0 = sim.now
    sim.apply("dir0", sim.nodes["dir0"].standby(sim.now))
    sim.run(0.5)
    assert sim.masters() == {"dir1"} and sim.vip == {"dir1"}
    assert all(vip for t, vip, _ in sim.history if t >= t0)
    assert sim.nodes["dir0"].state is State.BACKUP  # auto_failback off: it stays backup
    sim.run(1.0)
    assert sim.masters() == {"dir1"}


def test_fault_hands_over_at_once() -> None:
    sim = Sim(["dir0", "dir1"], {"dir0": 150, "dir1": 100})
    sim.run(1.5)
    t0 = sim.now
    sim.apply("dir0", sim.nodes["dir0"].track("balancer", False, "down", sim.now))
    sim.run(0.05)
    assert sim.masters() == {"dir1"} and sim.nodes["dir0"].state is State.FAULT
    assert next(t for t, vip, _ in sim.history if t > t0 and vip == {"dir1"}) - t0 < 0.01
    sim.apply("dir0", sim.nodes["dir0"].track("balancer", True, "ok", sim.now))
    sim.run(0.2)
    assert sim.nodes["dir0"].state is State.BACKUP and sim.masters() == {"dir1"}


def test_fault_lasts_while_any_tracked_resource_is_down() -> None:
    """Seen on the VMs: a ping node lost, then the balancer check (restarted by a
    reload) reported its first successes, and the node left FAULT with the ping
    node still unreachable."""
    sim = Sim(["dir0", "dir1"], {"dir0": 150, "dir1": 100})
    sim.run(1.5)
    node = sim.nodes["dir0"]
    sim.apply("dir0", node.track("internet", False, "exit 1", sim.now))
    sim.apply("dir0", node.track("balancer", True, "tcp ok", sim.now))
    sim.run(0.2)
    assert node.state is State.FAULT and sim.masters() == {"dir1"}
    assert node.status(sim.now)["fault"] == "internet: exit 1"
    sim.apply("dir0", node.track("balancer", False, "refused", sim.now))
    sim.apply("dir0", node.track("internet", True, "exit 0", sim.now))
    sim.run(0.2)
    assert node.state is State.FAULT  # the balancer is still down
    sim.apply("dir0", node.track("balancer", True, "tcp ok", sim.now))
    sim.run(0.2)
    assert node.state is State.BACKUP


def test_a_reload_that_drops_a_failed_track_ends_the_fault() -> None:
    sim = Sim(["dir0", "dir1"], {"dir0": 150, "dir1": 100})
    sim.run(1.5)
    node = sim.nodes["dir0"]
    sim.apply("dir0", node.track("internet", False, "exit 1", sim.now))
    sim.run(0.1)
    assert node.state is State.FAULT
    sim.apply("dir0", node.forget_tracks({"balancer"}, sim.now))
    sim.run(0.1)
    assert node.state is State.BACKUP


def test_replayed_heartbeat_is_reported() -> None:
    n = Node("dir0", 100, ["dir1"], LINKS, T, 0.0)
    hb = Heartbeat("dir1", State.BACKUP, 100, 1, 5, 10)
    n.receive(hb, "private", 0.01)
    n.receive(hb, "public", 0.01)  # the same heartbeat on the other link: fine
    ev = n.receive(hb, "private", 0.02)
    assert [type(a).__name__ for a in ev] == ["Event"] and ev[0].kind is EventKind.REPLAY  # type: ignore[union-attr]
    older = Heartbeat("dir1", State.BACKUP, 100, 1, 4, 99)
    assert n.receive(older, "private", 0.03)[0].kind is EventKind.REPLAY  # type: ignore[union-attr]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32), st.floats(0, 0.3), st.floats(0, 0.3),
       st.lists(st.tuples(st.sampled_from(["cut_private", "cut_public", "cut_all", "heal"]),
                          st.floats(0.05, 0.6)), max_size=6))
def test_invariants_under_loss_duplication_and_partitions(
        seed: int, loss: float, dup: float, script: list[tuple[str, float]]) -> None:
    sim = Sim(["dir0", "dir1"], {"dir0": 150, "dir1": 100}, loss=loss, dup=dup, seed=seed)
    sim.run(1.2)
    sim.play(script)
    sim.up = {link: True for link in LINKS}
    sim.loss = 0.0
    sim.run(T.deadtime * 3)
    # healthy links for a while: exactly one master, and it holds the VIP
    assert len(sim.masters()) == 1 and sim.vip == sim.masters()


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32),
       st.lists(st.tuples(st.sampled_from(["cut_private", "cut_public", "cut_all", "heal"]),
                          st.floats(0.05, 0.6)), max_size=6))
def test_two_masters_never_last_while_a_link_is_up(seed: int,
                                                   script: list[tuple[str, float]]) -> None:
    sim = Sim(["dir0", "dir1"], {"dir0": 150, "dir1": 100}, seed=seed)
    sim.run(1.2)
    sim.play(script)
    longest = run = 0.0
    for _, vip, link_up in sim.history:
        run = run + DT if (len(vip) > 1 and link_up) else 0.0
        longest = max(longest, run)
    # after a partition heals, one heartbeat settles it
    assert longest <= T.keepalive + sim.delay[1] + 2 * DT


def test_standby_hands_over_with_forwarding_and_drain() -> None:
    sim = Sim(["dir0", "dir1"], {"dir0": 150, "dir1": 100})
    sim.run(1.5)
    taken: list[TakeVip] = []
    released: list[ReleaseVip] = []
    orig = sim.apply

    def spy(name: str, actions: list[object]) -> None:
        taken.extend(a for a in actions if isinstance(a, TakeVip))
        released.extend(a for a in actions if isinstance(a, ReleaseVip))
        orig(name, actions)

    sim.apply = spy  # type: ignore[method-assign]
    sim.apply("dir0", sim.nodes["dir0"].standby(sim.now))
    sim.run(0.3)
    assert taken == [TakeVip(handover_from="dir0")] and released == [ReleaseVip(drain=True)]
    taken.clear()
    released.clear()
    sim.power_off("dir1")
    sim.run(T.deadtime + 0.05)
    assert taken == [TakeVip(handover_from=None)]  # a dead peer has nothing to drain


def test_a_slow_handover_preparation_still_hands_over_gracefully() -> None:
    """Preparing takes longer than deadtime (seen on emulated VMs: its commands blocked
    the daemon past deadtime and the standing-by master gave up): the candidate stays
    BACKUP meanwhile and keeps its heartbeats going, the master keeps the VIP and waits,
    then the VIP moves once, with forwarding and drain."""
    sim = Sim(["dir0", "dir1"], {"dir0": 150, "dir1": 100}, prep_time=3 * T.deadtime)
    sim.run(1.5)
    events: list[str] = []
    orig = sim.apply

    def spy(name: str, actions: list[object]) -> None:
        events.extend(f"{name}:{a.kind.value}" for a in actions if isinstance(a, Event))
        events.extend(f"{name}:{a!r}" for a in actions
                      if isinstance(a, (TakeVip, ReleaseVip, PrepareHandover)))
        orig(name, actions)

    sim.apply = spy  # type: ignore[method-assign]
    t0 = sim.now
    sim.apply("dir0", sim.nodes["dir0"].standby(sim.now))
    sim.run(2 * T.deadtime)  # still preparing
    assert sim.vip == {"dir0"} and sim.nodes["dir1"].state is State.BACKUP
    assert "dir0:standby_failed" not in events and "dir0:peer_dead" not in events
    sim.run(2 * T.deadtime)
    assert sim.vip == {"dir1"} and sim.masters() == {"dir1"}
    assert all(vip for t, vip, _ in sim.history if t >= t0)
    moves = [e for e in events if "Vip" in e or "Prepare" in e]
    assert moves == ["dir1:PrepareHandover(peer='dir0')",
                     "dir1:TakeVip(handover_from='dir0')", "dir0:ReleaseVip(drain=True)"]


def test_preempt_takes_the_vip_from_a_lower_priority_master() -> None:
    sim = Sim(["dir0", "dir1"], {"dir0": 150, "dir1": 100})
    sim.power_off("dir0")
    sim.run(1.5)
    assert sim.masters() == {"dir1"}
    # dir0 comes back: without preempt it stays BACKUP (auto_failback off) ...
    sim.powered["dir0"] = True
    sim.nodes["dir0"] = Node("dir0", 150, ["dir1"], LINKS, T, sim.now)
    sim.run(1.5)
    assert sim.masters() == {"dir1"}
    # ... with preempt it takes over, and the VIP is never on two hosts for long
    sim.nodes["dir0"].preempt = True
    sim.run(0.5)
    assert sim.masters() == {"dir0"} and sim.vip == {"dir0"}


def test_a_new_master_says_so_before_it_announces_or_starts_resources() -> None:
    """The old master lets go of the VIP when it hears the new one hold it: the
    heartbeat follows TakeVip at once, before the slower announce and resources."""
    sim = Sim(["dir0", "dir1"], {"dir0": 150, "dir1": 100})
    sim.run(1.5)
    seen: dict[str, list[object]] = {"dir0": [], "dir1": []}
    orig = sim.apply

    def spy(name: str, actions: list[object]) -> None:
        seen[name].extend(actions)
        orig(name, actions)

    sim.apply = spy  # type: ignore[method-assign]
    sim.apply("dir0", sim.nodes["dir0"].standby(sim.now))
    sim.run(0.3)
    kinds = [type(a).__name__ for a in seen["dir1"] if not isinstance(a, Event)]
    take = kinds.index("TakeVip")
    assert kinds[take:take + 4] == ["TakeVip", "Send", "Announce", "StartResources"]
    sends = [a for a in seen["dir1"][seen["dir1"].index(TakeVip("dir0")):]
             if isinstance(a, Send)]
    assert sends[0].state is State.MASTER
    assert sim.masters() == {"dir1"}
