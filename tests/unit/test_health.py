"""The health state machine: rise/fall, check intervals, passive observation."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from balancer.health import Health, HealthParams

P = HealthParams(inter=0.2, fastinter=0.1, downinter=0.5, rise=2, fall=3)


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


def test_a_timed_out_check_while_traffic_is_answered_is_inconclusive() -> None:
    """Passive evidence counts both ways: a check that got no answer while real traffic
    was answered (a loaded host, a slow check) neither fails the server nor passes it;
    the next check comes soon."""
    h = Health(P, 2, 0.0)
    for t in (1.0, 2.0, 3.0, 4.0):  # fall = 3, and more
        h.observe(True, "http 200", t + 0.05)  # answered while the check was out
        assert h.check_result(False, "check timeout", t + 0.15, timed_out_from=t) is None
        assert h.up and h.failures == 0 and h.next_delay() == P.fastinter
        assert "inconclusive" in h.last_check
    assert h.check_result(True, "http 200", 5.0) is None
    assert h.next_delay() == P.inter


def test_a_timed_out_check_counts_without_traffic_answered_during_it() -> None:
    h = Health(P, 2, 0.0)
    h.observe(True, "http 200", 0.99)  # before the check began: the server may have died
    assert h.check_result(False, "check timeout", 1.15, timed_out_from=1.0) is None
    assert h.failures == 1
    assert h.check_result(False, "check timeout", 1.4, timed_out_from=1.25) is None
    tr = h.check_result(False, "check timeout", 1.65, timed_out_from=1.5)
    assert tr is not None and not tr.up


def test_a_refused_check_counts_whatever_the_traffic() -> None:
    h = Health(P, 0, 0.0)  # passive errors off: only the checks decide
    for t in (1.0, 2.0):
        h.observe(True, "http 200", t + 0.01)
        assert h.check_result(False, "connection refused", t + 0.02) is None
    h.observe(True, "http 200", 3.01)
    tr = h.check_result(False, "connection refused", 3.02)
    assert tr is not None and not tr.up


def test_an_inconclusive_check_leaves_a_down_server_down() -> None:
    h = Health(P, 2, 0.0)
    h.force(False, "down", 0.0)
    h.check_result(True, "http 200", 1.0)
    h.observe(True, "http 200", 1.1)  # a last-resort request it answered
    assert h.check_result(False, "check timeout", 1.3, timed_out_from=1.05) is None
    assert not h.up and h.successes == 1
    tr = h.check_result(True, "http 200", 1.4)
    assert tr is not None and tr.up


def test_a_check_the_balancer_could_not_make_counts_neither_way() -> None:
    """No file descriptor left for the check's socket: the balancer's trouble, not the
    server's. Neither a failure (an UP server stays UP) nor a success (a DOWN one keeps
    its count), and the next check comes soon."""
    h = Health(P, 2, 0.0)
    h.check_result(False, "connection refused", 1.0)
    for t in (2.0, 3.0, 4.0, 5.0):  # fall = 3, and more
        h.check_inconclusive("out of file descriptors", t)
        assert h.up and h.failures == 1 and h.next_delay() == P.fastinter
        assert "inconclusive" in h.last_check and h.last_check_at == t
    tr = h.check_result(False, "connection refused", 6.0)  # real failures still count
    assert tr is None and h.failures == 2
    h.force(False, "down", 7.0)
    h.check_result(True, "http 200", 8.0)
    h.check_inconclusive("out of file descriptors", 9.0)
    assert not h.up and h.successes == 1
    tr = h.check_result(True, "http 200", 10.0)
    assert tr is not None and tr.up
