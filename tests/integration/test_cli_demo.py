"""``halab demo`` runs the seed's scenario through by itself and its output holds what
was measured: who answered, the failed requests, the outage, the timelines."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.timeline import can_plot
from lab.backend import Backend
from lab.topology import Topology

from .test_cli_faults import halab, one_owner

pytestmark = pytest.mark.integration


def test_the_demo_runs_through_with_its_measurements(lab: Backend, topo: Topology,
                                                     tmp_path: Path) -> None:
    master = one_owner(lab, topo)
    web0, web1 = (w.name for w in topo.webs[:2])
    res = halab(lab, "demo", "--out", str(tmp_path), timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert f"only {web1} answers: yes" in out, out
    table = out.split("What the client saw", 1)[1]
    assert re.search(rf"nginx stopped on {web0}\s+0 failed of \d+", table), table
    assert re.search(rf"power loss of {master}\s+VIP moved after [\d.]+ ms; "
                     r"(outage [\d.]+ ms, \d+ failed|0 failed of \d+)", table), table
    assert re.search(r"standby of \S+\s+0 failed of \d+", table), table
    assert f"{master} back" in table
    assert {p.suffix for p in tmp_path.iterdir()} >= ({".json", ".txt", ".png"} if can_plot()
                                                     else {".json", ".txt"})
    assert one_owner(lab, topo) == master  # the handover at the end gave it back
