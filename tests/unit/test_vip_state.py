"""Where a director has the VIP, from its ``ip -j -4 addr show`` (both files were taken
from the netns lab's directors during a graceful standby: dir1 had just taken the VIP,
dir0 kept it on lo while its connections finished). ``halab status`` and the suite's
VIP sampler count a holder only where the VIP is announced."""

from __future__ import annotations

import json
from pathlib import Path

from harness.traffic import vip_state

DATA = Path(__file__).with_name("data")
VIP = "203.0.113.100"


def test_the_new_master_announces_the_vip() -> None:
    assert vip_state((DATA / "ip-addr-holding.json").read_bytes(), VIP) == "announced"


def test_a_vip_draining_on_lo_is_silent() -> None:
    assert vip_state((DATA / "ip-addr-draining.json").read_bytes(), VIP) == "silent"


def test_a_vip_on_a_cut_link_is_silent() -> None:
    links = json.loads((DATA / "ip-addr-holding.json").read_bytes())
    for link in links:
        if link["ifname"] == "eth1":
            link["operstate"] = "DOWN"
    assert vip_state(json.dumps(links).encode(), VIP) == "silent"


def test_no_vip_no_output() -> None:
    assert vip_state((DATA / "ip-addr-holding.json").read_bytes(), "203.0.113.101") is None
    assert vip_state(b"", VIP) is None
