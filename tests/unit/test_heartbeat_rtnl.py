"""The VIP's address changes through rtnetlink (heartbeat.rtnl): the requests as bytes,
the kernel's answers, and the real kernel in a network namespace of the test's own
(unshare: nothing of this machine's network is touched), read back with ``ip``."""

from __future__ import annotations

import errno
import ipaddress
import json
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from heartbeat import rtnl

VIP = ipaddress.IPv4Interface("203.0.113.10/24")
ROOT = Path(__file__).resolve().parents[2]


def test_a_request_carries_what_ip_addr_sends() -> None:
    msg = rtnl.message(rtnl.RTM_NEWADDR, 7, VIP, 42)
    length, kind, flags, seq, port = struct.unpack_from("=IHHII", msg)
    assert (length, kind, seq, port) == (len(msg), rtnl.RTM_NEWADDR, 42, 0)
    assert flags == rtnl.NLM_F_REQUEST | rtnl.NLM_F_ACK | rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE
    family, prefix, _, scope, index = struct.unpack_from("=BBBBI", msg, 16)
    assert (family, prefix, scope, index) == (socket.AF_INET, 24, rtnl.RT_SCOPE_UNIVERSE, 7)
    attrs = msg[24:]
    assert attrs == (struct.pack("=HH", 8, rtnl.IFA_LOCAL) + VIP.ip.packed
                     + struct.pack("=HH", 8, rtnl.IFA_ADDRESS) + VIP.ip.packed)
    delete = rtnl.message(rtnl.RTM_DELADDR, 7, VIP, 1)
    assert struct.unpack_from("=H", delete, 6)[0] == rtnl.NLM_F_REQUEST | rtnl.NLM_F_ACK
    # a loopback address gets host scope, as `ip` gives it
    lo = rtnl.message(rtnl.RTM_NEWADDR, 1, ipaddress.IPv4Interface("127.0.0.2/8"), 1)
    assert lo[19] == rtnl.RT_SCOPE_HOST


def ack(seq: int, code: int) -> bytes:
    return struct.pack("=IHHIIi", 20, rtnl.NLMSG_ERROR, 0, seq, 0, -code)


def test_the_answer_is_the_acknowledgement_of_this_request() -> None:
    assert rtnl.answer(ack(3, 0), 3) == 0
    assert rtnl.answer(ack(3, errno.EADDRNOTAVAIL), 3) == errno.EADDRNOTAVAIL
    assert rtnl.answer(ack(2, 0), 3) == -1  # another request's
    assert rtnl.answer(ack(2, errno.EPERM) + ack(3, 0), 3) == 0
    assert rtnl.answer(b"\x00" * 10, 3) == -1  # too short to be one
    assert rtnl.answer(struct.pack("=IHHII", 4, 2, 0, 3, 0), 3) == -1  # a length too small


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
steps["removed"] = [daemon._delete("lo", on_lo), daemon._delete("lo", on_lo),
                    daemon._delete("nosuchdev", vip)]
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
