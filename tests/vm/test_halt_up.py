"""`vagrant halt` then `vagrant up` brings the VM lab back consistent: every VM boots,
the Vagrantfile's trigger provisions it again (changing nothing), every service of
every host runs, one director holds the VIP and the other is its BACKUP, and the
client is served through the VIP by both web nodes. Needs the VM lab up (CI's VM stage,
tests/vm/stage.py, runs it); every wait is bounded.
"""

from __future__ import annotations

import os

from harness.poll import wait_until
from harness.traffic import ClientLoop, vip_holders
from lab import topology as topo_mod
from lab.backends.vagrant import VagrantBackend
from tests.integration.common import hb_state, page, vip_url, wait_serving


def test_halt_then_up_comes_back_consistent() -> None:
    lab = VagrantBackend(topo_mod.load(os.environ.get("HALAB_TOPOLOGY")))
    topo = lab.topology
    assert lab.is_up(), "the VM lab is not up (vagrant up first)"
    lab.vagrant("halt", show=True)
    lab.close()  # its SSH connections went with the VMs
    assert not lab.is_up()
    lab.vagrant("up", "--parallel", show=True)  # the trigger provisions each VM again
    assert lab.is_up()

    def every_service_runs() -> bool | None:
        down = [f"{h}/{s.name}" for h in topo.hosts for s in lab.services(h) if not s.running]
        return not down or None

    wait_until(every_service_runs, 60 * lab.slowness, "every service of every host running")
    wait_serving(lab, 60 * lab.slowness)

    def one_owner() -> list[str] | None:
        holders = vip_holders(lab)
        states = sorted(hb_state(lab, d.name) for d in topo.directors)
        return holders if len(holders) == 1 and states == ["BACKUP", "MASTER"] else None

    wait_until(one_owner, 30 * lab.slowness, "one VIP owner (MASTER) and a BACKUP")
    results = ClientLoop(lab, topo.clients[0].name, vip_url(topo), count=10).finish()
    assert not ClientLoop.failures(results), ClientLoop.failures(results)[:3]
    assert {r["body"] for r in results} == {page(w.name) for w in topo.webs}
    lab.close()
