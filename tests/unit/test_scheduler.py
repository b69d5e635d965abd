"""The balancer's scheduler: sequences, backups, states, maxconn, leastconn, hashing."""

from __future__ import annotations

import collections

from hypothesis import given, settings
from hypothesis import strategies as st

from balancer.scheduler import Admin, Scheduler, Server, Verdict


def servers(*weights: int, backup: tuple[int, ...] = ()) -> list[Server]:
    return [Server(name=chr(ord("a") + i), host="h", port=i + 1, weight=w, backup=i in backup)
            for i, w in enumerate(weights)]


def sequence(s: Scheduler, n: int, now: float = 0.0, client: str | None = None) -> str:
    out = []
    for _ in range(n):
        p = s.pick(now, client)
        assert p.verdict is Verdict.OK and p.server is not None
        out.append(p.server.name)
    return "".join(out)


def test_equal_weights_alternate_exactly() -> None:
    assert sequence(Scheduler(servers(1, 1)), 10) == "ababababab"
    assert sequence(Scheduler(servers(3, 3, 3)), 9) == "abcabcabc"


def test_smooth_weighted_sequence_is_nginx() -> None:
    # nginx's documented example: weights 5, 1, 1 -> a a b a c a a
    assert sequence(Scheduler(servers(5, 1, 1)), 7) == "aabacaa"
    assert sequence(Scheduler(servers(2, 1)), 6) == "abaaba"


@given(st.lists(st.integers(1, 10), min_size=1, max_size=6))
def test_weights_give_exact_shares_per_cycle(weights: list[int]) -> None:
    s = Scheduler(servers(*weights))
    counts = collections.Counter(sequence(s, sum(weights)))
    assert [counts[chr(ord("a") + i)] for i in range(len(weights))] == weights


def test_backup_only_when_primaries_are_down() -> None:
    srv = servers(1, 1, 1, backup=(2,))
    s = Scheduler(srv)
    assert "c" not in sequence(s, 10)
    s.set_up(srv[0], False, 0.0)
    assert sequence(s, 4) == "bbbb"
    srv[1].admin = Admin.MAINT
    assert sequence(s, 3) == "ccc"
    s.set_up(srv[0], True, 1.0)
    assert sequence(s, 3, now=1.0) == "aaa"


def test_drain_and_maint_get_no_new_requests() -> None:
    srv = servers(1, 1, 1)
    s = Scheduler(srv)
    srv[0].admin = Admin.DRAIN
    srv[1].admin = Admin.MAINT
    assert sequence(s, 5) == "ccccc"
    srv[0].admin = Admin.READY
    assert set(sequence(s, 4)) == {"a", "c"}


def test_every_server_down_is_tried_anyway_once_each() -> None:
    """A DOWN verdict may be a check's mistake: with none UP, each READY server is
    tried once per request (exclude) before the answer is NONE (a 503)."""
    srv = servers(1, 1, 1)
    s = Scheduler(srv)
    for x in srv:
        s.set_up(x, False, 0.0)
    tried: list[str] = []
    for _ in range(3):
        p = s.pick(0.0, exclude=tried)
        assert p.verdict is Verdict.OK and p.last_resort and p.server is not None
        tried.append(p.server.name)
    assert sorted(tried) == ["a", "b", "c"]
    assert s.pick(0.0, exclude=tried).verdict is Verdict.NONE
    # a request that tries again without excluding takes its turn in the rotation
    assert set(sequence(s, 6)) == {"a", "b", "c"}


def test_last_resort_only_when_none_is_up_and_never_drained_or_maint() -> None:
    srv = servers(1, 1, 1, 1, backup=(3,))
    s = Scheduler(srv)
    s.set_up(srv[0], False, 0.0)
    p = s.pick(0.0)
    assert p.verdict is Verdict.OK and not p.last_resort and p.server is not srv[0]
    for x in srv[:3]:
        s.set_up(x, False, 0.0)
    p = s.pick(0.0)  # an UP backup is usable: no last resort
    assert p.server is srv[3] and not p.last_resort
    s.set_up(srv[3], False, 0.0)
    srv[1].admin, srv[2].admin = Admin.DRAIN, Admin.MAINT
    picks = {s.pick(0.0).server.name for _ in range(4)}  # type: ignore[union-attr]
    assert picks == {"a"}  # DOWN primaries before DOWN backups; drain/maint never
    srv[0].admin = Admin.MAINT
    p = s.pick(0.0)
    assert p.server is srv[3] and p.last_resort
    srv[3].admin = Admin.DRAIN
    assert s.pick(0.0).verdict is Verdict.NONE


def test_maxconn_full_means_queue() -> None:
    srv = servers(1, 1)
    for x in srv:
        x.maxconn = 1
    s = Scheduler(srv)
    a = s.pick(0.0).server
    assert a is not None
    s.acquire(a)
    b = s.pick(0.0).server
    assert b is not None and b is not a
    s.acquire(b)
    assert s.pick(0.0).verdict is Verdict.FULL
    s.release(a)
    assert s.pick(0.0).server is a


def test_weight_zero_is_never_chosen_while_others_are_usable() -> None:
    assert sequence(Scheduler(servers(0, 1)), 5) == "bbbbb"


def test_exclude_redispatches() -> None:
    s = Scheduler(servers(1, 1, 1))
    for _ in range(6):
        p = s.pick(0.0, exclude=["a"])
        assert p.server is not None and p.server.name != "a"
    # every usable server failed this request already: one of them again, not a 503
    again = s.pick(0.0, exclude=["a", "b", "c"])
    assert again.verdict is Verdict.OK and not again.last_resort


def test_slowstart_ramps_the_weight() -> None:
    srv = servers(10, 10)
    srv[0].slowstart = 10.0
    s = Scheduler(srv)
    s.set_up(srv[0], False, 0.0)
    s.set_up(srv[0], True, 100.0)
    assert srv[0].effective_weight(100.0) == 1
    assert srv[0].effective_weight(105.0) == 5
    assert srv[0].effective_weight(111.0) == 10
    early = collections.Counter(sequence(s, 110, now=101.0))
    assert early["a"] < early["b"] / 3


@settings(max_examples=200)
@given(st.lists(st.integers(0, 20), min_size=2, max_size=6),
       st.lists(st.integers(1, 5), min_size=6, max_size=6))
def test_leastconn_picks_a_least_loaded_server(active: list[int], weights: list[int]) -> None:
    srv = servers(*weights[:len(active)])
    for x, a in zip(srv, active, strict=True):
        x.active = a
    s = Scheduler(srv, "leastconn")
    p = s.pick(0.0)
    assert p.server is not None
    best = min(x.active / x.weight for x in srv)
    assert p.server.active / p.server.weight == best


def test_leastconn_alternates_when_idle() -> None:
    assert sequence(Scheduler(servers(1, 1), "leastconn"), 4) == "abab"


@settings(max_examples=100)
@given(st.lists(st.ip_addresses(v=4).map(str), min_size=1, max_size=40, unique=True),
       st.integers(2, 6), st.data())
def test_source_hash_is_sticky_and_moves_only_the_lost_servers_clients(
        clients: list[str], n: int, data: st.DataObject) -> None:
    srv = servers(*[1] * n)
    s = Scheduler(srv, "source")
    before = {c: s.pick(0.0, c).server for c in clients}
    assert before == {c: s.pick(0.0, c).server for c in clients}  # sticky
    gone = data.draw(st.sampled_from(srv))
    s.set_up(gone, False, 0.0)
    after = {c: s.pick(0.0, c).server for c in clients}
    for c in clients:
        if before[c] is not gone:
            assert after[c] is before[c]
        else:
            assert after[c] is not gone
