"""The heartbeat state machine: sans-IO. Events in (with a time), actions out.

No sockets, clock or subprocess here: the daemon feeds ``tick``,
``receive``, ``track`` and admin commands with a monotonic ``now`` and carries
out the returned actions. Tests drive it with a simulated clock and network.

States (``wire.State``)::

    INIT     just started: sending, listening for peers (at most initdead)
    BACKUP   a peer holds the VIP, or will
    MASTER   holds the VIP and the resources
    FAULT    a tracked resource failed (or we are told to stand by): never MASTER
    STOPPED  shut down (after handing over)

Peers: a peer is *alive* while it was heard on at least one link within
``deadtime``; each link is watched too (a silent link is logged, not fatal).
A peer is *eligible* to be master when alive and not FAULT/STOPPED and not
asking to stand by. Nodes are ordered by ``rank``: (priority, name), the larger
wins; between two masters a ``takeover`` flag outranks both (rule 3).

Rules, checked on every event:

1. INIT -> MASTER/BACKUP once every peer was heard or initdead passed:
   BACKUP if an eligible peer is MASTER; else MASTER if we are the best
   eligible candidate; else BACKUP.
2. BACKUP -> MASTER when no alive peer is MASTER (dead, FAULT, standing by,
   leaving) and we are the best eligible candidate, or (``preempt``) when we
   outrank the master. Taking over: add the VIP, send a heartbeat at once,
   announce the VIP (gratuitous ARP), start resources.
3. MASTER -> BACKUP when an alive peer is MASTER and outranks us (a
   ``takeover`` flag outranks everything; else (priority, name)): release at
   once. The one that stays MASTER announces the VIP again (two masters after
   a healed partition leave exactly one, immediately).
4. standby (``hbctl standby``, SIGTERM): a MASTER keeps the VIP and sets the
   STANDBY flag; it lets go only when a peer has become MASTER (so the VIP is
   never unowned), or after ``deadtime`` with no eligible peer (then it stays).
   The peer first prepares, still BACKUP and still sending its heartbeats
   (PrepareHandover: the forwarding below, which takes a while on a slow host;
   the daemon reports ``handover_prepared``), then takes over "from" it
   (TakeVip.handover_from) and the old master
   releases with ``drain``: LVS-DR style, the new master passes packets of
   connections it does not know to the old one, which keeps the VIP as a silent
   local address until they are done: no open connection is reset.
5. a failed tracked resource: MASTER/BACKUP -> FAULT (release, flag peers);
   -> BACKUP once every failed resource recovered (one that recovers, or a
   check that starts afresh, says nothing about another that is still down).
6. auto_failback is off: a better node that comes back stays BACKUP while a
   master is alive (unless ``preempt``).

Each rule is one method of ``Node`` below, named after it (``_rule1_elect`` ...).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from heartbeat.wire import FLAG_LEAVING, FLAG_STANDBY, FLAG_TAKEOVER, Heartbeat, State


@dataclass(frozen=True)
class Timers:
    keepalive: float = 0.05
    deadtime: float = 0.2
    warntime: float = 0.1
    initdead: float = 1.0


# --- actions -------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    state: State
    priority: int
    flags: int


@dataclass(frozen=True)
class TakeVip:
    """Add the VIP. ``handover_from``: a peer hands over gracefully; packets of its
    open connections that reach us are passed on to it (no reset)."""

    handover_from: str | None = None


@dataclass(frozen=True)
class ReleaseVip:
    """Remove the VIP. ``drain``: keep it as a local, silent address (no ARP) for a
    while, so connections open here finish (the new master forwards their packets)."""

    drain: bool = False


@dataclass(frozen=True)
class Announce:
    """Gratuitous ARP for the VIP."""


@dataclass(frozen=True)
class StartResources:
    pass


@dataclass(frozen=True)
class StopResources:
    pass


class EventKind(StrEnum):
    """What an ``Event`` reports. The values are the event names in the logs, in
    ``hbctl events`` and in the ``event_*`` counters: they never change."""

    TRANSITION = "transition"  # from, to, reason
    PEER_ALIVE = "peer_alive"  # peer, link, state
    PEER_LATE = "peer_late"  # peer, silent_ms (warntime)
    PEER_DEAD = "peer_dead"  # peer, silent_ms (deadtime)
    LINK_DOWN = "link_down"  # peer, link
    LINK_UP = "link_up"  # peer, link
    UNKNOWN_PEER = "unknown_peer"  # node, link
    REPLAY = "replay"  # peer, link, generation, seq, newest_generation
    STANDBY = "standby"
    STANDBY_IGNORED = "standby_ignored"  # state
    STANDBY_FAILED = "standby_failed"  # reason
    TAKEOVER_IGNORED = "takeover_ignored"  # state
    MASTER_CONFLICT = "master_conflict"  # peer, kept
    HANDOVER_PREPARING = "handover_preparing"  # peer


@dataclass(frozen=True)
class Event:
    kind: EventKind
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PrepareHandover:
    """``peer`` hands the VIP over: set up passing its connections' packets back to it,
    while still BACKUP; report with ``Node.handover_prepared``."""

    peer: str


Action = (Send | TakeVip | ReleaseVip | Announce | StartResources | StopResources | Event
          | PrepareHandover)


# --- peers ---------------------------------------------------------------------------


@dataclass
class Peer:
    name: str
    state: State = State.INIT
    priority: int = 0
    flags: int = 0
    generation: int = -1
    seq: int = -1
    last_heard: float | None = None
    links: dict[str, float] = field(default_factory=dict)  # link -> last heard
    links_down: set[str] = field(default_factory=set)
    link_seq: dict[str, tuple[int, int]] = field(default_factory=dict)  # newest per link
    late_warned: bool = False
    dead_reported: bool = False

    def alive(self, now: float, deadtime: float) -> bool:
        return self.last_heard is not None and now - self.last_heard < deadtime

    @property
    def leaving(self) -> bool:
        return bool(self.flags & (FLAG_STANDBY | FLAG_LEAVING))


class Ranked(Protocol):
    """A node or a peer, as far as ranking goes."""

    @property
    def name(self) -> str: ...
    @property
    def priority(self) -> int: ...
    @property
    def flags(self) -> int: ...


def rank(node: Ranked, *, as_master: bool) -> tuple[int, int, str]:
    """The order of nodes, the larger wins: (priority, name). ``as_master``: between two
    masters (rule 3) a ``takeover`` flag outranks everything; candidates (rules 1, 2) and
    ``preempt`` compare without it."""
    takeover = 1 if as_master and node.flags & FLAG_TAKEOVER else 0
    return (takeover, node.priority, node.name)


class Node:
    def __init__(self, name: str, priority: int, peers: list[str], links: list[str],
                 timers: Timers, now: float, preempt: bool = False) -> None:
        self.name = name
        self.priority = priority
        self.timers = timers
        self.preempt = preempt
        self.links = list(links)
        self.peers = {p: Peer(p) for p in peers}
        self.state = State.INIT
        self.started = now
        self.since = now
        self.flags = 0
        self.standby_since: float | None = None
        self.fault_reason: str | None = None
        self.failed_tracks: dict[str, str] = {}  # tracked resource -> why it failed
        self.preparing: str | None = None  # a handover from this peer is being prepared
        self.prepared: str | None = None  # ... and is ready
        self.next_send = now

    # --- helpers ---------------------------------------------------------------------

    def alive_peers(self, now: float) -> list[Peer]:
        return [p for p in self.peers.values() if p.alive(now, self.timers.deadtime)]

    def eligible_peers(self, now: float) -> list[Peer]:
        return [p for p in self.alive_peers(now)
                if p.state not in (State.FAULT, State.STOPPED) and not p.leaving]

    def live_master(self, now: float) -> Peer | None:
        """The eligible peer that is MASTER; of two, the higher ranked as master."""
        masters = [p for p in self.eligible_peers(now) if p.state is State.MASTER]
        return max(masters, key=lambda p: rank(p, as_master=True)) if masters else None

    def best_candidate(self, now: float) -> bool:
        """Are we the best eligible candidate (by priority, then name)?"""
        mine = rank(self, as_master=False)
        return all(rank(p, as_master=False) < mine for p in self.eligible_peers(now))

    def leaving_master(self, now: float) -> str | None:
        """An alive peer that is MASTER and asks to stand by (or leaves), if any."""
        leaving = [p.name for p in self.alive_peers(now)
                   if p.state is State.MASTER and p.leaving]
        return leaving[0] if leaving else None

    def heartbeat(self) -> Send:
        return Send(self.state, self.priority, self.flags)

    def _go(self, new: State, now: float, reason: str, handover_from: str | None = None,
            drain: bool = False) -> list[Action]:
        old = self.state
        self.state = new
        self.since = now
        out: list[Action] = [Event(EventKind.TRANSITION, {"from": old.name, "to": new.name,
                                                  "reason": reason})]
        if new is State.MASTER:
            # tell the peers the moment the VIP is ours: a master standing by lets go
            # of it when it hears, so the two hold it together only that long
            out += [TakeVip(handover_from), self.heartbeat(), Announce(), StartResources()]
        else:
            if old is State.MASTER:
                out += [StopResources(), ReleaseVip(drain)]
                self.flags &= ~FLAG_TAKEOVER
            out.append(self.heartbeat())  # tell the peers at once
        self.next_send = now + self.timers.keepalive
        return out

    # --- events -----------------------------------------------------------------------

    def tick(self, now: float) -> list[Action]:
        out: list[Action] = []
        for p in self.peers.values():
            if p.last_heard is None:
                continue
            silent = now - p.last_heard
            if silent >= self.timers.deadtime:
                if not p.dead_reported:
                    p.dead_reported = True
                    out.append(Event(EventKind.PEER_DEAD, {"peer": p.name,
                                                   "silent_ms": round(silent * 1000, 1)}))
                continue
            if silent >= self.timers.warntime and not p.late_warned:
                p.late_warned = True
                out.append(Event(EventKind.PEER_LATE, {"peer": p.name,
                                               "silent_ms": round(silent * 1000, 1)}))
            for link, heard in p.links.items():
                if now - heard >= self.timers.deadtime and link not in p.links_down:
                    p.links_down.add(link)
                    out.append(Event(EventKind.LINK_DOWN, {"peer": p.name, "link": link}))
        out += self._decide(now)
        if now >= self.next_send:
            out.append(self.heartbeat())
            self.next_send = now + self.timers.keepalive
        return out

    def receive(self, hb: Heartbeat, link: str, now: float) -> list[Action]:
        p = self.peers.get(hb.node)
        if p is None or hb.node == self.name:
            return [Event(EventKind.UNKNOWN_PEER, {"node": hb.node, "link": link})]
        key = (hb.generation, hb.seq)
        # Replays are judged per link: every heartbeat travels on every link, and
        # the links may reorder against each other, but never within one link.
        # An older generation is a replay too, authenticated or not (a recorded
        # heartbeat of an earlier run is): a restarted peer's generation is never
        # lower, even without its state file (identity.next_generation).
        newest = p.link_seq.get(link, (-1, -1))
        if key <= newest:
            return [Event(EventKind.REPLAY, {"peer": p.name, "link": link,
                                     "generation": hb.generation, "seq": hb.seq,
                                     "newest_generation": newest[0]})]
        p.link_seq[link] = key
        out: list[Action] = []
        self._link_heard(p, link, now, out)
        if key <= (p.generation, p.seq):
            return out  # a copy of a heartbeat another link delivered first
        if p.last_heard is None or p.dead_reported:
            out.append(Event(EventKind.PEER_ALIVE, {"peer": p.name, "link": link,
                                            "state": hb.state.name}))
        p.dead_reported = False
        p.generation, p.seq = key
        p.state, p.priority, p.flags = hb.state, hb.priority, hb.flags
        p.last_heard = now
        p.late_warned = False
        return out + self._decide(now)

    def _link_heard(self, p: Peer, link: str, now: float, out: list[Action]) -> None:
        if link in p.links_down:
            p.links_down.discard(link)
            out.append(Event(EventKind.LINK_UP, {"peer": p.name, "link": link}))
        p.links[link] = now

    def track(self, name: str, ok: bool, reason: str, now: float) -> list[Action]:
        """A tracked resource's status changed (e.g. the balancer answers again)."""
        if not ok:
            self.failed_tracks[name] = reason
        else:
            self.failed_tracks.pop(name, None)
        return self._track_verdict(now)

    def handover_prepared(self, peer: str, now: float) -> list[Action]:
        """The daemon is ready to take over from ``peer`` (PrepareHandover done)."""
        if self.preparing == peer:
            self.preparing, self.prepared = None, peer
        return self._decide(now)

    def forget_tracks(self, keep: set[str], now: float) -> list[Action]:
        """A reload dropped some tracked resources: their failures no longer count."""
        for name in set(self.failed_tracks) - keep:
            del self.failed_tracks[name]
        return self._track_verdict(now)

    def _track_verdict(self, now: float) -> list[Action]:
        """Rule 5: FAULT while any tracked resource is failed, BACKUP once none is."""
        if self.failed_tracks and self.state not in (State.FAULT, State.STOPPED):
            name, reason = next(iter(self.failed_tracks.items()))
            self.fault_reason = f"{name}: {reason}"
            return self._go(State.FAULT, now, f"resource failed: {self.fault_reason}") \
                + self._decide(now)
        if not self.failed_tracks and self.state is State.FAULT:
            self.fault_reason = None
            return self._go(State.BACKUP, now, "resources recovered") + self._decide(now)
        return []

    def standby(self, now: float) -> list[Action]:
        """Rule 4: a MASTER asks a peer to take over, and keeps the VIP until one has."""
        if self.state is not State.MASTER:
            return [Event(EventKind.STANDBY_IGNORED, {"state": self.state.name})]
        self.flags |= FLAG_STANDBY
        self.standby_since = now
        return [Event(EventKind.STANDBY, {}), self.heartbeat()]

    def takeover(self, now: float) -> list[Action]:
        """Become MASTER now, with the takeover flag that wins a conflict (rule 3)."""
        if self.state in (State.MASTER, State.FAULT, State.STOPPED):
            return [Event(EventKind.TAKEOVER_IGNORED, {"state": self.state.name})]
        self.flags |= FLAG_TAKEOVER
        return self._go(State.MASTER, now, "takeover requested")

    def shutdown(self, now: float) -> list[Action]:
        """Leaving: hand over first if we are master (rule 4; the daemon waits for it)."""
        self.flags |= FLAG_LEAVING
        if self.state is State.MASTER:
            return self.standby(now)
        return self._go(State.STOPPED, now, "shutdown")

    def handed_over(self, now: float) -> bool:
        return self.state is not State.MASTER

    # --- the rules --------------------------------------------------------------------

    def _decide(self, now: float) -> list[Action]:
        """Apply the rule of the current state. FAULT leaves by rule 5 only (``track``);
        STOPPED is final."""
        rule = _RULES.get(self.state)
        return [] if rule is None else rule(self, self.live_master(now), now)

    def _rule1_elect(self, master: Peer | None, now: float) -> list[Action]:
        """Rule 1: INIT -> MASTER/BACKUP once every peer was heard or initdead passed."""
        heard_all = all(p.last_heard is not None for p in self.peers.values())
        if not heard_all and now - self.started < self.timers.initdead:
            return []
        if master is not None:
            return self._go(State.BACKUP, now, f"{master.name} is master")
        if self.best_candidate(now):
            return self._go(State.MASTER, now, "best candidate" if heard_all
                            else "no peer heard within initdead")
        return self._go(State.BACKUP, now, "a better candidate is present")

    def _rule2_backup(self, master: Peer | None, now: float) -> list[Action]:
        """Rule 2: BACKUP -> MASTER when no master is left and we are the best candidate
        (rule 4: prepared first when the master stands by), or by ``preempt``. Rule 6:
        else we stay BACKUP."""
        if master is None and self.best_candidate(now):
            leaving = self.leaving_master(now)
            if leaving is not None and self.prepared != leaving:
                return self._rule4_prepare(leaving)
            self.preparing = self.prepared = None
            return self._go(State.MASTER, now, self._why_no_master(now),
                            handover_from=leaving)
        if master is not None:
            self.preparing = self.prepared = None  # the handover was called off
        if master is not None and self.preempt and (
                rank(self, as_master=False) > rank(master, as_master=False)):
            self.flags |= FLAG_TAKEOVER
            return self._go(State.MASTER, now, f"preempting {master.name}")
        return []

    def _rule4_prepare(self, peer: str) -> list[Action]:
        """Rule 4, the taking side: prepare (still BACKUP, still sending) before taking
        over from ``peer``; ``handover_prepared`` says when it is ready."""
        if self.preparing == peer:
            return []  # still preparing; our heartbeats go on meanwhile
        self.preparing = peer
        return [Event(EventKind.HANDOVER_PREPARING, {"peer": peer}), PrepareHandover(peer)]

    def _rule3_master(self, master: Peer | None, now: float) -> list[Action]:
        """Rules 3 and 4 as MASTER: another master is heard, or we stand by."""
        standby = bool(self.flags & FLAG_STANDBY)
        if master is not None and standby:
            return self._rule4_hand_over(master, now)
        if master is not None and rank(master, as_master=True) > rank(self, as_master=True):
            return self._go(State.BACKUP, now, f"{master.name} outranks us as master")
        if master is not None:
            # two masters, we win: say so at once, and announce the VIP again
            return [Event(EventKind.MASTER_CONFLICT, {"peer": master.name, "kept": self.name}),
                    Announce(), self.heartbeat()]
        if (standby and self.standby_since is not None
                and now - self.standby_since >= self.timers.deadtime
                and not self.eligible_peers(now)):
            # rule 4: nobody took over within deadtime: we stay master
            self.flags &= ~FLAG_STANDBY
            return [Event(EventKind.STANDBY_FAILED, {"reason": "no peer to take over"}),
                    self.heartbeat()]
        return []

    def _rule4_hand_over(self, master: Peer, now: float) -> list[Action]:
        """Rule 4, the standing-by side: a peer has become master, we let go (drain)."""
        self.flags &= ~FLAG_STANDBY
        nxt = State.STOPPED if self.flags & FLAG_LEAVING else State.BACKUP
        return self._go(nxt, now, f"handed over to {master.name}", drain=True)

    def _why_no_master(self, now: float) -> str:
        reasons = []
        for p in self.peers.values():
            if not p.alive(now, self.timers.deadtime):
                reasons.append(f"{p.name} dead")
            elif p.state is State.FAULT:
                reasons.append(f"{p.name} in fault")
            elif p.leaving:
                reasons.append(f"{p.name} standing by")
            else:
                reasons.append(f"{p.name} is {p.state.name.lower()}")
        return ", ".join(reasons) or "alone"

    def next_wakeup(self, now: float) -> float:
        """When ``tick`` must run next (at the latest)."""
        t = self.next_send
        for p in self.peers.values():
            if p.last_heard is not None:
                for limit in (self.timers.warntime, self.timers.deadtime):
                    if now < p.last_heard + limit:
                        t = min(t, p.last_heard + limit)
        if self.state is State.INIT:
            t = min(t, self.started + self.timers.initdead)
        return t

    def status(self, now: float) -> dict[str, Any]:
        return {
            "node": self.name,
            "state": self.state.name,
            "priority": self.priority,
            "in_state_s": round(now - self.since, 3),
            "standby": bool(self.flags & FLAG_STANDBY),
            "fault": self.fault_reason,
            "peers": [{
                "name": p.name, "state": p.state.name, "priority": p.priority,
                "alive": p.alive(now, self.timers.deadtime),
                "last_heard_ms": (round((now - p.last_heard) * 1000, 1)
                                  if p.last_heard is not None else None),
                "links": {link: ("down" if link in p.links_down else "up")
                          for link in self.links},
            } for p in self.peers.values()],
        }


# the rule applied on every event, by state (FAULT and STOPPED: none)
_RULES: dict[State, Callable[[Node, Peer | None, float], list[Action]]] = {
    State.INIT: Node._rule1_elect,
    State.BACKUP: Node._rule2_backup,
    State.MASTER: Node._rule3_master,
}
