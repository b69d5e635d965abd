"""The heartbeat rules one at a time: the ranking, the event names, the handover."""

from __future__ import annotations

import json

from heartbeat.fsm import Event, EventKind, Node, Peer, ReleaseVip, Send, rank
from heartbeat.wire import FLAG_LEAVING, FLAG_TAKEOVER, Heartbeat, State
from tests.unit.test_heartbeat_fsm import LINKS, T


def master(name: str, priority: int, peers: list[str]) -> Node:
    """A node that became MASTER alone, after initdead."""
    n = Node(name, priority, peers, LINKS, T, 0.0)
    n.tick(T.initdead)
    assert n.state is State.MASTER
    return n


def heard(n: Node, peer: str, state: State, priority: int, now: float, flags: int = 0,
          seq: int = 1) -> list[object]:
    return list(n.receive(Heartbeat(peer, state, priority, 1, 1, seq, flags), "private", now))


def transitions(actions: list[object]) -> list[dict[str, object]]:
    return [a.fields for a in actions
            if isinstance(a, Event) and a.kind is EventKind.TRANSITION]


def test_event_kinds_are_the_logged_names() -> None:
    assert [k.value for k in EventKind] == [
        "transition", "peer_alive", "peer_late", "peer_dead", "link_down", "link_up",
        "unknown_peer", "replay", "standby", "standby_ignored", "standby_failed",
        "takeover_ignored", "master_conflict", "handover_preparing"]
    for k in EventKind:
        assert str(k) == f"{k}" == k.value and json.dumps(k) == f'"{k.value}"'


def test_rank_orders_by_priority_then_name_and_takeover_only_between_masters() -> None:
    low = Peer("dir0", priority=100, flags=FLAG_TAKEOVER)
    high = Peer("dir1", priority=150)
    assert rank(high, as_master=False) > rank(low, as_master=False)
    assert rank(low, as_master=True) > rank(high, as_master=True)
    assert rank(Peer("dir1", priority=100), as_master=False) > rank(
        Peer("dir0", priority=100), as_master=False)
    assert rank(Peer("dir0", priority=100, flags=FLAG_LEAVING), as_master=True) == (
        0, 100, "dir0")


def test_a_candidate_is_ranked_without_the_takeover_flag() -> None:
    n = Node("dir0", 150, ["dir1"], LINKS, T, 0.0)
    out = heard(n, "dir1", State.BACKUP, 100, 0.01, flags=FLAG_TAKEOVER)
    assert transitions(out) == [{"from": "INIT", "to": "MASTER", "reason": "best candidate"}]


def test_preempt_ranks_the_master_without_its_takeover_flag() -> None:
    n = Node("dir0", 150, ["dir1"], LINKS, T, 0.0, preempt=True)
    heard(n, "dir1", State.MASTER, 100, 0.01, flags=FLAG_TAKEOVER)
    assert n.state is State.BACKUP
    out = n.tick(0.02)
    assert transitions(out) == [{"from": "BACKUP", "to": "MASTER",
                                 "reason": "preempting dir1"}]
    assert n.flags & FLAG_TAKEOVER


def test_of_two_masters_the_one_that_took_over_is_the_master() -> None:
    n = master("dir0", 200, ["dir1", "dir2"])
    heard(n, "dir1", State.MASTER, 150, 1.01)
    assert n.state is State.MASTER  # dir1 is below us: a conflict, we keep the VIP
    out = heard(n, "dir2", State.MASTER, 100, 1.02, flags=FLAG_TAKEOVER)
    assert transitions(out) == [{"from": "MASTER", "to": "BACKUP",
                                 "reason": "dir2 outranks us as master"}]


def test_a_master_that_took_over_keeps_the_vip_against_a_better_one() -> None:
    n = master("dir0", 100, ["dir1"])
    n.flags |= FLAG_TAKEOVER
    out = heard(n, "dir1", State.MASTER, 150, 1.01)
    assert n.state is State.MASTER
    assert [a.kind for a in out if isinstance(a, Event)] == [EventKind.PEER_ALIVE,
                                                             EventKind.MASTER_CONFLICT]


def test_standing_by_hands_over_to_any_new_master_with_drain() -> None:
    for peer_priority in (50, 250):  # below us or above: the same handover
        n = master("dir0", 150, ["dir1"])
        n.standby(1.0)
        out = heard(n, "dir1", State.MASTER, peer_priority, 1.01)
        assert transitions(out) == [{"from": "MASTER", "to": "BACKUP",
                                     "reason": "handed over to dir1"}]
        assert ReleaseVip(drain=True) in out and not n.flags


def test_leaving_hands_over_then_stops() -> None:
    n = master("dir0", 150, ["dir1"])
    n.shutdown(1.0)
    out = heard(n, "dir1", State.MASTER, 100, 1.01)
    assert transitions(out) == [{"from": "MASTER", "to": "STOPPED",
                                 "reason": "handed over to dir1"}]
    assert ReleaseVip(drain=True) in out
    assert [a for a in out if isinstance(a, Send)][-1].state is State.STOPPED
