"""Waiting for a condition with a deadline (never a bare sleep standing in for it)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Timeout(AssertionError):
    """The condition did not hold in time; says what was expected and what was seen."""


def wait_until(predicate: Callable[[], T], timeout: float, what: str,
               interval: float = 0.02) -> T:
    """Call ``predicate`` until it returns something truthy; return that value."""
    deadline = time.monotonic() + timeout
    last: T = predicate()
    while not last:
        if time.monotonic() >= deadline:
            raise Timeout(f"expected {what} within {timeout:.2f} s; last saw {last!r}")
        time.sleep(interval)
        last = predicate()
    return last
