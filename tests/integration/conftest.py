"""The live lab for the integration suite.

The netns lab is brought up for the session and torn down after it (unless
``--keep-lab``, or unless it was already up, in which case it is left as it
was found). Needs root.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import topology as topo_mod
from lab.backend import Backend
from lab.backends import KINDS, make_backend
from lab.poll import wait_until
from provision import provision


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("halab")
    group.addoption("--lab", choices=KINDS, default=os.environ.get("HALAB_LAB", "netns"),
                    help="lab backend to test (default: $HALAB_LAB or netns)")
    group.addoption("--keep-lab", action="store_true",
                    help="leave the lab up after the session")
    group.addoption("--artifacts", default=os.environ.get("HALAB_ARTIFACTS", "artifacts"),
                    help="where failover timelines (JSON, text, PNG) go (default: artifacts)")


# One row per measured behaviour, printed as the session's summary table.
SUMMARY: list[dict[str, str]] = []


@pytest.fixture(scope="session")
def artifacts(request: pytest.FixtureRequest) -> Path:
    path = Path(request.config.getoption("--artifacts")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Callable[..., None]:
    """``record(check="failover", what="power loss", outage_ms=213, ...)``: a summary row."""
    def add(**values: object) -> None:
        SUMMARY.append({"test": request.node.name, **{k: str(v) for k, v in values.items()}})
    return add


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not SUMMARY:
        return
    tr = terminalreporter
    tr.section("halab: what was measured")
    for row in SUMMARY:
        check = row.get("check", "")
        rest = ", ".join(f"{k} {v}" for k, v in row.items() if k not in ("test", "check"))
        tr.write_line(f"{check:<12} {rest}")


@pytest.fixture(scope="session")
def lab(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if os.geteuid() != 0:
        pytest.fail("the integration suite needs root (it builds a network-namespace lab)")
    backend = make_backend(request.config.getoption("--lab"),
                           topo_mod.load(os.environ.get("HALAB_TOPOLOGY")))
    was_up = backend.is_up()
    backend.up()
    provision(backend)
    yield backend
    if not was_up and not request.config.getoption("--keep-lab"):
        backend.down()


@pytest.fixture(scope="session")
def topo(lab: Backend) -> topo_mod.Topology:
    return lab.topology


def vip_holders(lab: Backend) -> list[str]:
    """The directors that have the VIP on an interface right now."""
    topo = lab.topology
    vip = str(topo.vip.address)
    return [d.name for d in topo.directors
            if vip in lab.run(d.name, ["ip", "-4", "-o", "addr", "show"], check=False).text]


@pytest.fixture
def vip_holder(lab: Backend) -> str:
    """The director that holds the VIP (heartbeat has elected exactly one)."""
    def one() -> list[str] | None:
        holders = vip_holders(lab)
        return holders if len(holders) == 1 else None

    return wait_until(one, 10, "exactly one director holding the VIP")[0]
