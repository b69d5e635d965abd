"""The heartbeat daemon's loop: start, tick the state machine (``heartbeat.fsm``), carry
out its actions, reload, shut down; and ``main``.

``halab-heartbeat -f /etc/halab/heartbeat.toml [--check]``

* every start takes a new generation (``identity.next_generation``); heartbeats go out
  and come in on every link (``links``).
* the VIP is added, released or drained and announced (``vip``); a graceful takeover
  sets up forwarding first (``handover``).
* tracked resources (``tracks``) make the node FAULT; resources start/stop on MASTER,
  notify hooks run on every transition, one after the other (``commands``).
* ``hbctl``: status, standby, takeover, events, over a unix socket (``control``).
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
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from daemonkit import control as control_socket
from daemonkit.cli import install_loop, parse_args, reload_config
from daemonkit.errors import ConfigError, DaemonError
from daemonkit.log import EventLog
from daemonkit.sdnotify import notify
from heartbeat import config, fsm, wire
from heartbeat.commands import InOrder
from heartbeat.control import Control, budget_ms, failed
from heartbeat.handover import Handover
from heartbeat.identity import next_generation, read_key
from heartbeat.links import Links
from heartbeat.tracks import Tracks
from heartbeat.vip import Vip

DEFAULT_CONFIG = "/etc/halab/heartbeat.toml"
EVENTS_KEPT = 500


class Daemon:
    def __init__(self, cfg: config.Config, path: str, log: EventLog) -> None:
        self.path = path
        self.log = log
        self.counters: collections.Counter[str] = collections.Counter()
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=EVENTS_KEPT)
        self.stopping = asyncio.Event()
        self.generation = 0
        self.links = Links(cfg, log, self.counters, self._received)
        self.vip = Vip(cfg, log, self.counters)
        self.handover = Handover(cfg, log)
        self.tracks = Tracks(log, self._tracked)
        self.commands = InOrder(log)  # resources and hooks, in order
        self.control = Control(self)
        self.cfg = cfg

    @property
    def cfg(self) -> config.Config:
        return self._cfg

    @cfg.setter
    def cfg(self, cfg: config.Config) -> None:
        """The configuration, the same for every part of the daemon."""
        self._cfg = cfg
        self.links.cfg = self.vip.cfg = self.handover.cfg = cfg

    # --- start ---------------------------------------------------------------------
    async def run(self) -> int:
        cfg = self.cfg
        self.loop = asyncio.get_running_loop()
        key = read_key(cfg.key_file)
        self.generation = next_generation(cfg.state_file)
        self.vip.find_interface()
        self.handover.iface = self.vip.iface
        self._realtime()
        # a crashed master may have left the VIP or a handover behind
        self.handover.stop(quiet=True, leftovers=True)
        self.vip.release(quiet=True)
        now = self.loop.time()
        self.node = fsm.Node(cfg.name, cfg.priority, cfg.peers, [lk.name for lk in cfg.links],
                             cfg.timers, now, preempt=cfg.preempt)
        await self.links.open(key, self.generation)
        server = await control_socket.serve(cfg.control_socket, self.control.handle, self.log,
                                            failed)
        self.loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        self.loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        self.loop.add_signal_handler(signal.SIGHUP, self.reload)
        self.tracks.start(cfg.tracks)
        self.log.info("started", node=cfg.name, priority=cfg.priority, generation=self.generation,
                      interface=self.vip.iface, vip=str(cfg.vip),
                      links=",".join(lk.name for lk in cfg.links),
                      keepalive_ms=int(cfg.timers.keepalive * 1000),
                      deadtime_ms=int(cfg.timers.deadtime * 1000))
        notify("READY=1")
        tick = min(0.005, cfg.timers.keepalive / 5)
        last = self.loop.time()
        while not self.stopping.is_set():
            now = self.loop.time()
            if now - last > self.cfg.timers.keepalive:
                # we did not run for a while (stopped, starved): what the peers sent
                # meanwhile is waiting in the sockets, and counts before the silence does
                # (an event loop may run its timers before its I/O, as uvloop's does)
                self.log.info("stalled", ms=round((now - last) * 1000),
                              received=self.links.drain())
            last = now
            self.perform(self.node.tick(now))
            self.vip.refresh(now)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(tick):
                    await self.stopping.wait()
        await self.shutdown()
        control_socket.close(server, cfg.control_socket)
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
        self.tracks.cancel()
        if self.vip.held:
            self.vip.release()
        # the connections drained from here may finish (within the window) before we go
        if self.vip.draining:
            end = self.loop.time() + self.cfg.handover_window
            while self.vip.connections() and self.loop.time() < end:
                await asyncio.sleep(0.01)
            self.vip.cancel_drain()
        self.handover.stop(quiet=True)
        self.links.send(fsm.Send(wire.State.STOPPED, self.cfg.priority, wire.FLAG_LEAVING))
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
        self.tracks.cancel()
        self.cfg = new
        self.tracks.start(new.tracks)
        self.perform(self.node.forget_tracks({t.name for t in new.tracks}, self.loop.time()))
        self.log.info("reloaded", priority=new.priority)

    # --- what the state machine hears ----------------------------------------------
    def _received(self, hb: wire.Heartbeat, link: str) -> None:
        self.perform(self.node.receive(hb, link, self.loop.time()))

    def _tracked(self, name: str, ok: bool, reason: str) -> None:
        self.perform(self.node.track(name, ok, reason, self.loop.time()))

    def _prepared(self, peer: str) -> None:
        self.perform(self.node.handover_prepared(peer, self.loop.time()))

    # --- actions -------------------------------------------------------------------
    def perform(self, actions: Sequence[fsm.Action]) -> None:
        hooks: list[Sequence[str]] = []
        self._perform(actions, hooks)
        # notify hooks run after the resources of the same transition started/stopped
        self.commands.run("notify", hooks)

    def _perform(self, actions: Sequence[fsm.Action], hooks: list[Sequence[str]]) -> None:
        for a in actions:
            if isinstance(a, fsm.Send):
                self.links.send(a)
            elif isinstance(a, fsm.PrepareHandover):
                self.handover.prepare(a.peer, self._prepared)
            elif isinstance(a, fsm.TakeVip):
                # a handover's forwarding was prepared before (PrepareHandover): the old
                # master lets go of the VIP as soon as our next heartbeat says we hold it
                self.vip.take()
            elif isinstance(a, fsm.Announce):
                self.vip.announce()
                self.vip.announce_burst()
            elif isinstance(a, fsm.ReleaseVip):
                # off the wire first: the new master announces it already
                if a.drain:
                    self.vip.drain()
                else:
                    self.vip.release()
                self.handover.stop()
            elif isinstance(a, fsm.StartResources):
                self.commands.run("resource_start", list(self.cfg.start))
            elif isinstance(a, fsm.StopResources):
                self.commands.run("resource_stop", list(reversed(self.cfg.stop)))
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
