"""The live lab for the integration suite.

The netns lab is brought up for the session and torn down after it (unless
``--keep-lab``, or unless it was already up, in which case it is left as it
was found). Needs root.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

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
