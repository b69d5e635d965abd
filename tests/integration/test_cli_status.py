"""``halab status`` as a user runs it, in the middle of a graceful handover: the old
master keeps the VIP silently on lo while its connections finish; only the director that
announces it holds it."""

from __future__ import annotations

import json
import subprocess

import pytest

from harness.poll import wait_until
from harness.traffic import vip_holders, vip_state
from lab.backend import Backend
from lab.system import env
from lab.topology import Topology

from .common import halab_argv, hb

pytestmark = pytest.mark.integration


def test_status_counts_only_the_director_that_announces_the_vip(
        lab: Backend, topo: Topology, healthy: str) -> None:
    if lab.slowness > 1:
        pytest.skip("halab status reads every host over SSH for longer than the drain "
                    "window lasts on an emulated VM; the netns lab proves it")
    old = healthy
    new = next(d.name for d in topo.directors if d.name != old)
    vip = str(topo.vip.address)

    def draining() -> bool:
        return vip_state(lab.run(old, ["ip", "-j", "-4", "addr", "show"]).stdout,
                         vip) == "silent"

    hb(lab, old, "standby")
    wait_until(lambda: vip_holders(lab) == [new] and draining(), 10,
               f"{new} announcing the VIP while {old} drains")
    res = subprocess.run(halab_argv(lab, "status", "--json"), capture_output=True,
                         text=True, env=env(), timeout=60, check=False)
    assert draining(), "the drain window closed before halab status had read the hosts"
    assert res.returncode == 0, res.stderr
    status = json.loads(res.stdout)["vip"]
    assert (status["holders"], status["silent"]) == ([new], [old])
