"""The health state machine: rise/fall, check intervals, passive observation."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from balancer.config import HealthConfig
from balancer.health import Health

P = HealthConfig(inter=0.2, fastinter=0.1, downinter=0.5, rise=2, fall=3, timeout=0.15)


def test_starts_up_and_falls_after_fall_failures() -> None:
    h = Health(P, error_limit=2, now=0.0)
    assert h.up and h.next_delay() == P.inter
    assert h.check_result(False, "refused", 1.0) is None
    assert h.next_delay() == P.fastinter  # changing state: check faster
    assert h.check_result(False, "refused", 1.1) is None
    tr = h.check_result(False, "refused", 1.2)
    assert tr is not None and not tr.up and tr.at == 1.2 and "3 failed checks" in tr.reason
    assert not h.up and h.next_delay() == P.downinter


def test_a_success_resets_the_fall_count() -> None:
    h = Health(P, 2, 0.0)
    h.check_result(False, "x", 1)
    h.check_result(False, "x", 2)
    h.check_result(True, "ok", 3)
    assert h.check_result(False, "x", 4) is None
    assert h.up


def test_rises_after_rise_good_checks() -> None:
    h = Health(P, 2, 0.0)
    h.force(False, "test", 0.0)
    assert h.check_result(True, "http 200", 1) is None
    assert h.next_delay() == P.fastinter
    tr = h.check_result(True, "http 200", 2)
    assert tr is not None and tr.up
    assert h.next_delay() == P.inter


def test_passive_errors_eject_at_once() -> None:
    h = Health(P, error_limit=2, now=0.0)
    assert h.observe(False, "connection refused", 1.0) is None
    tr = h.observe(False, "connection refused", 1.01)
    assert tr is not None and not tr.up and "errors on traffic" in tr.reason


def test_good_traffic_resets_passive_count_and_limit_zero_disables() -> None:
    h = Health(P, error_limit=2, now=0.0)
    h.observe(False, "x", 1)
    h.observe(True, "ok", 2)
    assert h.observe(False, "x", 3) is None
    off = Health(P, error_limit=0, now=0.0)
    for t in range(10):
        assert off.observe(False, "x", t) is None


def test_traffic_cannot_bring_a_server_back() -> None:
    h = Health(P, 2, 0.0)
    h.force(False, "down", 0.0)
    for t in range(5):
        assert h.observe(True, "ok", t) is None
    assert not h.up


@given(st.lists(st.booleans(), max_size=60))
def test_state_only_changes_after_enough_consecutive_results(results: list[bool]) -> None:
    h = Health(P, 2, 0.0)
    run_ok = run_bad = 0
    for i, ok in enumerate(results):
        was = h.up
        run_ok, run_bad = (run_ok + 1, 0) if ok else (0, run_bad + 1)
        tr = h.check_result(ok, "r", float(i))
        if tr is not None:
            assert tr.up != was
            assert (run_ok >= P.rise) if tr.up else (run_bad >= P.fall)
            run_ok = run_bad = 0
        assert (tr is not None) == (h.up != was)
