"""The heartbeat daemon: the IO shell around ``heartbeat.fsm``.

``halab-heartbeat -f /etc/halab/heartbeat.toml [--check]``

* UDP unicast heartbeats to every peer over every link, authenticated
  (``wire``); malformed, forged, replayed and foreign packets are counted by
  reason and dropped.
* every start takes a new generation (``next_generation``): above the last, stored
  in ``state_file``, and at least the wall clock in seconds, so a lost state file
  does not make the peer take the restarted node's heartbeats for replays.
* the VIP is added to / removed from the interface on its network
  (rtnetlink, ``heartbeat.rtnl``: no process started), and announced with
  gratuitous ARP (raw frames whose sender address is the VIP: request and
  reply, ``garp_count`` times).
* tracked resources (a TCP connect or a command) make the node FAULT;
  resources start/stop on MASTER; notify hooks on every transition.
* ``hbctl``: status, standby, takeover, events, over a unix socket.
* SIGTERM: hand over (the VIP is never unowned), then exit. SIGHUP: reload
  timers, priority, tracks and hooks (links and VIP need a restart).
* real-time scheduling (SCHED_RR) when allowed, so a saturated machine does
  not starve the heartbeats (keepalived does the same).
* every transition is logged with a millisecond timestamp.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import ipaddress
import json
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from daemonkit import control
from daemonkit.check import tcp_check
from daemonkit.cli import install_loop, parse_args, reload_config
from daemonkit.errors import ConfigError, DaemonError
from daemonkit.log import EventLog
from daemonkit.risefall import RiseFall
from daemonkit.sdnotify import notify
from heartbeat import config, fsm, rtnl, wire

DEFAULT_CONFIG = "/etc/halab/heartbeat.toml"
EVENTS_KEPT = 500
DROP_LOG_INTERVAL = 10.0  # s: a dropped packet is logged, then at most this often per reason
HANDOVER_MARK = "0x68"  # packets of the old master's connections
HANDOVER_TABLE = "168"
HANDOVER_CHAIN = "HALAB-HANDOVER"
MAX_GENERATION = 2**32 - 1  # the wire's 4-byte unsigned generation field


def read_key(path: str) -> bytes:
    """The cluster key; refused if group or others may read it (as heartbeat's authkeys)."""
    try:
        st = os.stat(path)
        data = Path(path).read_bytes().strip()
    except OSError as e:
        raise DaemonError(f"{path}: cannot read the key file: {e.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise DaemonError(f"{path}: the key file must not be accessible by group or others "
                         f"(mode {stat.S_IMODE(st.st_mode):04o}; chmod 600)")
    if len(data) < 16:
        raise DaemonError(f"{path}: the key must be at least 16 bytes")
    return data


def next_generation(path: str, clock: Callable[[], float] = time.time) -> int:
    """This start's generation, above every one this node used before: a peer drops
    heartbeats of a generation older than the newest it saw, as replays.

    ``max(stored + 1, the wall clock in whole seconds)``, written back to ``path``:

    * the file (synced: a power loss must not leave it empty) is the first defence:
      ``stored + 1`` grows even when the clock was stepped back;
    * the clock is the second, for a file lost (a director reinstalled, /var/lib
      wiped) or unreadable (empty, corrupt, out of range): an earlier start took a
      generation no higher than the clock then (unless starts came faster than one a
      second), and the clock has gone on since.

    What neither covers: the file lost *and* the clock not past the last generation
    (stepped back, or the last start less than a second ago, or as many seconds ago
    as starts faster than one a second put the file ahead of the clock). Such a start
    may take an old generation, and its peer drops its heartbeats as replays
    (``event_replay``): for its whole run if lower than the last, until as many were
    sent as before if the same. Seconds since the epoch fit the 4-byte unsigned wire field
    until 2106 (then its largest value, always).
    """
    p = Path(path)
    try:
        stored = int(p.read_text().strip())
    except (OSError, ValueError):  # missing, unreadable, empty, not a number
        stored = -1
    if not 0 <= stored <= MAX_GENERATION:
        stored = -1  # not a generation the wire could have carried: as if missing
    gen = min(max(stored + 1, int(clock())), MAX_GENERATION)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write(f"{gen}\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(p)
    with contextlib.suppress(OSError):  # the rename itself, durable too
        fd = os.open(p.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return gen


def find_interface(network: ipaddress.IPv4Network) -> str:
    out = subprocess.run(["ip", "-j", "-4", "addr", "show"], capture_output=True, check=True)
    for link in json.loads(out.stdout or b"[]"):
        for a in link.get("addr_info", []):
            if ipaddress.IPv4Address(a["local"]) in network and link["ifname"] != "lo":
                return str(link["ifname"])
    raise DaemonError(f"no interface has an address in {network} (the VIP's network)")


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


def garp_frames(mac: bytes, ip: bytes) -> list[bytes]:
    """A gratuitous ARP request and reply whose sender is ``ip`` (the VIP)."""
    eth = b"\xff" * 6 + mac + b"\x08\x06"
    request = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, ip, b"\x00" * 6, ip)
    reply = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 2, mac, ip, b"\xff" * 6, ip)
    return [eth + request, eth + reply]


class Link(asyncio.DatagramProtocol):
    def __init__(self, daemon: Daemon, link: config.Link) -> None:
        self.daemon = daemon
        self.link = link
        self.peers = set(link.peers)
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.daemon.received(data, addr, self.link.name, self.peers)

    def error_received(self, exc: Exception) -> None:
        self.daemon.counters[f"send_error_{self.link.name}"] += 1


class Daemon:
    def __init__(self, cfg: config.Config, path: str, log: EventLog) -> None:
        self.cfg = cfg
        self.path = path
        self.log = log
        self.counters: collections.Counter[str] = collections.Counter()
        self._drops: dict[str, tuple[float, int]] = {}  # reason: (last logged, since)
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=EVENTS_KEPT)
        self.links: dict[str, Link] = {}
        self.seq = 0
        self.stopping = asyncio.Event()
        self.holds_vip = False
        self.iface = ""
        self.mac = b""
        self.tasks: list[asyncio.Task[Any]] = []
        self._drain_handle: asyncio.TimerHandle | None = None
        self._fwd_handle: asyncio.TimerHandle | None = None
        self._fwd_on = False  # prepare_handover set the forwarding up (stop_forwarding undoes it)
        self._commands: asyncio.Task[None] | None = None  # resources and hooks, in order
        self._next_refresh = 0.0

    # --- start ---------------------------------------------------------------------
    async def run(self) -> int:
        cfg = self.cfg
        self.loop = asyncio.get_running_loop()
        self.key = read_key(cfg.key_file)
        self.generation = next_generation(cfg.state_file)
        self.iface = cfg.interface or find_interface(cfg.vip.network)
        self.mac = bytes.fromhex(
            Path(f"/sys/class/net/{self.iface}/address").read_text().strip().replace(":", ""))
        self._realtime()
        # a crashed master may have left the VIP or a handover behind
        self.stop_forwarding(quiet=True, leftovers=True)
        self.release_vip(quiet=True)
        now = self.loop.time()
        self.node = fsm.Node(cfg.name, cfg.priority, cfg.peers, [lk.name for lk in cfg.links],
                             cfg.timers, now, preempt=cfg.preempt)
        for lk in cfg.links:
            _, proto = await self.loop.create_datagram_endpoint(
                lambda lk=lk: Link(self, lk),  # type: ignore[misc]
                sock=multicast_socket(lk, cfg.port) if lk.multicast else None,
                local_addr=None if lk.multicast else (lk.bind, cfg.port))
            self.links[lk.name] = proto
        server = await control.serve(cfg.control_socket, self.control, self.log,
                                     lambda e: json.dumps({"error": f"internal error: {e!r}"})
                                     + "\n")
        self.loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        self.loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        self.loop.add_signal_handler(signal.SIGHUP, self.reload)
        self.tasks = [self.loop.create_task(self.track(t)) for t in cfg.tracks]
        self.log.info("started", node=cfg.name, priority=cfg.priority, generation=self.generation,
                      interface=self.iface, vip=str(cfg.vip),
                      links=",".join(lk.name for lk in cfg.links),
                      keepalive_ms=int(cfg.timers.keepalive * 1000),
                      deadtime_ms=int(cfg.timers.deadtime * 1000))
        notify("READY=1")
        tick = min(0.005, cfg.timers.keepalive / 5)
        while not self.stopping.is_set():
            now = self.loop.time()
            self.perform(self.node.tick(now))
            refresh = self.cfg.refresh  # a reload may change it
            if refresh and self.holds_vip and now >= self._next_refresh:
                if self._next_refresh:  # not right after taking over: that burst is out
                    self.announce()
                self._next_refresh = now + refresh
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(tick):
                    await self.stopping.wait()
        await self.shutdown()
        control.close(server, cfg.control_socket)
        return 0

    def _realtime(self) -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(10))
            self.log.info("realtime", policy="SCHED_RR", priority=10)
        except (OSError, AttributeError) as e:
            self.log.warning("no_realtime", reason=str(e))

    async def shutdown(self) -> None:
        """Hand over if we are master (the VIP is never unowned), then leave."""
        notify("STOPPING=1")
        self.perform(self.node.shutdown(self.loop.time()))
        deadline = self.loop.time() + self.cfg.timers.deadtime * 2 + 0.5
        while not self.node.handed_over(self.loop.time()) and self.loop.time() < deadline:
            self.perform(self.node.tick(self.loop.time()))
            await asyncio.sleep(0.005)
        for t in self.tasks:
            t.cancel()
        if self.holds_vip:
            self.release_vip()
        # the connections drained from here may finish (within the window) before we go
        if self._drain_handle is not None:
            end = self.loop.time() + self.cfg.handover_window
            while self.vip_connections() and self.loop.time() < end:
                await asyncio.sleep(0.01)
            self._cancel_drain()
        self.stop_forwarding(quiet=True)
        self.send(fsm.Send(wire.State.STOPPED, self.cfg.priority, wire.FLAG_LEAVING))
        self.log.info("stopped", state=self.node.state.name)

    def reload(self) -> None:
        new = reload_config(config.load, self.path, self.log)
        if new is None:
            return
        if (new.links, new.vip, new.nodes, new.name) != (
                self.cfg.links, self.cfg.vip, self.cfg.nodes, self.cfg.name):
            self.log.warning("reload_partial", note="links, VIP and nodes need a restart")
        self.node.timers = new.timers
        self.node.priority = new.priority
        self.node.preempt = new.preempt
        for t in self.tasks:
            t.cancel()
        self.cfg = new
        self.tasks = [self.loop.create_task(self.track(t)) for t in new.tracks]
        self.perform(self.node.forget_tracks({t.name for t in new.tracks}, self.loop.time()))
        self.log.info("reloaded", priority=new.priority)

    # --- packets -------------------------------------------------------------------
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
        self.perform(self.node.receive(hb, link, self.loop.time()))

    def dropped(self, reason: str, source: str) -> None:
        """Counted, and logged (at most every DROP_LOG_INTERVAL per reason, with how
        many since): a peer with another key (``bad_mac``) is a split pair in the
        making, and says so here, as keepalived logs its bad authentications."""
        self.counters[f"dropped_{reason}"] += 1
        now = self.loop.time()
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

    # --- actions -------------------------------------------------------------------
    def perform(self, actions: Sequence[fsm.Action]) -> None:
        hooks: list[Sequence[str]] = []
        self._perform(actions, hooks)
        # notify hooks run after the resources of the same transition started/stopped
        self.run_in_order("notify", hooks)

    def _perform(self, actions: Sequence[fsm.Action], hooks: list[Sequence[str]]) -> None:
        for a in actions:
            if isinstance(a, fsm.Send):
                self.send(a)
            elif isinstance(a, fsm.PrepareHandover):
                self.prepare_handover(a.peer)
            elif isinstance(a, fsm.TakeVip):
                # a handover's forwarding was prepared before (PrepareHandover): the old
                # master lets go of the VIP as soon as our next heartbeat says we hold it
                self.take_vip()
            elif isinstance(a, fsm.Announce):
                self.announce()
                self.announce_burst()
            elif isinstance(a, fsm.ReleaseVip):
                # off the wire first: the new master announces it already
                if a.drain:
                    self.drain_vip()
                else:
                    self.release_vip()
                self.stop_forwarding()
            elif isinstance(a, fsm.StartResources):
                self.run_in_order("resource_start", list(self.cfg.start))
            elif isinstance(a, fsm.StopResources):
                self.run_in_order("resource_stop", list(reversed(self.cfg.stop)))
            elif isinstance(a, fsm.Event):
                hook = self.event(a)
                if hook:
                    hooks.append(hook)

    def event(self, ev: fsm.Event) -> Sequence[str] | None:
        """Record and log an event; returns the notify hook to run for it, if any."""
        name = ev.kind.value
        rec = {"t": round(time.time(), 3), "event": name, **ev.fields}
        self.events.append(rec)
        self.counters[f"event_{name}"] += 1
        quiet = ev.kind in (fsm.EventKind.REPLAY, fsm.EventKind.UNKNOWN_PEER)
        transition = ev.kind is fsm.EventKind.TRANSITION
        self.log.log(30 if transition else 10 if quiet else 20, name, **ev.fields)
        if transition:
            hook = self.cfg.notify.get(str(ev.fields["to"]).lower())
            if hook:
                return (*hook, str(ev.fields["to"]))
        return None

    def _run(self, *argv: str, input: bytes | None = None,
             timeout: float | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(argv, input=input, capture_output=True, check=False,
                              timeout=timeout)

    def take_vip(self) -> None:
        self._cancel_drain()
        self._next_refresh = 0.0
        try:
            rtnl.replace(self.iface, self.cfg.vip)
        except OSError as e:
            self.log.error("vip_add_failed", reason=str(e))
            return
        self.holds_vip = True
        self.log.warning("vip_added", vip=str(self.cfg.vip), interface=self.iface)

    def release_vip(self, quiet: bool = False) -> None:
        self._cancel_drain(leftover=quiet)
        removed = self._delete(self.iface, self.cfg.vip)
        self.holds_vip = False
        if not quiet or removed:
            self.log.warning("vip_removed", vip=str(self.cfg.vip), interface=self.iface)

    def drain_vip(self) -> None:
        """Graceful handover: the VIP leaves the wire but stays a local address (on lo,
        where no ARP answers for it) until the handover window closes, so the
        connections still open here finish; the new master forwards their packets."""
        if self._drain_handle is not None:  # an earlier window's: this one replaces it
            self._drain_handle.cancel()
        # local all along (on lo first), then off the wire at once
        try:
            rtnl.replace("lo", self._vip_on_lo)
        except OSError as e:
            self.log.error("vip_drain_failed", reason=str(e))
        self._delete(self.iface, self.cfg.vip)
        self.holds_vip = False
        self.log.warning("vip_removed", vip=str(self.cfg.vip), interface=self.iface)
        self.log.warning("vip_draining", vip=str(self._vip_on_lo),
                         window_s=self.cfg.handover_window)
        self._drain_handle = self.loop.call_later(self.cfg.handover_window, self._end_drain)

    def _end_drain(self) -> None:
        self._drain_handle = None
        if self._delete("lo", self._vip_on_lo):
            self.log.info("vip_drained", vip=str(self.cfg.vip.ip))

    def _cancel_drain(self, leftover: bool = False) -> None:
        """End a drain window early: the VIP leaves lo. Only when one is open (a takeover
        must not wait for it), or ``leftover``: one an earlier run left."""
        if self._drain_handle is None and not leftover:
            return
        if self._drain_handle is not None:
            self._drain_handle.cancel()
        self._drain_handle = None
        self._delete("lo", self._vip_on_lo)

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
    def _vip_on_lo(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(f"{self.cfg.vip.ip}/32")

    def vip_connections(self) -> int:
        """TCP connections on this host whose local address is the VIP."""
        hexip = self.cfg.vip.ip.packed[::-1].hex().upper()
        try:
            lines = Path("/proc/self/net/tcp").read_text().splitlines()[1:]
        except OSError:
            return 0
        return sum(1 for ln in lines
                   if ln.split()[1].startswith(hexip + ":") and ln.split()[3] != "0A")

    def prepare_handover(self, peer: str) -> None:
        """LVS-DR style: TCP packets to the VIP that belong to no connection known here
        (mid-stream, not a SYN) will be routed to ``peer`` over the handover link.

        The forwarding for a graceful takeover, set up in a worker thread while this
        node, still BACKUP, keeps sending heartbeats: each command costs ~0.1 s on an
        emulated VM, and a takeover that blocked the loop for them outlasted deadtime
        there (the standing-by master gave up on us). The FSM hears when it is ready."""
        addr = self.cfg.peer_address(peer, self.cfg.handover_link)
        commands = list(self.cfg.handover_prepare)
        ran: list[dict[str, Any]] = []  # what the prepare commands did, logged here

        def work() -> str | None:
            ran.extend(self._run_prepare(commands))
            return self._handover_setup(addr)

        def done(f: asyncio.Future[str | None]) -> None:
            for fields in ran:
                self.log.log(20 if fields["status"] == 0 else 40, "handover_prepare", **fields)
            try:
                error = f.result()
            except Exception as e:  # an OSError starting a command: still hand over
                error = f"{type(e).__name__}: {e}"
            self._handover_ready(peer, addr, error)
            self.perform(self.node.handover_prepared(peer, self.loop.time()))

        self.loop.run_in_executor(None, work).add_done_callback(done)

    def _run_prepare(self, commands: list[tuple[str, ...]]) -> list[dict[str, Any]]:
        """The configured ``handover_prepare`` commands, in order, each within the
        handover window (what will serve warms up while the old master still serves);
        what each did, for the log. A failure does not stop the takeover."""
        out = []
        for argv in commands:
            t0 = time.monotonic()
            try:
                res = self._run(*argv, timeout=max(self.cfg.handover_window, 1.0))
                status: int | str = res.returncode
                err = res.stderr.decode(errors="replace").strip()[:200]
            except subprocess.TimeoutExpired:
                status, err = "timeout", ""
            except OSError as e:
                status, err = "failed", str(e)
            out.append({"argv": " ".join(argv), "status": status,
                        "ms": round((time.monotonic() - t0) * 1000), "stderr": err or None})
        return out

    def _handover_setup(self, addr: str) -> str | None:
        """The commands of the forwarding (three: conntrack, one iptables-restore, one
        ip batch); returns what failed, or None."""
        m, t, c, vip = HANDOVER_MARK, HANDOVER_TABLE, HANDOVER_CHAIN, f"{self.cfg.vip.ip}/32"
        unknown = "-p tcp ! --syn -m conntrack --ctstate NEW,INVALID"
        # Connections this node once had to the VIP (an earlier time as master) may
        # linger in conntrack (TIME_WAIT); a client port reused now would then not
        # look "unknown" and would be answered with a reset instead of passed on.
        self._run("conntrack", "-D", "-p", "tcp", "-d", str(self.cfg.vip.ip))
        rules = (f"*mangle\n:{c} - [0:0]\n"
                 f"-A {c} -m connmark --mark {m} -j MARK --set-mark {m}\n"
                 f"-A {c} {unknown} -j CONNMARK --set-mark {m}\n"
                 f"-A {c} {unknown} -j MARK --set-mark {m}\n"
                 f"-I PREROUTING 1 -d {vip} -p tcp -j {c}\nCOMMIT\n"
                 f"*filter\n-I FORWARD 1 -m mark --mark {m} -j ACCEPT\nCOMMIT\n")
        # the VIP is local here now: the `local` table (rule 0) would claim the marked
        # packets before any other rule, so it moves behind ours
        routes = (f"route replace default via {addr} table {t}\n"
                  f"rule add pref 10 fwmark {m} lookup {t}\n"
                  "rule add pref 20 lookup local\nrule del pref 0 lookup local\n")
        for argv, data in ((("iptables-restore", "--noflush"), rules),
                           (("ip", "-batch", "-"), routes)):
            res = self._run(*argv, input=data.encode())
            if res.returncode != 0:
                return f"{' '.join(argv)}: {res.stderr.decode().strip()}"
        return None

    def _handover_ready(self, peer: str, addr: str, error: str | None) -> None:
        if error is not None:
            self.log.error("handover_setup_failed", reason=error)
            self.stop_forwarding(quiet=True, leftovers=True)  # how far it got: unknown
            return
        self._fwd_on = True
        self._forwarding(True)
        self.log.warning("handover_forwarding", peer=peer, via=addr,
                         window_s=self.cfg.handover_window)
        if self._fwd_handle is not None:
            self._fwd_handle.cancel()
        self._fwd_handle = self.loop.call_later(self.cfg.handover_window, self.stop_forwarding)

    def _forwarding(self, on: bool) -> None:
        with contextlib.suppress(OSError):
            Path(f"/proc/sys/net/ipv4/conf/{self.iface}/forwarding").write_text(
                "1" if on else "0")

    def stop_forwarding(self, quiet: bool = False, leftovers: bool = False) -> None:
        """Undo ``prepare_handover``: two commands when it was set up here, none when it was
        not (a release after a plain failover). ``leftovers``: also when this process
        did not set it up (at start, after a crash), rule by rule."""
        if self._fwd_handle is not None:
            self._fwd_handle.cancel()
        self._fwd_handle = None
        self._forwarding(False)
        was_on, self._fwd_on = self._fwd_on, False
        if not (was_on or leftovers):
            return
        m, t, c, vip = HANDOVER_MARK, HANDOVER_TABLE, HANDOVER_CHAIN, f"{self.cfg.vip.ip}/32"
        # the local table back in front (before its stand-in at pref 20 goes)
        local = "rule add pref 0 lookup local\n"
        if not was_on and self._run("ip", "rule", "show", "pref", "0").stdout.strip():
            local = ""  # ip allows the same rule twice
        self._run("ip", "-force", "-batch", "-", input=(
            f"{local}rule del pref 20 lookup local\nrule del pref 10 fwmark {m} lookup {t}\n"
            f"route flush table {t}\n").encode())
        drop = (f"*mangle\n-D PREROUTING -d {vip} -p tcp -j {c}\n-F {c}\n-X {c}\nCOMMIT\n"
                f"*filter\n-D FORWARD -m mark --mark {m} -j ACCEPT\nCOMMIT\n")
        existed = self._run("iptables-restore", "--noflush", input=drop.encode()).returncode == 0
        if not existed:  # partly there, or not at all: one rule at a time
            mangle = ("iptables", "-t", "mangle")
            for argv in ((*mangle, "-D", "PREROUTING", "-d", vip, "-p", "tcp", "-j", c),
                         (*mangle, "-F", c), (*mangle, "-X", c),
                         ("iptables", "-D", "FORWARD", "-m", "mark", "--mark", m, "-j", "ACCEPT")):
                self._run(*argv)
        if was_on and not quiet:
            self.log.info("handover_done")

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
        for i in range(1, self.cfg.garp_count):
            self.loop.call_later(i * self.cfg.garp_interval, self._announce_if_master)

    def _announce_if_master(self) -> None:
        if self.holds_vip:
            self.announce()

    def run_in_order(self, what: str, commands: list[Sequence[str]]) -> None:
        """Run commands one after the other, after any still running (haresources:
        started left to right, stopped right to left, never interleaved)."""
        if not commands:
            return
        previous = self._commands

        async def run() -> None:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            for argv in commands:
                try:
                    proc = await asyncio.create_subprocess_exec(
                        *argv, stdout=asyncio.subprocess.DEVNULL,
                        stderr=asyncio.subprocess.PIPE)
                    _, err = await proc.communicate()
                    level = 20 if proc.returncode == 0 else 40
                    self.log.log(level, what, argv=" ".join(argv), status=proc.returncode,
                                 stderr=err.decode(errors="replace").strip()[:200] or None)
                except OSError as e:
                    self.log.error(what, argv=" ".join(argv), reason=str(e))

        self._commands = self.loop.create_task(run())

    # --- tracking --------------------------------------------------------------------
    async def track(self, t: config.Track) -> None:
        counts = RiseFall(t.rise, t.fall)
        while True:
            ok, reason = await self.check(t)
            if counts.result(ok):
                if not ok:
                    self.log.warning("track_failed", track=t.name, reason=reason)
                self.perform(self.node.track(t.name, ok, reason, self.loop.time()))
            await asyncio.sleep(t.interval)

    async def check(self, t: config.Track) -> tuple[bool, str]:
        if t.tcp is not None:
            out = await tcp_check(*t.tcp, t.timeout)  # (its own timeout, its own reasons)
            return out.ok, out.reason
        assert t.command is not None
        try:
            async with asyncio.timeout(t.timeout):
                proc = await asyncio.create_subprocess_exec(
                    *t.command, stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL)
                rc = await proc.wait()
                return rc == 0, f"exit {rc}"
        except TimeoutError:
            return False, "timeout"
        except OSError as e:
            return False, e.strerror or type(e).__name__

    # --- hbctl ------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        st = self.node.status(self.loop.time())
        st.update({"vip": str(self.cfg.vip), "holds_vip": self.holds_vip,
                   "interface": self.iface, "generation": self.generation,
                   "counters": dict(self.counters),
                   "timers_ms": {k: int(v * 1000) for k, v in vars(self.cfg.timers).items()},
                   "failover_budget_ms": budget_ms(self.cfg)})
        return st

    async def control(self, line: str) -> str:
        line = line.strip()
        now = self.loop.time()
        answer: Any
        if line == "status":
            answer = self.status()
        elif line == "standby":
            self.perform(self.node.standby(now))
            answer = {"ok": True, "state": self.node.state.name}
        elif line == "takeover":
            self.perform(self.node.takeover(now))
            answer = {"ok": True, "state": self.node.state.name}
        elif line == "events":
            answer = list(self.events)
        else:
            answer = {"error": f"unknown command {line!r}: status, standby, takeover, events"}
        return json.dumps(answer) + "\n"


def budget_ms(cfg: config.Config) -> dict[str, int]:
    """The theoretical failover budget of a configuration (power loss of the master)."""
    t = cfg.timers
    detect = int(t.deadtime * 1000)
    tick = int(min(0.005, t.keepalive / 5) * 1000)
    vip = 5  # `ip addr replace`, measured ~3 ms
    return {"detection": detect, "tick": tick, "vip_add": vip, "garp": 1,
            "total": detect + tick + vip + 1}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args("halab-heartbeat", "halab's failover daemon", DEFAULT_CONFIG, argv)
    try:
        cfg = config.load(args.config)
        if args.check:
            read_key(cfg.key_file)
            b = budget_ms(cfg)
            print(f"{args.config}: ok: node {cfg.name} priority {cfg.priority}, "
                  f"{len(cfg.links)} links, VIP {cfg.vip}, failover budget {b['total']} ms "
                  f"(detection {b['detection']} + tick {b['tick']} + VIP {b['vip_add']} "
                  f"+ ARP {b['garp']})")
            return 0
    except (ConfigError, DaemonError) as e:
        print(f"halab-heartbeat: {e}", file=sys.stderr)
        return 1
    log = EventLog("heartbeat", args.log_level)
    install_loop(log)
    try:
        return asyncio.run(Daemon(cfg, args.config, log).run())
    except DaemonError as e:
        log.error("fatal", reason=str(e))
        return 1


if __name__ == "__main__":
    sys.exit(main())
