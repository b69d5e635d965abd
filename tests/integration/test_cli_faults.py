"""``halab fault`` / ``faults`` / ``heal`` as a user runs them, each fault checked from
outside (the client's packets, the VIP's announcers, a service's process).
``--measure`` through a real power loss: test_cli_watch (watched as it happens)."""

from __future__ import annotations

import subprocess

import pytest

from harness.poll import wait_until
from harness.traffic import probe, vip_holders
from lab.backend import Backend
from lab.system import env
from lab.topology import Topology

from .common import halab_argv, hb_state, other

pytestmark = pytest.mark.integration

FAULTS = ["power-off", "power-on", "cut", "partition", "kill", "stop", "freeze", "refuse",
          "blackhole", "netem"]


def halab(lab: Backend, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(halab_argv(lab, *args), capture_output=True, text=True, env=env(),
                          timeout=timeout * lab.slowness, check=False)


def ok(lab: Backend, *args: str) -> str:
    res = halab(lab, *args)
    assert res.returncode == 0, (args, res.stdout, res.stderr)
    return res.stdout


def one_owner(lab: Backend, topo: Topology) -> str:
    """One MASTER announcing the VIP, one BACKUP (the lab settled again)."""
    def settled() -> str | None:
        holders = vip_holders(lab)
        states = sorted(hb_state(lab, d.name) for d in topo.directors)
        return holders[0] if len(holders) == 1 and states == ["BACKUP", "MASTER"] else None
    return str(wait_until(settled, 30 * lab.slowness, "one VIP owner (MASTER) and a BACKUP"))


def test_fault_list_names_every_fault(lab: Backend) -> None:
    listed = [line.split()[0] for line in ok(lab, "fault", "list").splitlines()]
    assert listed == FAULTS


def tcp_to(lab: Backend, host: str) -> str:
    """A TCP connect to ``host``'s HTTP port from the first director (on a link they
    share: the web nodes are on the private network only)."""
    topo = lab.topology
    src = topo.directors[0]
    addr = topo.reachable_address(src, topo.hosts[host])
    assert addr is not None
    return probe(lab, src.name, "tcp", str(addr), topo.ports.http, timeout=1.0 * lab.slowness)


def tcp_to_vip(lab: Backend) -> str:
    topo = lab.topology
    return probe(lab, topo.clients[0].name, "tcp", str(topo.vip.address), topo.ports.http,
                 timeout=1.0 * lab.slowness)


def running_pid(lab: Backend, host: str, service: str) -> int | None:
    return next((s.pid for s in lab.services(host) if s.name == service and s.running), None)


def proc_state(lab: Backend, host: str, pid: int) -> str:
    """The process's state letter (T: stopped by a signal), from its /proc."""
    return lab.run(host, ["cat", f"/proc/{pid}/stat"]).text.rsplit(")", 1)[1].split()[0]


def test_refuse_blackhole_stop_and_kill_by_name_then_heal(lab: Backend, topo: Topology,
                                                           healed: None) -> None:
    web0, web1 = (w.name for w in topo.webs[:2])
    assert tcp_to(lab, web0) == "open" and tcp_to(lab, web1) == "open"
    ok(lab, "fault", "refuse", web0)
    ok(lab, "fault", "blackhole", web1)
    assert tcp_to(lab, web0) == "refused"
    assert tcp_to(lab, web1) == "timeout"
    shown = ok(lab, "faults")
    assert f"{web0}: new TCP connections to port {topo.ports.http} refused" in shown
    assert f"{web1}: blackholed" in shown
    ok(lab, "heal", web1)  # one host's: the other's stays
    assert tcp_to(lab, web1) == "open" and tcp_to(lab, web0) == "refused"
    ok(lab, "heal")
    assert tcp_to(lab, web0) == "open"
    assert ok(lab, "faults").strip() == "no fault in effect"

    ok(lab, "fault", "stop", web0, "nginx")
    assert running_pid(lab, web0, "nginx") is None
    ok(lab, "heal", web0)
    before = running_pid(lab, web0, "nginx")
    assert before is not None
    ok(lab, "fault", "kill", web0, "nginx")
    # a crash: the process is gone (a supervisor may start another one)
    wait_until(lambda: running_pid(lab, web0, "nginx") != before, 10 * lab.slowness,
               f"{web0}'s nginx {before} gone")
    ok(lab, "heal", web0)
    assert running_pid(lab, web0, "nginx") not in (None, before)
    wait_until(lambda: tcp_to(lab, web0) == "open", 10 * lab.slowness,
               f"{web0} serving again")
    refused = halab(lab, "fault", "stop", web0, "heartbeat")
    assert refused.returncode == 2 and "runs no service 'heartbeat'" in refused.stderr


def test_a_refused_fault_leaves_the_lab_as_it_was(lab: Backend, topo: Topology,
                                                  healed: None) -> None:
    """`kill` of a service a person stopped first is refused, and nothing starts it."""
    web0 = topo.webs[0].name
    ok(lab, "stop", web0, "nginx")
    try:
        refused = halab(lab, "fault", "kill", web0, "nginx")
        assert refused.returncode != 0 and "nginx is not running" in refused.stderr
        assert running_pid(lab, web0, "nginx") is None
        assert ok(lab, "faults").strip() == "no fault in effect"
    finally:
        ok(lab, "start", web0, "nginx")
    assert running_pid(lab, web0, "nginx") is not None


def test_cut_the_client_then_heal(lab: Backend, topo: Topology, healed: None) -> None:
    assert tcp_to_vip(lab) == "open"
    ok(lab, "fault", "cut", topo.clients[0].name, "--network", topo.vip.network.name)
    assert tcp_to_vip(lab) in ("unreachable", "timeout")
    ok(lab, "heal")
    assert tcp_to_vip(lab) == "open"


def test_freeze_the_backups_heartbeat_then_heal(lab: Backend, topo: Topology,
                                                healed: None) -> None:
    master = one_owner(lab, topo)
    backup = other(topo, master)
    pid = running_pid(lab, backup, "heartbeat")
    assert pid is not None
    ok(lab, "fault", "freeze", backup, "heartbeat")
    assert proc_state(lab, backup, pid) == "T"  # stopped, still there: hung
    assert f"{backup}: heartbeat frozen (SIGSTOP, pid {pid})" in ok(lab, "faults")
    ok(lab, "heal")
    assert proc_state(lab, backup, pid) != "T" and running_pid(lab, backup, "heartbeat") == pid
    assert one_owner(lab, topo) == master


def test_partition_is_a_split_brain_and_heal_leaves_one_owner(lab: Backend, topo: Topology,
                                                              healed: None) -> None:
    one_owner(lab, topo)
    ok(lab, "fault", "partition")
    both = sorted(d.name for d in topo.directors)
    # each hears nothing of the other, and the client still reaches both: both take it
    wait_until(lambda: sorted(vip_holders(lab)) == both or None, 10 * lab.slowness,
               "both directors announcing the VIP (the split brain)")
    ok(lab, "heal")
    one_owner(lab, topo)


def test_netem_delays_a_link_or_says_why_not(lab: Backend, topo: Topology,
                                             healed: None) -> None:
    client = topo.clients[0].name
    delay = 0.5 * lab.slowness  # well above a connection's time at the lab's pace
    res = halab(lab, "fault", "netem", client, "--delay", f"{delay * 1000:g}")
    if res.returncode != 0:  # the netns lab shares this machine's kernel
        assert "no netem qdisc (sch_netem)" in res.stderr, res.stderr
        assert ok(lab, "faults").strip() == "no fault in effect"  # nothing left behind
        pytest.skip("this kernel has no netem qdisc: refused with that reason, as it must")

    def connect_s() -> float:
        out = lab.run(client, ["curl", "-so", "/dev/null", "-w", "%{time_connect}",
                               f"http://{topo.vip.address}:{topo.ports.http}/"]).text
        return float(out)

    assert connect_s() >= delay  # netem's delay is a floor: the client's SYN waits it
    ok(lab, "heal")
    assert connect_s() < delay
