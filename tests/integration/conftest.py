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


@pytest.fixture(scope="session")
def vip_holder(lab: Backend) -> Iterator[str]:
    """The director that holds the VIP.

    Until the heartbeat daemon exists (issue 4) the suite puts the VIP on the
    first director itself and takes it away afterwards.
    """
    topo = lab.topology
    holder = topo.directors[0]
    iface = holder.interface(topo.vip.network.name)
    assert iface is not None
    cidr = f"{topo.vip.address}/{topo.vip.network.subnet.prefixlen}"
    lab.run(holder.name, ["ip", "addr", "replace", cidr, "dev", iface.name])
    yield holder.name
    lab.run(holder.name, ["ip", "addr", "del", cidr, "dev", iface.name], check=False)
