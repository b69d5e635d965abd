"""Fixtures of the balancer's daemon tests (loopback)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .backends import Backend


@pytest.fixture(scope="module")
def pair() -> Iterator[list[Backend]]:
    """Two real HTTP servers, web0 and web1, for a test module's balancers."""
    backends = [Backend("web0").start(), Backend("web1").start()]
    yield backends
    for b in backends:
        b.stop()
