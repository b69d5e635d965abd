"""The heartbeat daemon's TOML configuration (rendered per director by provision/).

Every key, with its default or a typical value and what it does, is in
``examples/heartbeat.toml`` (the tests run ``--check`` on it).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemonkit.config import Reader
from daemonkit.errors import ConfigError
from heartbeat.fsm import Timers

# a track's check when its config says nothing: every 200 ms, 100 ms to answer
TRACK_INTERVAL_MS = 200
TRACK_TIMEOUT_MS = 100


@dataclass(frozen=True)
class Link:
    name: str
    bind: str
    peers: tuple[str, ...]
    multicast: str | None = None  # send to this group instead of each peer


@dataclass(frozen=True)
class Track:
    name: str
    tcp: tuple[str, int] | None
    command: tuple[str, ...] | None  # a ping node is the command `ping -c 1 -W ... ADDR`
    interval: float
    timeout: float
    fall: int
    rise: int


@dataclass(frozen=True)
class Config:
    name: str
    priority: int
    nodes: tuple[str, ...]
    links: tuple[Link, ...]
    vip: ipaddress.IPv4Interface
    key_file: str
    cluster: int = 1
    preempt: bool = False
    port: int = 694
    state_file: str = "/var/lib/halab/heartbeat.state"
    control_socket: str = "/run/halab/heartbeat.sock"
    timers: Timers = field(default_factory=Timers)
    interface: str = ""
    garp_count: int = 3
    garp_interval: float = 0.05
    refresh: float = 0.0
    handover_link: str = "private"
    handover_window: float = 5.0
    handover_prepare: tuple[tuple[str, ...], ...] = ()
    tracks: tuple[Track, ...] = ()
    start: tuple[tuple[str, ...], ...] = ()
    stop: tuple[tuple[str, ...], ...] = ()
    notify: dict[str, tuple[str, ...]] = field(default_factory=dict)
    source: str = "<config>"

    @property
    def peers(self) -> list[str]:
        return [n for n in self.nodes if n != self.name]

    def peer_address(self, peer: str, link: str) -> str:
        """A peer's address on a link (links list peers in the order of ``nodes``)."""
        lk = next(x for x in self.links if x.name == link)
        return lk.peers[self.peers.index(peer)]


def load(path: str | Path) -> Config:
    return parse(Reader.load(path))


def loads(text: str, path: str = "<config>") -> Config:
    return parse(Reader.loads(text, path))


def _argv(r: Reader, name: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(
            isinstance(v, str) and v for v in value):
        raise r.fail(name, "must be a command: a non-empty list of strings")
    return tuple(value)


def parse(r: Reader) -> Config:
    n = r.table("node", required=True)
    name = n.text("name")
    priority = n.integer("priority", 100, lo=0, hi=255)
    preempt = n.flag("preempt", False)
    n.done()

    c = r.table("cluster", required=True)
    cluster = c.integer("id", 1, lo=0, hi=2**32 - 1)
    nodes_raw = c.value("nodes", None)
    if (not isinstance(nodes_raw, list) or len(nodes_raw) < 2
            or not all(isinstance(x, str) and x for x in nodes_raw)
            or len(set(nodes_raw)) != len(nodes_raw)):
        raise c.fail("nodes", "must list two or more distinct node names")
    if name not in nodes_raw:
        raise c.fail("nodes", f"does not list this node ({name!r})")
    key_file = c.text("key_file")
    port = c.integer("port", 694, lo=1, hi=65535)
    d = Config(name="", priority=0, nodes=(), links=(),
               vip=ipaddress.IPv4Interface("0.0.0.0/32"), key_file="")
    state_file = c.text("state_file", d.state_file)
    control_socket = c.text("control_socket", d.control_socket)
    c.done()

    t = r.table("timers")
    dt = Timers()
    timers = Timers(
        keepalive=t.ms("keepalive", int(dt.keepalive * 1000), lo=5),
        deadtime=t.ms("deadtime", int(dt.deadtime * 1000), lo=10),
        warntime=t.ms("warntime", int(dt.warntime * 1000), lo=5),
        initdead=t.ms("initdead", int(dt.initdead * 1000), lo=0),
    )
    if timers.deadtime < 2 * timers.keepalive:
        raise t.fail("deadtime", "must be at least twice keepalive (one lost heartbeat "
                     "must not kill a peer)")
    if not timers.keepalive <= timers.warntime <= timers.deadtime:
        raise t.fail("warntime", "must lie between keepalive and deadtime")
    t.done()

    links = []
    for lk in r.tables("links"):
        lname = lk.text("name")
        bind = lk.text("bind")
        peers_raw = lk.value("peers", None)
        if not isinstance(peers_raw, list) or not peers_raw:
            raise lk.fail("peers", "must list the peers' addresses on this link")
        for addr in (bind, *peers_raw):
            try:
                ipaddress.IPv4Address(addr)
            except (ValueError, TypeError):
                raise lk.fail("peers" if addr != bind else "bind",
                              f"{addr!r} is not an IPv4 address") from None
        group = lk.text("multicast") if lk.has("multicast") else None
        if group is not None:
            try:
                if not ipaddress.IPv4Address(group).is_multicast:
                    raise ValueError
            except ValueError:
                raise lk.fail("multicast", f"{group!r} is not an IPv4 multicast group") from None
        links.append(Link(lname, bind, tuple(peers_raw), group))
        lk.done()
    if not links:
        raise r.fail("links", "at least one [[links]] entry is needed")
    if len({lk.name for lk in links}) != len(links):
        raise r.fail("links", "link names must be distinct")

    v = r.table("vip", required=True)
    addr = v.text("address")
    try:
        vip = ipaddress.IPv4Interface(addr)
    except ValueError:
        raise v.fail("address", f"{addr!r} is not an IPv4 address/prefix") from None
    if "/" not in addr:
        raise v.fail("address", "needs its prefix length, e.g. 192.0.2.100/24")
    interface = v.text("interface", "x") if v.has("interface") else ""
    garp_count = v.integer("garp_count", d.garp_count, lo=1, hi=20)
    garp_interval = v.ms("garp_interval", int(d.garp_interval * 1000), lo=1)
    refresh = v.ms("refresh", 0, lo=0)
    handover_link = v.text("handover_link", d.handover_link)
    handover_window = v.ms("handover_window", int(d.handover_window * 1000), lo=0)
    if handover_link not in {lk.name for lk in links}:
        raise v.fail("handover_link", f"{handover_link!r} is not one of the links")
    prepare = v.value("handover_prepare", [])
    if not isinstance(prepare, list):
        raise v.fail("handover_prepare", "must be a list of commands")
    handover_prepare = tuple(_argv(v, "handover_prepare", x) for x in prepare)
    v.done()

    tracks = []
    for tr in r.tables("track"):
        tname = tr.text("name")
        tcp = tr.endpoint("tcp") if tr.has("tcp") else None
        command = _argv(tr, "command", tr.value("command", None)) if tr.has("command") else None
        timeout = tr.ms("timeout", TRACK_TIMEOUT_MS, lo=1)
        if tr.has("ping"):
            addr = tr.text("ping")
            try:
                ipaddress.IPv4Address(addr)
            except ValueError:
                raise tr.fail("ping", f"{addr!r} is not an IPv4 address") from None
            command = ("ping", "-n", "-q", "-c", "1", "-W", str(max(1, round(timeout))), addr)
            timeout = max(timeout, 1.0) + 0.5  # ping's -W counts whole seconds
        if sum(x is not None for x in (tcp, command)) != 1 or (tr.has("ping") and
                                                               tr.has("command")):
            raise tr.fail("tcp", "give exactly one of tcp, ping or command")
        tracks.append(Track(tname, tcp, command,
                            tr.ms("interval", TRACK_INTERVAL_MS, lo=10), timeout,
                            tr.integer("fall", 2, lo=1, hi=100),
                            tr.integer("rise", 2, lo=1, hi=100)))
        tr.done()

    res = r.table("resources")
    start = tuple(_argv(res, "start", x) for x in res.value("start", []))
    stop = tuple(_argv(res, "stop", x) for x in res.value("stop", []))
    res.done()
    nt = r.table("notify")
    notify = {k: _argv(nt, k, nt.value(k, None)) for k in ("master", "backup", "fault")
              if nt.has(k) and nt.value(k, None) != []}  # []: no hook, as leaving it out
    nt.done()
    r.done()
    if priority == 0:
        raise ConfigError(r.path, "node.priority", "0 means 'never master': use 1-255")
    return Config(name=name, priority=priority, nodes=tuple(nodes_raw), links=tuple(links),
                  vip=vip, key_file=key_file, cluster=cluster, preempt=preempt, port=port,
                  state_file=state_file, control_socket=control_socket, timers=timers,
                  interface=interface, garp_count=garp_count, garp_interval=garp_interval,
                  refresh=refresh, handover_link=handover_link,
                  handover_window=handover_window, handover_prepare=handover_prepare,
                  tracks=tuple(tracks), start=start, stop=stop,
                  notify=notify, source=r.path)
