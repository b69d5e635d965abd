"""The live lab for the proof suite, on any backend.

Which lab: ``--lab KIND``, else ``$HALAB_LAB``, else this checkout's Vagrant lab when
it is up (``vagrant up``, then ``tox -e integration``: every VM running), else the
embedded netns lab (``lab.backends.choose_lab``). The session's header says which and
why (``halab lab: KIND — why``), and so does its summary.

``netns``: the embedded lab is brought up for the session and torn down after it
(unless ``--keep-lab``, or unless it was already up, in which case it is left as it
was found); it needs root, and a run without stops at once saying so. Against a lab
that runs elsewhere (VMs, real hosts) the suite uses it as it is and leaves it so:
every fault a test injects goes through the ``faults`` fixture and is healed when the
test ends, passed or failed.

The session ends with a table of what was measured, one per check.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.faults import Faults
from harness.poll import wait_until
from harness.traffic import vip_holders
from lab import topology as topo_mod
from lab.backend import Backend
from lab.backends import (
    KINDS,
    LAB_ENV,
    choose_lab,
    make_backend,
    root_refusal,
    vagrant_lab_up,
)
from lab.backends.ssh import inventory as inv_mod
from lab.errors import HalabError
from provision import provision

from .common import rejoin_budget, wait_serving, wait_state


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("halab")
    group.addoption("--lab", choices=KINDS, default=None,
                    help="lab backend to test (default: $HALAB_LAB, else this checkout's "
                         "Vagrant lab if it is up, else netns)")
    group.addoption("--inventory", default=os.environ.get(inv_mod.ENV),
                    help="--lab ssh: how SSH reaches the hosts (default: $HALAB_INVENTORY)")
    group.addoption("--keep-lab", action="store_true",
                    help="leave the lab up after the session")
    group.addoption("--artifacts", default=os.environ.get("HALAB_ARTIFACTS", "artifacts"),
                    help="where failover timelines (JSON, text, PNG) go (default: artifacts)")


LAB_CHOICE = pytest.StashKey[tuple[str, str]]()


def pytest_configure(config: pytest.Config) -> None:
    """Which lab this session tests, and why: decided once, before anything runs."""
    try:
        config.stash[LAB_CHOICE] = choose_lab(
            config.getoption("--lab"), os.environ.get(LAB_ENV),
            lambda: vagrant_lab_up(topo_mod.load(os.environ.get("HALAB_TOPOLOGY"))))
    except HalabError as e:  # $HALAB_LAB names no backend, the topology does not load
        raise pytest.UsageError(str(e)) from None


def pytest_collection_finish(session: pytest.Session) -> None:
    """A lab that cannot be had stops the session at once, in one line, before any test
    runs (not one error per test); listing tests, or running none of the suite's (a
    `pytest` of the whole tree with unit tests selected), needs no lab."""
    config = session.config
    refusal = root_refusal(config.stash[LAB_CHOICE][0], os.geteuid())
    suite = [i for i in session.items if "lab" in getattr(i, "fixturenames", ())]
    if refusal is not None and suite and not config.option.collectonly:
        pytest.exit(refusal, returncode=pytest.ExitCode.USAGE_ERROR)


def lab_line(config: pytest.Config) -> str:
    kind, why = config.stash[LAB_CHOICE]
    return f"halab lab: {kind} — {why}"  # CI greps the header for `halab lab: KIND`


def pytest_report_header(config: pytest.Config) -> str:
    return lab_line(config)


# One row per measured behaviour, printed as the session's summary tables.
CHECKS = ["round robin", "ejection", "failover", "firewall"]  # the order of the tables
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


def summary_tables(rows: list[dict[str, str]]) -> list[str]:
    """One aligned table per check, its columns the union of its rows' keys."""
    out: list[str] = []
    checks = dict.fromkeys(r.get("check", "") for r in rows)
    for check in sorted(checks, key=lambda c: (CHECKS.index(c) if c in CHECKS else 99, c)):
        group = [r for r in rows if r.get("check", "") == check]
        cols = [k for k in dict.fromkeys(k for r in group for k in r) if k not in ("check",
                                                                                   "test")]
        width = {c: max(len(c), *(len(r.get(c, "-")) for r in group)) for c in cols}
        out.append(check.upper())
        out.append("  ".join(c.ljust(width[c]) for c in cols))
        out.append("  ".join("-" * width[c] for c in cols))
        out += ["  ".join(r.get(c, "-").ljust(width[c]) for c in cols) for r in group]
        out.append("")
    return out


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    terminalreporter.section("halab: what was measured")
    terminalreporter.write_line(lab_line(config))
    if SUMMARY:
        terminalreporter.write_line("")
    for line in summary_tables(SUMMARY):
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def lab(request: pytest.FixtureRequest) -> Iterator[Backend]:
    kind, _ = request.config.stash[LAB_CHOICE]
    inventory = request.config.getoption("--inventory")
    if inventory:  # the `halab` commands that tests run find it too
        os.environ[inv_mod.ENV] = str(Path(inventory).resolve())
    backend = make_backend(kind, topo_mod.load(os.environ.get("HALAB_TOPOLOGY")), inventory)
    was_up = backend.is_up()
    backend.up()
    for fault in Faults.recover(backend):  # an earlier run was killed mid-fault
        print(f"halab: healed {fault} left by an earlier run")
    if not backend.up_provisions:  # (Vagrant's trigger provisions each VM in up())
        provision(backend)
    # provisioning may have restarted daemons (what changed, one director at a time):
    # the tests start once the client is served through the VIP; how long that took
    # is in the summary (after a director restart under TCG it was seen to take ~10 s)
    waited = wait_serving(backend, 120 * backend.slowness)
    SUMMARY.append({"test": "lab", "check": "provisioning", "what": f"{kind} lab up",
                    "served_through_vip_after_s": f"{waited:.1f}"})
    yield backend
    backend.close()
    if not was_up and not request.config.getoption("--keep-lab"):
        backend.down()


@pytest.fixture(scope="session")
def topo(lab: Backend) -> topo_mod.Topology:
    return lab.topology


@pytest.fixture
def faults(lab: Backend) -> Iterator[Faults]:
    """Inject faults through this: whatever is still in effect at the end is healed."""
    f = Faults(lab)
    yield f
    f.heal_all()


@pytest.fixture
def healed(lab: Backend) -> Iterator[None]:
    """What the test's ``halab fault`` commands left in effect is healed after it (as
    ``halab heal`` would)."""
    yield
    Faults.recover(lab)


@pytest.fixture
def vip_holder(lab: Backend) -> str:
    """The director that holds the VIP (heartbeat has elected exactly one)."""
    def one() -> list[str] | None:
        holders = vip_holders(lab)
        return holders if len(holders) == 1 else None

    return wait_until(one, 10 * lab.slowness, "exactly one director holding the VIP")[0]


@pytest.fixture
def healthy(lab: Backend, topo: topo_mod.Topology, vip_holder: str) -> Iterator[str]:
    """The VIP holder, with every web node UP on its balancer before and after the test."""
    budget = rejoin_budget(lab, vip_holder)
    for w in topo.webs:
        wait_state(lab, vip_holder, w.name, "UP", budget)
    yield vip_holder
    for w in topo.webs:
        wait_state(lab, vip_holder, w.name, "UP", budget)
