"""The heartbeat daemons in the live lab: one VIP owner, failover within the budget.

Bounds come from the configured timers (``heartbeat.config`` defaults, which
provision/ renders): a power loss is detected after ``deadtime`` and the
VIP is up on the survivor a tick and an ``ip addr`` later; the client's
outage adds at most one client timeout (a request caught mid-failover).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from heartbeat import config as hb_config
from heartbeat import wire
from heartbeat.fsm import Timers
from lab.backend import Backend
from lab.errors import HalabError
from lab.faults import CutLinks, PowerLoss, SignalService
from lab.poll import wait_until
from lab.timeline import NeighWatch, Timeline, event_times
from lab.topology import Topology
from provision.director import AUTHKEY, HEARTBEAT_CONFIG, heartbeat_socket, priority

from .conftest import vip_holders
from .net import ClientLoop

pytestmark = pytest.mark.integration

# the timers provision/ renders (heartbeat's defaults)
TIMERS = Timers()
CLIENT_TIMEOUT = 0.2  # the anchors' prober: 200 ms to connect
MARGIN = 0.15  # scheduling noise on a loaded 2-core machine
DETECT_BUDGET = TIMERS.deadtime + 0.01 + MARGIN  # deadtime + tick + ip addr, with margin


@pytest.fixture(autouse=True, scope="module")
def rendered_timers(lab: Backend) -> None:
    """The bounds below assume the timers the directors really run with."""
    for d in lab.topology.directors:
        cfg = hb_config.loads(lab.read_file(d.name, HEARTBEAT_CONFIG).decode())
        assert cfg.timers == TIMERS


def hb(lab: Backend, director: str, command: str = "status") -> object:
    sock = heartbeat_socket(lab.paths(director))
    return json.loads(lab.run(director, ["hbctl", "-s", sock, command, "--json"]).text)


def state(lab: Backend, director: str) -> str:
    """The director's heartbeat state ("" while its daemon does not answer)."""
    try:
        st = hb(lab, director)
    except HalabError:
        return ""
    assert isinstance(st, dict)
    return str(st["state"])


def other(topo: Topology, name: str) -> str:
    return next(d.name for d in topo.directors if d.name != name)


def vip_url(topo: Topology) -> str:
    return f"http://{topo.vip.address}:{topo.ports.http}/"


def settle(lab: Backend, topo: Topology) -> str:
    """Both directors up and agreed: one MASTER holding the VIP, one BACKUP."""
    def agreed() -> str | None:
        holders = vip_holders(lab)
        if len(holders) != 1:
            return None
        states = {d.name: state(lab, d.name) for d in topo.directors}
        return holders[0] if sorted(states.values()) == ["BACKUP", "MASTER"] and \
            states[holders[0]] == "MASTER" else None
    return wait_until(agreed, 10, "one MASTER with the VIP and one BACKUP")


def test_one_master_holds_the_vip(lab: Backend, topo: Topology) -> None:
    master = settle(lab, topo)
    st = hb(lab, master)
    assert isinstance(st, dict) and st["holds_vip"]
    peer = st["peers"][0]
    assert peer["alive"] and peer["links"] == {n: "up" for n in ("public", "private")}
    res = lab.run(topo.clients[0].name, ["curl", "-sf", vip_url(topo)])
    assert res.text.endswith("It works!\n")


HB_EVENTS = {"peer_late", "peer_dead", "transition", "vip_added", "vip_removed", "garp",
             "vip_draining", "handover_forwarding", "track_failed", "link_down"}


def failover_timeline(lab: Backend, topo: Topology, title: str, t0: float,
                      results: list[dict[str, object]], neigh: list[tuple[float, str]],
                      artifacts: Path, record: Callable[..., None]) -> Timeline:
    """The timeline of one failover: written to the artifacts, summed up in the report."""
    st = hb(lab, topo.directors[0].name)
    assert isinstance(st, dict)
    tl = Timeline(title, t0, {k: float(v) for k, v in st["failover_budget_ms"].items()})
    tl.add(t0, "fault", "fault")
    for d in topo.directors:
        tl.add_log(lab, d.name, "heartbeat", HB_EVENTS, t0 - 0.5, t0 + 1.0)
    for t, mac in neigh:
        if t >= t0:
            tl.add(t, "client/arp", "vip_mac_changed", mac)
    tl.add_requests([r for r in results if float(r["t"]) < t0 + 1.0])  # type: ignore[arg-type]
    vip_up = [m.t for m in tl.marks if m.what == "vip_added" and m.t >= t0]
    if vip_up:
        tl.measured["vip_added_ms"] = tl.rel_ms(vip_up[0])
    seen = [t for t, _ in neigh if t >= t0]
    if seen:
        tl.measured["arp_seen_by_client_ms"] = tl.rel_ms(seen[0])
    name = title.lower().replace(" ", "-")
    tl.write(artifacts, name)
    record(check="failover", what=title, budget_ms=tl.budget_ms.get("total"),
           **{k: v for k, v in tl.measured.items()})
    return tl


def test_power_loss_of_the_master(lab: Backend, topo: Topology, artifacts: Path,
                                  record: Callable[..., None]) -> None:
    master = settle(lab, topo)
    survivor = other(topo, master)
    fault = PowerLoss(master)
    watch = NeighWatch(lab, topo.clients[0].name, str(topo.vip.address))
    loop = ClientLoop(lab, topo.clients[0].name, vip_url(topo), count=300,
                      timeout=CLIENT_TIMEOUT)
    try:
        loop.read(20)
        t0 = fault.inject(lab)
        wait_until(lambda: state(lab, survivor) == "MASTER", DETECT_BUDGET + 1,
                   f"{survivor} MASTER after the power loss of {master}")
        results = loop.finish()
    finally:
        loop.stop()
        neigh = watch.stop()
        fault.heal(lab)
    tl = failover_timeline(lab, topo, "power loss of the master", t0, results, neigh,
                           artifacts, record)
    took = [t for t in event_times(lab, survivor, "heartbeat", "vip_added") if t >= t0]
    assert took and took[0] - t0 <= DETECT_BUDGET, f"VIP up after {took[0] - t0:.3f} s\n" \
        + tl.text()
    assert "arp_seen_by_client_ms" in tl.measured, tl.text()
    out = ClientLoop.outage(results, t0)
    assert out <= DETECT_BUDGET + CLIENT_TIMEOUT, f"outage {out:.3f} s"
    assert all(r.get("status") == 200 for r in results[-20:])
    # auto_failback is off: the old master comes back as BACKUP, the VIP stays
    wait_until(lambda: state(lab, master) == "BACKUP", 10, f"{master} back as BACKUP")
    assert vip_holders(lab) == [survivor]


def test_standby_hands_over_without_a_failed_request(lab: Backend, topo: Topology,
                                                    artifacts: Path,
                                                    record: Callable[..., None]) -> None:
    master = settle(lab, topo)
    peer = other(topo, master)
    watch = NeighWatch(lab, topo.clients[0].name, str(topo.vip.address))
    loop = ClientLoop(lab, topo.clients[0].name, vip_url(topo), count=200,
                      timeout=CLIENT_TIMEOUT)
    samples: list[list[str]] = []
    try:
        loop.read(20)
        t0 = time.time()
        hb(lab, master, "standby")
        wait_until(lambda: samples.append(vip_holders(lab)) or vip_holders(lab) == [peer], 5,
                   f"the VIP on {peer} after standby")
        results = loop.finish()
    finally:
        loop.stop()
        neigh = watch.stop()
    failover_timeline(lab, topo, "graceful standby", t0, results, neigh, artifacts, record)
    assert all(samples), f"the VIP was unowned at a sample: {samples}"
    failed = ClientLoop.failures(results)
    assert not failed, f"{len(failed)} failed during the handover: {failed[:3]}"
    assert state(lab, master) == "BACKUP" and state(lab, peer) == "MASTER"
    # the handover leaves nothing behind once its window closed
    window = hb_config.loads(lab.read_file(peer, HEARTBEAT_CONFIG).decode()).handover_window

    def clean() -> bool:
        rules = lab.run(peer, ["iptables-save"]).text + lab.run(peer, ["ip", "rule"]).text
        lo = lab.run(master, ["ip", "-4", "-o", "addr", "show", "dev", "lo"]).text
        return "HALAB-HANDOVER" not in rules and "fwmark" not in rules and \
            str(topo.vip.address) not in lo

    wait_until(clean, window + 2, "handover rules and the draining VIP gone")


def test_dead_balancer_on_the_master_fails_over(lab: Backend, topo: Topology) -> None:
    master = settle(lab, topo)
    peer = other(topo, master)
    fault = SignalService(master, service="balancer", signal="KILL")
    try:
        fault.inject(lab)
        wait_until(lambda: vip_holders(lab) == [peer], 3, f"the VIP on {peer}")
        assert state(lab, master) == "FAULT"
    finally:
        fault.heal(lab)
    wait_until(lambda: state(lab, master) == "BACKUP", 5, f"{master} BACKUP again")
    assert lab.run(topo.clients[0].name, ["curl", "-sf", vip_url(topo)]).ok


def test_one_link_cut_is_no_failover(lab: Backend, topo: Topology) -> None:
    master = settle(lab, topo)
    peer = other(topo, master)
    fault = CutLinks(master, networks=("private",))
    try:
        t_cut = fault.inject(lab)

        def private_down() -> bool:
            st = hb(lab, peer)
            assert isinstance(st, dict)
            return st["peers"][0]["links"]["private"] == "down"

        wait_until(private_down, 3, f"{peer} seeing the private link down")
        # Nothing may happen for a while: this wait is the behaviour under test.
        time.sleep(3 * TIMERS.deadtime)
        assert vip_holders(lab) == [master]
        assert state(lab, peer) == "BACKUP"
    finally:
        fault.heal(lab)
    events = hb(lab, peer, "events")
    assert isinstance(events, list)
    moved = [e for e in events if e["event"] == "transition" and e["t"] >= t_cut - 0.01]
    assert not moved, f"a transition while one link was still up: {moved}"


def test_all_links_cut_then_healed_leaves_one_owner(lab: Backend, topo: Topology) -> None:
    master = settle(lab, topo)
    peer = other(topo, master)
    fault = CutLinks(master)
    try:
        fault.inject(lab)
        # documented split brain: cut off, both believe they are alone
        wait_until(lambda: state(lab, peer) == "MASTER", DETECT_BUDGET + 1, f"{peer} MASTER")
        assert state(lab, master) == "MASTER"
    finally:
        fault.heal(lab)
    healed = wait_until(lambda: len(vip_holders(lab)) == 1, TIMERS.keepalive * 2 + 1,
                        "a single VIP owner after the heal")
    assert healed
    owner = vip_holders(lab)[0]
    best = max(topo.directors, key=lambda d: (priority(topo, d), d.name)).name
    assert owner == best  # the higher priority keeps it
    # its balancer saw the web nodes vanish with the links: they rejoin after `rise` checks
    wait_until(lambda: lab.run(topo.clients[0].name, ["curl", "-sf", vip_url(topo)],
                               check=False).ok, 5, "service through the VIP again")


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
    lab.run(peer, [sys.executable, "-c", code])

    def counted() -> dict[str, int] | None:
        st = hb(lab, master)
        assert isinstance(st, dict)
        c = st["counters"]
        d = {k: c.get(k, 0) - before["counters"].get(k, 0)  # type: ignore[index]
             for k in ("event_replay", "dropped_bad_mac", "dropped_wrong_cluster",
                       "dropped_truncated", "dropped_oversized")}
        return d if all(d.values()) else None

    seen = wait_until(counted, 3, "every bad packet counted")
    assert seen == {"event_replay": 1, "dropped_bad_mac": 1, "dropped_wrong_cluster": 1,
                    "dropped_truncated": 1, "dropped_oversized": 1}
    assert state(lab, master) == "MASTER" and vip_holders(lab) == [master]


def garps(lab: Backend, director: str) -> int:
    st = hb(lab, director)
    assert isinstance(st, dict)
    return int(st["counters"].get("garp_sent", 0))


def test_lost_ping_node_gives_the_vip_away_and_runs_hooks(lab: Backend,
                                                          topo: Topology) -> None:
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
        wait_until(lambda: "event=reloaded" in lab.service_log(master, "heartbeat")
                   .read_text(), 5, "the reload")
        # the master announces the VIP again every `refresh` (gratuitous ARP)
        sent = garps(lab, master)
        wait_until(lambda: garps(lab, master) >= sent + 3, 2, "periodic announcements")
        cut.inject(lab)
        wait_until(lambda: vip_holders(lab) == [peer], 6, f"the VIP on {peer}")
        assert state(lab, master) == "FAULT"
        # resources stop right to left, then the fault hook runs
        wait_until(lambda: lab.read_file(master, hook_file).decode().split()
                   == ["stop2", "stop1", "FAULT"], 3, "stop order and the fault hook")
        cut.heal(lab)
        wait_until(lambda: state(lab, master) == "BACKUP", 6, f"{master} BACKUP again")
        wait_until(lambda: lab.read_file(master, hook_file).decode().split()[-1:] == ["BACKUP"],
                   3, "the backup hook")
        assert "start1" not in lab.read_file(master, hook_file).decode()  # not master again
    finally:
        if cut.at is not None:
            cut.heal(lab)
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

        wait_until(both_links_up, 5, "both links up, the private one over multicast")
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
