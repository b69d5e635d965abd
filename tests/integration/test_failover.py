"""Check 3, failover time: the heartbeat daemons keep exactly one director
announcing the VIP; a power loss of the master is an outage within the budget
of the timers; a graceful standby costs no request; auto_failback off leaves
the VIP where it went.

A prober on the client sends sequential requests through the VIP (a new TCP
connection each, 200 ms to connect, the anchors' prober, at >= 100 per second)
while a sampler reads, over and over, which directors announce the VIP (on an
interface that is up on the wire). Each failover writes a timeline to the
artifacts (JSON, text, PNG): the fault, the last heartbeat the survivor heard,
its verdict, the VIP added, the client's ARP entry re-pointed, every failed
request and the first success, every change the sampler saw, and the budget.

Bounds come from the timers the directors run with (read back from their
config: heartbeat's defaults, stretched by provision/ on a slower lab): a power
loss is detected after ``deadtime`` and the VIP is up on the survivor a tick and
an ``ip addr`` later; the client's outage adds at most one client timeout (a
request caught mid-failover).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from harness import measure
from harness.faults import CutLinks, Faults, PowerLoss, SignalService
from harness.measure import client_timeout, conclusive
from harness.poll import wait_until
from harness.timeline import Timeline, event_times
from harness.traffic import ClientLoop, VipSample, vip_holders
from heartbeat import config as hb_config
from heartbeat import wire
from heartbeat.fsm import Timers
from lab.backend import Backend
from lab.topology import Topology
from provision.director import AUTHKEY, HEARTBEAT_CONFIG, heartbeat_timers, priority

from .common import hb, hbctl, other, vip_url
from .common import hb_state as state

pytestmark = pytest.mark.integration

MIN_PROBE_RATE = 100.0
MIN_SAMPLES = 20  # conclusive VIP samples per failover
MARGIN = 0.15  # scheduling noise on a loaded 2-core machine
TICK = 0.01  # the daemon's timer resolution


def detect_budget(lab: Backend, timers: Timers) -> float:
    """deadtime, then a tick and an `ip addr` (with margin) at the backend's pace (under
    software emulation several times slower)."""
    return timers.deadtime + (TICK + MARGIN) * lab.slowness
# Graceful handover is make-before-break: the new master adds the VIP, then the old one
# lets go when it hears of it (a heartbeat and an `ip addr`). For that moment both
# announce it (both serve: the old one keeps the connections it has); it must be short.
OVERLAP_BOUND = 0.05


@pytest.fixture(scope="module")
def timers(lab: Backend) -> Timers:
    """The timers the directors really run with (the bounds follow them): the same on
    both, heartbeat's defaults stretched to the lab's pace."""
    seen = {d.name: hb_config.loads(lab.read_file(d.name, HEARTBEAT_CONFIG).decode()).timers
            for d in lab.topology.directors}
    assert set(seen.values()) == {heartbeat_timers(lab.slowness)}, seen
    return heartbeat_timers(lab.slowness)


def settle(lab: Backend, topo: Topology) -> str:
    """Both directors up and agreed: one MASTER holding the VIP, one BACKUP."""
    def agreed() -> str | None:
        holders = vip_holders(lab)
        if len(holders) != 1:
            return None
        states = {d.name: state(lab, d.name) for d in topo.directors}
        return holders[0] if sorted(states.values()) == ["BACKUP", "MASTER"] and \
            states[holders[0]] == "MASTER" else None
    return wait_until(agreed, 10 * lab.slowness, "one MASTER with the VIP and one BACKUP")


def observe_failover(lab: Backend, topo: Topology, count: int, act: Callable[[], float]
                     ) -> tuple[float, list[dict[str, object]], list[VipSample],
                                list[tuple[float, str]]]:
    """``act`` (it returns the fault's time) while the client probes the VIP, the VIP
    sampler runs and the client's ARP table is watched (harness.measure); returns (t0,
    the requests, the samples, the ARP changes)."""
    obs = measure.observe(lab, count, lambda _loop: act())
    return obs.t0, obs.results, obs.samples, obs.neigh


def test_one_master_holds_the_vip(lab: Backend, topo: Topology) -> None:
    master = settle(lab, topo)
    st = hb(lab, master)
    assert isinstance(st, dict) and st["holds_vip"]
    peer = st["peers"][0]
    assert peer["alive"] and peer["links"] == {n: "up" for n in ("public", "private")}
    res = lab.run(topo.clients[0].name, ["curl", "-sf", vip_url(topo)])
    assert res.text.endswith("It works!\n")


def failover_timeline(lab: Backend, topo: Topology, title: str, t0: float,
                      results: list[dict[str, object]], neigh: list[tuple[float, str]],
                      samples: list[VipSample], artifacts: Path,
                      record: Callable[..., None]) -> Timeline:
    """The timeline of one failover (harness.measure): written to the artifacts, summed
    up in the report."""
    tl = measure.timeline(lab, title, measure.Observation(t0, results, samples, neigh))
    tl.write(artifacts, title.lower().replace(" ", "-"))
    record(check="failover", what=title, budget_ms=tl.budget_ms.get("total"),
           **{k: v for k, v in tl.measured.items()})
    return tl


def assert_prober_fast_enough(lab: Backend, results: list[dict[str, object]],
                              t0: float) -> None:
    """>= 100 requests/s. A client under software emulation cannot (about 20/s were
    seen): there the rate is only recorded, in the timeline and the summary."""
    before = [r for r in results if float(r["t"]) < t0]  # type: ignore[arg-type]
    rate = ClientLoop.rate(before)
    if lab.slowness == 1.0:
        assert rate >= MIN_PROBE_RATE, f"the prober sent {rate:.0f} requests/s, not >= 100"


def enough_samples(lab: Backend, seen: list[VipSample]) -> None:
    want = max(3, int(MIN_SAMPLES / lab.slowness))
    assert len(seen) >= want, f"only {len(seen)} conclusive VIP samples (want {want})"


def test_power_loss_of_the_master(lab: Backend, topo: Topology, faults: Faults, timers: Timers,
                                  artifacts: Path, record: Callable[..., None]) -> None:
    master = settle(lab, topo)
    survivor = other(topo, master)
    budget = detect_budget(lab, timers)

    def power_loss() -> float:
        t0 = faults.inject(PowerLoss(master))
        wait_until(lambda: state(lab, survivor) == "MASTER", budget + 1,
                   f"{survivor} MASTER after the power loss of {master}")
        return t0

    t0, results, samples, neigh = observe_failover(lab, topo, 400, power_loss)
    faults.heal_all()
    tl = failover_timeline(lab, topo, "power loss of the master", t0, results, neigh, samples,
                           artifacts, record)
    took = [t for t in event_times(lab, survivor, "heartbeat", "vip_added") if t >= t0]
    assert took and took[0] - t0 <= budget, f"VIP up after {took[0] - t0:.3f} s\n" \
        + tl.text()
    assert "arp_seen_by_client_ms" in tl.measured, tl.text()
    assert_prober_fast_enough(lab, results, t0)
    out = ClientLoop.outage(results, t0)
    assert out <= budget + client_timeout(lab), f"outage {out:.3f} s\n" + tl.text()
    assert all(r.get("status") == 200 for r in results[-20:])
    # the VIP: the master's before the fault, nobody's until the survivor took it, then
    # the survivor's at every sample; never two
    seen = conclusive(samples)
    enough_samples(lab, seen)
    assert not [s for s in seen if len(s.holders or ()) > 1], tl.text()
    assert all(s.holders == (master,) for s in seen if s.end < t0), tl.text()
    assert all(s.holders == (survivor,) for s in seen if s.t > took[0]), tl.text()
    # auto_failback is off: the old master comes back as BACKUP, the VIP stays
    wait_until(lambda: state(lab, master) == "BACKUP", 10 * lab.slowness,
               f"{master} back as BACKUP")
    assert vip_holders(lab) == [survivor]


def test_standby_hands_over_without_a_failed_request(lab: Backend, topo: Topology,
                                                    artifacts: Path,
                                                    record: Callable[..., None]) -> None:
    master = settle(lab, topo)
    peer = other(topo, master)
    window = hb_config.loads(lab.read_file(peer, HEARTBEAT_CONFIG).decode()).handover_window

    def on_lo() -> bool:
        lo = lab.run(master, ["ip", "-4", "-o", "addr", "show", "dev", "lo"]).text
        return f"{topo.vip.address}/32" in lo

    draining: list[float] = []  # when the old master was seen with the VIP on lo

    def standby() -> float:
        # the host's time of the command (an SSH round trip under TCG takes a second)
        t0 = lab.run_timed(master, hbctl(lab, master, "standby"))
        # the old master keeps the VIP as a silent local address while it drains: look
        # for that first (asking one host is quick, even under emulation), then for the
        # VIP on the new master
        wait_until(on_lo, 5 * lab.slowness, f"{master} keeping the VIP on lo (draining)")
        draining.append(time.time())
        wait_until(lambda: vip_holders(lab) == [peer], 5 * lab.slowness,
                   f"the VIP on {peer} after standby")
        return t0

    t0, results, samples, neigh = observe_failover(lab, topo, 300, standby)
    tl = failover_timeline(lab, topo, "graceful standby", t0, results, neigh, samples,
                           artifacts, record)
    assert_prober_fast_enough(lab, results, t0)
    failed = ClientLoop.failures(results)
    assert not failed, f"{len(failed)} failed during the handover: {failed[:3]}\n" + tl.text()
    assert state(lab, master) == "BACKUP" and state(lab, peer) == "MASTER"
    # never unowned; both only while the new master's VIP and the old one's overlap
    added = next(t for t in event_times(lab, peer, "heartbeat", "vip_added") if t >= t0)
    removed = next(t for t in event_times(lab, master, "heartbeat", "vip_removed") if t >= t0)
    # the new master's balancer served before it took the VIP (its handover_prepare
    # requests): a balancer that had not served since it booted answered its first
    # requests slowly under emulation, and one of them outlasted the client's timeout
    warmed = [t for t in event_times(lab, peer, "heartbeat", "handover_prepare", status="0")
              if t >= t0]
    assert warmed and warmed[0] <= added, tl.text()
    bound = OVERLAP_BOUND * lab.slowness
    record(check="failover", what="graceful standby: overlap",
           overlap_ms=round((removed - added) * 1000, 1), bound_ms=round(bound * 1000))
    assert removed - added <= bound, tl.text()
    seen = conclusive(samples)
    enough_samples(lab, seen)
    assert all(s.holders for s in seen), f"the VIP was unannounced at a sample\n{tl.text()}"
    both = [s for s in seen if len(s.holders or ()) > 1]
    assert all(added - 0.01 <= s.end and s.t <= removed + 0.01 for s in both), tl.text()
    assert all(len(s.holders or ()) == 1 for s in seen if s.end < added or s.t > removed)
    # the old master kept the VIP as a silent local address at the handover (its open
    # connections finish), and the handover leaves nothing behind once the window closed
    seen_at, = draining
    assert seen_at - removed < window / 2, f"the VIP on {master}'s lo, but not at the handover"

    def clean() -> bool:
        rules = lab.run(peer, ["iptables-save"]).text + lab.run(peer, ["ip", "rule"]).text
        return "HALAB-HANDOVER" not in rules and "fwmark" not in rules and not on_lo()

    wait_until(clean, window + 2 * lab.slowness, "handover rules and the draining VIP gone")


def test_dead_balancer_on_the_master_fails_over(lab: Backend, topo: Topology,
                                                faults: Faults) -> None:
    master = settle(lab, topo)
    peer = other(topo, master)
    fault = SignalService(master, service="balancer", signal="KILL")
    faults.inject(fault)
    wait_until(lambda: vip_holders(lab) == [peer], 3 * lab.slowness, f"the VIP on {peer}")
    assert state(lab, master) == "FAULT"
    faults.heal(fault)
    wait_until(lambda: state(lab, master) == "BACKUP", 5 * lab.slowness,
               f"{master} BACKUP again")
    assert lab.run(topo.clients[0].name, ["curl", "-sf", vip_url(topo)]).ok


def test_one_link_cut_is_no_failover(lab: Backend, topo: Topology, faults: Faults,
                                     timers: Timers) -> None:
    master = settle(lab, topo)
    peer = other(topo, master)
    fault = CutLinks(master, networks=("private",))
    t_cut = faults.inject(fault)

    def private_down() -> bool:
        st = hb(lab, peer)
        assert isinstance(st, dict)
        return st["peers"][0]["links"]["private"] == "down"

    wait_until(private_down, 3 * lab.slowness, f"{peer} seeing the private link down")
    # Nothing may happen for a while: this wait is the behaviour under test.
    time.sleep(3 * timers.deadtime)
    assert vip_holders(lab) == [master]
    assert state(lab, peer) == "BACKUP"
    faults.heal(fault)
    events = hb(lab, peer, "events")
    assert isinstance(events, list)
    moved = [e for e in events if e["event"] == "transition" and e["t"] >= t_cut - 0.01]
    assert not moved, f"a transition while one link was still up: {moved}"


def test_all_links_cut_then_healed_leaves_one_owner(lab: Backend, topo: Topology,
                                                    faults: Faults, timers: Timers) -> None:
    master = settle(lab, topo)
    peer = other(topo, master)
    fault = CutLinks(master)
    faults.inject(fault)
    # documented split brain: cut off, both believe they are alone
    wait_until(lambda: state(lab, peer) == "MASTER", detect_budget(lab, timers) + 1,
               f"{peer} MASTER")
    assert state(lab, master) == "MASTER"
    faults.heal(fault)
    healed = wait_until(lambda: len(vip_holders(lab)) == 1, timers.keepalive * 2 + lab.slowness,
                        "a single VIP owner after the heal")
    assert healed
    owner = vip_holders(lab)[0]
    best = max(topo.directors, key=lambda d: (priority(topo, d), d.name)).name
    assert owner == best  # the higher priority keeps it
    # its balancer saw the web nodes vanish with the links: they rejoin after `rise` checks
    wait_until(lambda: lab.run(topo.clients[0].name, ["curl", "-sf", vip_url(topo)],
                               check=False).ok, 5 * lab.slowness, "service through the VIP again")


def test_forged_and_replayed_packets_are_counted_and_ignored(lab: Backend,
                                                             topo: Topology) -> None:
    master = settle(lab, topo)
    peer = other(topo, master)
    key = lab.read_file(master, AUTHKEY).strip()
    p = topo.hosts[peer]
    target = str(topo.hosts[master].address("private"))
    good = wire.encode(wire.Heartbeat(peer, wire.State.MASTER, 255, 1, 1, 1), key)
    forged = wire.encode(wire.Heartbeat(peer, wire.State.MASTER, 255, 1, 10**6, 10**6),
                         b"not the cluster key!")
    other_cluster = wire.encode(wire.Heartbeat(peer, wire.State.MASTER, 255, 7, 10**6, 1), key)
    packets = [good, forged, other_cluster, b"HB\x01", good + b"x" * 300]
    before = hb(lab, master)
    assert isinstance(before, dict)
    code = ("import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            f"s.bind(({str(p.address('private'))!r},0))\n"
            f"for d in {packets!r}:\n    s.sendto(d,({target!r},{topo.ports.heartbeat}))\n")
    lab.run(peer, [lab.python, "-c", code])

    def counted() -> dict[str, int] | None:
        st = hb(lab, master)
        assert isinstance(st, dict)
        c = st["counters"]
        d = {k: c.get(k, 0) - before["counters"].get(k, 0)  # type: ignore[index]
             for k in ("event_replay", "dropped_bad_mac", "dropped_wrong_cluster",
                       "dropped_truncated", "dropped_oversized")}
        return d if all(d.values()) else None

    seen = wait_until(counted, 3 * lab.slowness, "every bad packet counted")
    assert seen == {"event_replay": 1, "dropped_bad_mac": 1, "dropped_wrong_cluster": 1,
                    "dropped_truncated": 1, "dropped_oversized": 1}
    assert state(lab, master) == "MASTER" and vip_holders(lab) == [master]
    # and said in the log, with where they came from (a peer with another key: a pair
    # about to split, as keepalived logs its bad authentications)
    source = p.address("private")
    wait_until(lambda: all(f"event=packet_dropped reason={r} source={source}"
                           in lab.log_text(master, "heartbeat")
                           for r in ("bad_mac", "wrong_cluster")),
               3 * lab.slowness, "the dropped packets logged")


def garps(lab: Backend, director: str) -> int:
    st = hb(lab, director)
    assert isinstance(st, dict)
    return int(st["counters"].get("garp_sent", 0))


def test_lost_ping_node_gives_the_vip_away_and_runs_hooks(lab: Backend, topo: Topology,
                                                          faults: Faults) -> None:
    """heartbeat's ipfail: a master that cannot see its ping node (here: the client,
    i.e. the internet) goes FAULT; notify hooks see it; SIGHUP applies the config."""
    master = settle(lab, topo)
    peer = other(topo, master)
    client = topo.clients[0]
    original = lab.read_file(master, HEARTBEAT_CONFIG).decode()
    hook_file = f"{lab.paths(master).run}/hook-states"
    def note(word: str) -> str:
        return f'["sh", "-c", "echo {word} >> {hook_file}"]'

    extra = (f'\n[[track]]\nname = "internet"\nping = "{client.address("public")}"\n'
             f'interval = 100\nfall = 1\nrise = 1\n'
             f'\n[notify]\nfault = ["sh", "-c", "echo $1 >> {hook_file}", "hook"]\n'
             f'backup = ["sh", "-c", "echo $1 >> {hook_file}", "hook"]\n'
             f'\n[resources]\nstart = [{note("start1")}, {note("start2")}]\n'
             f'stop = [{note("stop1")}, {note("stop2")}]\n')
    pid = next(s.pid for s in lab.services(master) if s.name == "heartbeat")
    cut = CutLinks(client.name)
    try:
        refreshed = original.replace("[vip]\n", "[vip]\nrefresh = 100\n")
        lab.put_file(master, HEARTBEAT_CONFIG, refreshed + extra)
        lab.run(master, ["kill", "-HUP", str(pid)])
        wait_until(lambda: "event=reloaded" in lab.log_text(master, "heartbeat"),
                   5 * lab.slowness, "the reload")
        # the master announces the VIP again every `refresh` (gratuitous ARP)
        sent = garps(lab, master)
        wait_until(lambda: garps(lab, master) >= sent + 3, 2 * lab.slowness,
                   "periodic announcements")
        faults.inject(cut)
        wait_until(lambda: vip_holders(lab) == [peer], 6 * lab.slowness,
                   f"the VIP on {peer}")
        assert state(lab, master) == "FAULT"
        # resources stop right to left, then the fault hook runs
        wait_until(lambda: lab.read_file(master, hook_file).decode().split()
                   == ["stop2", "stop1", "FAULT"], 3 * lab.slowness,
                   "stop order and the fault hook")
        faults.heal(cut)
        wait_until(lambda: state(lab, master) == "BACKUP", 6 * lab.slowness,
                   f"{master} BACKUP again")
        wait_until(lambda: lab.read_file(master, hook_file).decode().split()[-1:] == ["BACKUP"],
                   3 * lab.slowness, "the backup hook")
        assert "start1" not in lab.read_file(master, hook_file).decode()  # not master again
    finally:
        faults.heal_all()
        lab.put_file(master, HEARTBEAT_CONFIG, original)
        lab.run(master, ["kill", "-HUP", str(pid)], check=False)
        lab.run(master, ["rm", "-f", hook_file], check=False)
    assert vip_holders(lab) == [peer]  # no failback: auto_failback is off


def test_multicast_link(lab: Backend, topo: Topology) -> None:
    """The optional multicast medium: the private link as a group, heard by both."""
    group = "239.255.6.94"
    directors = [d.name for d in topo.directors]
    originals = {d: lab.read_file(d, HEARTBEAT_CONFIG).decode() for d in directors}
    rule = ["INPUT", "-d", f"{group}/32", "-p", "udp", "--dport", str(topo.ports.heartbeat),
            "-j", "ACCEPT"]

    def restart_all() -> None:  # the backup first, so the VIP is handed over once
        master = settle(lab, topo)
        for d in sorted(directors, key=lambda d: d == master):
            lab.restart_service(d, "heartbeat")

    try:
        for d in directors:
            lab.run(d, ["iptables", "-I", *rule[:1], "1", *rule[1:]])
            lab.put_file(d, HEARTBEAT_CONFIG, originals[d].replace(
                'name = "private"\n', f'name = "private"\nmulticast = "{group}"\n'))
        restart_all()

        def both_links_up() -> bool:
            for d in directors:
                st = hb(lab, d)
                assert isinstance(st, dict)
                if st["peers"][0]["links"] != {"public": "up", "private": "up"} or \
                        not st["counters"].get("received_private"):
                    return False
            return True

        wait_until(both_links_up, 5 * lab.slowness, "both links up, the private one over multicast")
        private = topo.directors[0].interface("private")
        assert private is not None
        joined = lab.run(directors[0], ["ip", "maddr", "show", "dev", private.name]).text
        assert group in joined
    finally:
        for d in directors:
            lab.put_file(d, HEARTBEAT_CONFIG, originals[d])
            lab.run(d, ["iptables", "-D", *rule], check=False)
        restart_all()
    settle(lab, topo)
