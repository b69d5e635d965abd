"""IPv4 addresses on interfaces through rtnetlink: what ``ip addr replace/del`` does,
without starting a process.

The VIP moves in a handover or a failover; each ``ip`` started for it cost 50 ms to a
few hundred on a loaded emulated VM (a fork, an exec, a dynamic link), and the old
master's release is what decides how long both directors announce the VIP. One
netlink request and its acknowledgement cost a system call each.

``message`` builds a request (pure: bytes in, bytes out); ``replace`` and ``delete``
send it and read the kernel's answer, raising ``OSError`` with its errno.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct

RTM_NEWADDR = 20
RTM_DELADDR = 21
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_REPLACE = 0x100
NLM_F_CREATE = 0x400
IFA_ADDRESS = 1
IFA_LOCAL = 2
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_HOST = 254
ANSWER_TIMEOUT = 2.0  # s: the kernel answers at once; bounded all the same

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, port id
_IFADDR = struct.Struct("=BBBBI")  # ifaddrmsg: family, prefix length, flags, scope, index
_ATTR = struct.Struct("=HH")  # rtattr: length, type


def _attr(kind: int, data: bytes) -> bytes:
    raw = _ATTR.pack(_ATTR.size + len(data), kind) + data
    return raw + b"\0" * (-len(raw) % 4)


def message(kind: int, index: int, address: ipaddress.IPv4Interface, seq: int) -> bytes:
    """An RTM_NEWADDR (create or replace) or RTM_DELADDR request for ``address`` on the
    interface ``index``, asking for an acknowledgement: the attributes ``ip`` sends
    (local and address the same: no peer), host scope on loopback as ``ip`` gives it."""
    flags = NLM_F_REQUEST | NLM_F_ACK
    if kind == RTM_NEWADDR:
        flags |= NLM_F_CREATE | NLM_F_REPLACE
    scope = RT_SCOPE_HOST if address.ip.is_loopback else RT_SCOPE_UNIVERSE
    ip = address.ip.packed
    body = (_IFADDR.pack(socket.AF_INET, address.network.prefixlen, 0, scope, index)
            + _attr(IFA_LOCAL, ip) + _attr(IFA_ADDRESS, ip))
    return _HEADER.pack(_HEADER.size + len(body), kind, flags, seq, 0) + body


def answer(data: bytes, seq: int) -> int:
    """The errno of the kernel's acknowledgement of request ``seq`` in ``data`` (0: done);
    -1 when ``data`` holds none."""
    at = 0
    while at + _HEADER.size <= len(data):
        length, kind, _, got, _ = _HEADER.unpack_from(data, at)
        if length < _HEADER.size:
            break
        if kind == NLMSG_ERROR and got == seq and length >= _HEADER.size + 4:
            code: int = struct.unpack_from("=i", data, at + _HEADER.size)[0]
            return -code
        at += (length + 3) & ~3
    return -1


def _request(kind: int, ifname: str, address: ipaddress.IPv4Interface) -> None:
    seq = 1  # a socket per request: the first answer on it is this one's
    try:
        index = socket.if_nametoindex(ifname)
    except OSError:
        raise OSError(errno.ENODEV, f"no interface {ifname}") from None
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as s:
        s.settimeout(ANSWER_TIMEOUT)
        s.bind((0, 0))
        s.sendall(message(kind, index, address, seq))
        code = answer(s.recv(65536), seq)
    if code > 0:
        raise OSError(code, f"{os.strerror(code)} ({address} on {ifname})")
    if code < 0:
        raise OSError(errno.EPROTO, f"no answer from the kernel ({address} on {ifname})")


def replace(ifname: str, address: ipaddress.IPv4Interface) -> None:
    """``ip addr replace ADDRESS dev IFNAME``."""
    _request(RTM_NEWADDR, ifname, address)


def delete(ifname: str, address: ipaddress.IPv4Interface) -> None:
    """``ip addr del ADDRESS dev IFNAME`` (EADDRNOTAVAIL when it is not there)."""
    _request(RTM_DELADDR, ifname, address)
