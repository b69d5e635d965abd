"""The heartbeat links: a UDP socket on each, our heartbeats sent to every peer (or to
the link's multicast group), theirs received and authenticated (``wire``); malformed,
forged, replayed and foreign packets are counted by reason and dropped."""

from __future__ import annotations

import asyncio
import collections
import socket
import time
from collections.abc import Callable

from daemonkit.log import EventLog
from heartbeat import config, fsm, wire

DROP_LOG_INTERVAL = 10.0  # s: a dropped packet is logged, then at most this often per reason

Receive = Callable[[wire.Heartbeat, str], None]  # (heartbeat, link)


def multicast_socket(link: config.Link, port: int) -> socket.socket:
    """A socket that hears ``link.multicast`` on the link's interface and sends to it
    from the link's address (TTL 1, no loop back to ourselves)."""
    assert link.multicast is not None
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((link.multicast, port))
    local = socket.inet_aton(link.bind)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                 socket.inet_aton(link.multicast) + local)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, local)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
    s.setblocking(False)
    return s


def unicast_socket(link: config.Link, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((link.bind, port))
    s.setblocking(False)
    return s


class Link(asyncio.DatagramProtocol):
    def __init__(self, links: Links, link: config.Link, sock: socket.socket) -> None:
        self.links = links
        self.link = link
        self.peers = set(link.peers)
        self.sock = sock  # ours too: ``Links.drain`` reads it at once
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.links.received(data, addr, self.link.name, self.peers)

    def error_received(self, exc: Exception) -> None:
        self.links.counters[f"send_error_{self.link.name}"] += 1


class Links:
    def __init__(self, cfg: config.Config, log: EventLog,
                 counters: collections.Counter[str], receive: Receive) -> None:
        self.cfg = cfg  # the daemon's, replaced on reload
        self.log = log
        self.counters = counters
        self.receive = receive
        self.key = b""
        self.generation = 0
        self.seq = 0
        self.links: dict[str, Link] = {}
        self._drops: dict[str, tuple[float, int]] = {}  # reason: (last logged, since)

    async def open(self, key: bytes, generation: int) -> None:
        """A socket on every configured link, sending as ``generation``."""
        self.key, self.generation = key, generation
        loop = asyncio.get_running_loop()
        cfg = self.cfg
        for lk in cfg.links:
            sock = multicast_socket(lk, cfg.port) if lk.multicast else unicast_socket(lk, cfg.port)
            _, proto = await loop.create_datagram_endpoint(
                lambda lk=lk, sock=sock: Link(self, lk, sock), sock=sock)  # type: ignore[misc]
            self.links[lk.name] = proto

    def drain(self, limit: int = 256) -> int:
        """Receive now what waits in the sockets (at most ``limit`` per link): after a
        stall (the daemon stopped, starved or swapped out), before the clock is judged.
        A daemon that did not run heard nothing; that is not its peers' silence. Returns
        how many datagrams there were."""
        n = 0
        for name, link in self.links.items():
            for _ in range(limit):
                try:
                    data, addr = link.sock.recvfrom(65535)
                except OSError:  # nothing more (BlockingIOError), or an error to come again
                    break
                self.received(data, addr, name, link.peers)
                n += 1
        return n

    def received(self, data: bytes, addr: tuple[str, int], link: str, peers: set[str]) -> None:
        if addr[0] not in peers:
            self.dropped("unknown_source", addr[0])
            return
        try:
            hb = wire.decode(data, self.key, self.cfg.cluster)
        except wire.WireError as e:
            self.dropped(e.reason, addr[0])
            return
        self.counters[f"received_{link}"] += 1
        self.receive(hb, link)

    def dropped(self, reason: str, source: str) -> None:
        """Counted, and logged (at most every DROP_LOG_INTERVAL per reason, with how
        many since): a peer with another key (``bad_mac``) is a split pair in the
        making, and says so here, as keepalived logs its bad authentications."""
        self.counters[f"dropped_{reason}"] += 1
        now = asyncio.get_running_loop().time()
        last, since = self._drops.get(reason, (-DROP_LOG_INTERVAL, 0))
        if now - last >= DROP_LOG_INTERVAL:
            self.log.warning("packet_dropped", reason=reason, source=source, count=since + 1)
            self._drops[reason] = (now, 0)
        else:
            self._drops[reason] = (last, since + 1)

    def send(self, action: fsm.Send) -> None:
        self.seq += 1
        data = wire.encode(wire.Heartbeat(
            node=self.cfg.name, state=action.state, priority=action.priority,
            cluster=self.cfg.cluster, generation=self.generation, seq=self.seq,
            flags=action.flags, sent_ms=int(time.time() * 1000)), self.key)
        for proto in self.links.values():
            if proto.transport is None:
                continue
            for dest in ([proto.link.multicast] if proto.link.multicast else proto.link.peers):
                proto.transport.sendto(data, (dest, self.cfg.port))
        self.counters["sent"] += 1
