"""The VIP's address changes through rtnetlink (heartbeat.rtnl): the requests as bytes,
the kernel's answers, and the real kernel in a network namespace of the test's own
(unshare: nothing of this machine's network is touched), read back with ``ip``."""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from pathlib import Path

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
