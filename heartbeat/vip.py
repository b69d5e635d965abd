"""The VIP on this host: added to the interface on its network, released, or drained (a
silent address on lo while a handover's connections finish), and announced with
gratuitous ARP (raw frames whose sender is the VIP: request and reply).

Addresses change through rtnetlink (``heartbeat.rtnl``: no process started).
"""

from __future__ import annotations

import asyncio
import collections
import errno
import ipaddress
import json
import socket
import struct
from pathlib import Path

from daemonkit.errors import DaemonError
from daemonkit.log import EventLog
from heartbeat import commands, config, rtnl


def find_interface(network: ipaddress.IPv4Network) -> str:
    out = commands.run(("ip", "-j", "-4", "addr", "show"))
    out.check_returncode()
    for link in json.loads(out.stdout or b"[]"):
        for a in link.get("addr_info", []):
            if ipaddress.IPv4Address(a["local"]) in network and link["ifname"] != "lo":
                return str(link["ifname"])
    raise DaemonError(f"no interface has an address in {network} (the VIP's network)")


def garp_frames(mac: bytes, ip: bytes) -> list[bytes]:
    """A gratuitous ARP request and reply whose sender is ``ip`` (the VIP)."""
    eth = b"\xff" * 6 + mac + b"\x08\x06"
    request = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, ip, b"\x00" * 6, ip)
    reply = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 2, mac, ip, b"\xff" * 6, ip)
    return [eth + request, eth + reply]


class Vip:
    def __init__(self, cfg: config.Config, log: EventLog,
                 counters: collections.Counter[str]) -> None:
        self.cfg = cfg  # the daemon's, replaced on reload
        self.log = log
        self.counters = counters
        self.held = False
        self.iface = ""
        self.mac = b""
        self._drain_handle: asyncio.TimerHandle | None = None
        self._next_refresh = 0.0

    def find_interface(self) -> None:
        """The interface of the VIP (configured, or the one on its network) and its MAC."""
        self.iface = self.cfg.interface or find_interface(self.cfg.vip.network)
        self.mac = bytes.fromhex(
            Path(f"/sys/class/net/{self.iface}/address").read_text().strip().replace(":", ""))

    @property
    def draining(self) -> bool:
        return self._drain_handle is not None

    def take(self) -> None:
        self.cancel_drain()
        self._next_refresh = 0.0
        try:
            rtnl.replace(self.iface, self.cfg.vip)
        except OSError as e:
            self.log.error("vip_add_failed", reason=str(e))
            return
        self.held = True
        self.log.warning("vip_added", vip=str(self.cfg.vip), interface=self.iface)

    def release(self, quiet: bool = False) -> None:
        self.cancel_drain(leftover=quiet)
        removed = self._delete(self.iface, self.cfg.vip)
        self.held = False
        if not quiet or removed:
            self.log.warning("vip_removed", vip=str(self.cfg.vip), interface=self.iface)

    def drain(self) -> None:
        """Graceful handover: the VIP leaves the wire but stays a local address (on lo,
        where no ARP answers for it) until the handover window closes, so the
        connections still open here finish; the new master forwards their packets."""
        if self._drain_handle is not None:  # an earlier window's: this one replaces it
            self._drain_handle.cancel()
        # local all along (on lo first), then off the wire at once
        try:
            rtnl.replace("lo", self._on_lo)
        except OSError as e:
            self.log.error("vip_drain_failed", reason=str(e))
        self._delete(self.iface, self.cfg.vip)
        self.held = False
        self.log.warning("vip_removed", vip=str(self.cfg.vip), interface=self.iface)
        self.log.warning("vip_draining", vip=str(self._on_lo),
                         window_s=self.cfg.handover_window)
        self._drain_handle = asyncio.get_running_loop().call_later(
            self.cfg.handover_window, self._end_drain)

    def _end_drain(self) -> None:
        self._drain_handle = None
        if self._delete("lo", self._on_lo):
            self.log.info("vip_drained", vip=str(self.cfg.vip.ip))

    def cancel_drain(self, leftover: bool = False) -> None:
        """End a drain window early: the VIP leaves lo. Only when one is open (a takeover
        must not wait for it), or ``leftover``: one an earlier run left."""
        if self._drain_handle is None and not leftover:
            return
        if self._drain_handle is not None:
            self._drain_handle.cancel()
        self._drain_handle = None
        self._delete("lo", self._on_lo)

    def _delete(self, ifname: str, address: ipaddress.IPv4Interface) -> bool:
        """Take ``address`` off ``ifname``: whether it was there (an address already gone
        is no error, as with ``ip -force``; any other failure is logged)."""
        try:
            rtnl.delete(ifname, address)
        except OSError as e:
            if e.errno != errno.EADDRNOTAVAIL:
                self.log.error("vip_remove_failed", vip=str(address), interface=ifname,
                               reason=str(e))
            return False
        return True

    @property
    def _on_lo(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(f"{self.cfg.vip.ip}/32")

    def connections(self) -> int:
        """TCP connections on this host whose local address is the VIP."""
        hexip = self.cfg.vip.ip.packed[::-1].hex().upper()
        try:
            lines = Path("/proc/self/net/tcp").read_text().splitlines()[1:]
        except OSError:
            return 0
        return sum(1 for ln in lines
                   if ln.split()[1].startswith(hexip + ":") and ln.split()[3] != "0A")

    def announce(self) -> None:
        frames = garp_frames(self.mac, self.cfg.vip.ip.packed)
        try:
            with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
                s.bind((self.iface, 0))
                for f in frames:
                    s.send(f)
        except OSError as e:
            self.log.error("garp_failed", reason=str(e))
            return
        self.counters["garp_sent"] += 1
        sent = self.counters["garp_sent"]
        self.log.info("garp", vip=str(self.cfg.vip.ip), interface=self.iface, n=sent)

    def announce_burst(self) -> None:
        loop = asyncio.get_running_loop()
        for i in range(1, self.cfg.garp_count):
            loop.call_later(i * self.cfg.garp_interval, self._announce_if_held)

    def _announce_if_held(self) -> None:
        if self.held:
            self.announce()

    def refresh(self, now: float) -> None:
        """Announce the VIP again every ``refresh`` while we hold it (0: never)."""
        refresh = self.cfg.refresh  # a reload may change it
        if refresh and self.held and now >= self._next_refresh:
            if self._next_refresh:  # not right after taking over: that burst is out
                self.announce()
            self._next_refresh = now + refresh
