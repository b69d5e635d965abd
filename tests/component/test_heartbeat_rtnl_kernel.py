"""The VIP's address changes through rtnetlink (heartbeat.rtnl) in the real kernel, in a
network namespace of the test's own (unshare: nothing of this machine's network is
touched), read back with ``ip``. The requests as bytes are in tests/unit."""

from __future__ import annotations

import errno
import ipaddress
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

VIP = ipaddress.IPv4Interface("203.0.113.10/24")
ROOT = Path(__file__).resolve().parents[2]


# run in a network namespace of its own (a user namespace too: no root needed where
# the kernel allows those): the changes, then what `ip` reads back after each
IN_NAMESPACE = f"""
import errno, ipaddress, json, subprocess, sys
sys.path.insert(0, {str(ROOT)!r})
from heartbeat import rtnl

def seen(dev):
    out = subprocess.run(["ip", "-j", "-4", "addr", "show", "dev", dev],
                         capture_output=True, check=True).stdout
    return [(a["local"], a["prefixlen"], a["scope"])
            for link in json.loads(out) for a in link["addr_info"]]

vip = ipaddress.IPv4Interface("{VIP}")
on_lo = ipaddress.IPv4Interface("{VIP.ip}/32")
steps = {{}}
rtnl.replace("lo", vip)
rtnl.replace("lo", vip)  # again: no error, one address
steps["added"] = seen("lo")
rtnl.delete("lo", vip)
steps["deleted"] = seen("lo")
try:
    rtnl.delete("lo", vip)
except OSError as e:
    steps["deleted_again"] = e.errno
rtnl.replace("lo", on_lo)
steps["host_route"] = seen("lo")
try:
    rtnl.replace("nosuchdev", vip)
except OSError as e:
    steps["no_device"] = e.errno
# the daemon's own removal: an address already gone is no error; anything else is said
import io
from heartbeat import config
from heartbeat.daemon import Daemon
from daemonkit.log import EventLog
from tests.unit.test_heartbeat_wire_config import CFG
out = io.StringIO()
daemon = Daemon(config.loads(CFG.format(key="/k")), "hb.toml", EventLog("heartbeat", stream=out))
steps["removed"] = [daemon.vip._delete("lo", on_lo), daemon.vip._delete("lo", on_lo),
                    daemon.vip._delete("nosuchdev", vip)]
steps["logged"] = [line.split("event=")[1].split()[0] for line in out.getvalue().splitlines()]
print(json.dumps(steps))
"""


def test_the_kernel_takes_the_changes_as_ip_makes_them() -> None:
    unshare = shutil.which("unshare")
    probe = subprocess.run([unshare or "unshare", "-rn", "true"], capture_output=True) \
        if unshare else None
    if probe is None or probe.returncode != 0:
        pytest.skip("no network namespace of our own here (unshare -rn)")
    out = subprocess.run([unshare, "-rn", sys.executable, "-c", IN_NAMESPACE],
                         capture_output=True, check=True, timeout=60).stdout
    steps = json.loads(out)
    assert steps["added"] == [[str(VIP.ip), 24, "global"]]
    assert steps["deleted"] == []
    assert steps["deleted_again"] == errno.EADDRNOTAVAIL
    assert steps["host_route"] == [[str(VIP.ip), 32, "global"]]
    assert steps["no_device"] == errno.ENODEV
    assert steps["removed"] == [True, False, False]
    assert steps["logged"] == ["vip_remove_failed"]  # the device, not the address gone
