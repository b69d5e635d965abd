"""Rise/fall counting (daemonkit.risefall), shared by the balancer's health and the
heartbeat's tracked resources."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from daemonkit.risefall import RiseFall


def test_fall_failures_in_a_row_make_it_down_and_rise_successes_up() -> None:
    rf = RiseFall(rise=2, fall=3, up=True)
    assert [rf.result(False) for _ in range(3)] == [False, False, True] and rf.up is False
    assert [rf.result(True) for _ in range(2)] == [False, True] and rf.up is True


def test_a_result_the_other_way_starts_the_count_over() -> None:
    rf = RiseFall(rise=2, fall=2, up=True)
    rf.result(False)
    rf.result(True)
    assert not rf.result(False) and rf.up is True and rf.failures == 1


def test_an_unknown_state_counts_both_ways() -> None:
    assert RiseFall(rise=3, fall=1).result(False)
    rf = RiseFall(rise=1, fall=3)
    assert rf.result(True) and rf.up is True


def test_set_is_an_outside_verdict_and_counts_start_over() -> None:
    rf = RiseFall(rise=2, fall=2, up=True)
    rf.result(False)
    rf.set(False)
    assert rf.up is False and rf.failures == 0 and rf.successes == 0


@given(st.integers(1, 5), st.integers(1, 5), st.lists(st.booleans(), max_size=60))
def test_the_state_changes_exactly_after_a_run_long_enough(rise: int, fall: int,
                                                           results: list[bool]) -> None:
    rf = RiseFall(rise, fall, up=True)
    up, run, last = True, 0, None
    for ok in results:
        run = run + 1 if ok == last else 1
        last = ok
        changed = rf.result(ok)
        want = ok != up and run >= (rise if ok else fall)
        assert changed == want
        if changed:
            up, run, last = ok, 0, None
        assert rf.up is up
