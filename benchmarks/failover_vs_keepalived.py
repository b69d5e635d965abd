"""halab's heartbeat against keepalived (VRRPv3, advert_int 0.1), in the same lab and run.

Measured the way the anchors were: a client in its own namespace sends
sequential requests to the VIP, a new TCP connection each, 200 ms connect /
500 ms total timeout, ~5 ms apart; outage = from the fault (links cut, or the
stop signal sent) to the end of the first successful response started after
it. Faults: power loss of the master (links cut, then every process killed)
and a graceful stop (SIGTERM: keepalived sends priority 0, halab hands over).
The balancer is halab's in both stacks; only the failover daemon changes.

    python benchmarks/failover_vs_keepalived.py [--trials 5]

Needs root and keepalived (./bootstrap bench installs it). Prints medians, maxima,
failed requests and halab/keepalived ratios (lower is better for outages).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.faults import PowerLoss
from harness.poll import wait_until
from harness.traffic import ClientLoop, vip_holders
from lab import topology as topo_mod
from lab.backends.netns import NetnsBackend
from lab.system import env, require_programs
from provision import provision
from provision.director import priority

REQUESTS = 450  # ~3 s of traffic per trial, bounded


class Keepalived:
    """keepalived on both directors, VRRP allowed through their firewalls while it runs."""

    def __init__(self, lab: NetnsBackend, tmp: Path) -> None:
        self.lab = lab
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def conf(self, name: str) -> Path:
        topo = self.lab.topology
        d = topo.hosts[name]
        vip = f"{topo.vip.address}/{topo.vip.network.subnet.prefixlen}"
        iface = d.interface(topo.vip.network.name)
        assert iface is not None
        path = self.tmp / f"keepalived-{name}.conf"
        path.write_text(f"""
global_defs {{
    router_id {name}
    vrrp_version 3
}}
vrrp_instance VI_1 {{
    state BACKUP
    interface {iface.name}
    virtual_router_id 51
    priority {priority(topo, d)}
    advert_int 0.1
    nopreempt
    virtual_ipaddress {{
        {vip} dev {iface.name}
    }}
}}
""")
        return path

    def start(self, name: str) -> None:
        argv = ["keepalived", "-n", "-l", "-D", "-P", "-f", str(self.conf(name)),
                "-p", str(self.tmp / f"{name}.pid"), "-r", str(self.tmp / f"{name}-vrrp.pid")]
        self.procs[name] = subprocess.Popen(self.lab.command(name, argv), env=env(),
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def up(self) -> None:
        for d in self.lab.topology.directors:
            self.lab.run(d.name, ["iptables", "-I", "INPUT", "1", "-p", "vrrp", "-j", "ACCEPT"])
            self.start(d.name)

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)

    def down(self) -> None:
        for d in self.lab.topology.directors:
            self.stop(d.name)
            self.lab.run(d.name, ["iptables", "-D", "INPUT", "-p", "vrrp", "-j", "ACCEPT"],
                         check=False)


def settle(lab: NetnsBackend) -> str:
    return wait_until(lambda: (h := vip_holders(lab)) and len(h) == 1 and h[0], 15,
                      "one VIP owner")


def trial(lab: NetnsBackend, kind: str, stop: Callable[[str], None],
          heal: Callable[[str], None]) -> tuple[float, int]:
    topo = lab.topology
    master = settle(lab)
    survivor = next(d.name for d in topo.directors if d.name != master)
    loop = ClientLoop(lab, topo.clients[0].name, f"http://{topo.vip.address}/",
                      count=REQUESTS, gap_ms=5, timeout=0.5, connect_timeout=0.2)
    fault = PowerLoss(master)
    try:
        loop.read(30)
        if kind == "power":
            t0 = fault.inject(lab)
        else:
            t0 = time.time()
            stop(master)
        wait_until(lambda: survivor in vip_holders(lab), 5, f"the VIP on {survivor}")
        results = loop.finish()
    finally:
        loop.stop()
        if kind == "power":
            fault.heal(lab)
        heal(master)
    return ClientLoop.outage(results, t0), len(ClientLoop.failures([r for r in results
                                                         if float(r["t"]) >= t0 - 1]))  # type: ignore[arg-type]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=5)
    args = ap.parse_args()
    trials = max(1, min(args.trials, 20))
    require_programs(["keepalived"])
    lab = NetnsBackend(topo_mod.load(os.environ.get("HALAB_TOPOLOGY")))
    if not lab.is_up():
        lab.up()
    provision(lab)
    results: dict[tuple[str, str], list[tuple[float, int]]] = {}

    def run(stack: str, stop: Callable[[str], None], heal: Callable[[str], None]) -> None:
        for kind in ("power", "graceful"):
            for i in range(trials):
                out, failed = trial(lab, kind, stop, heal)
                results.setdefault((stack, kind), []).append((out, failed))
                print(f"{stack:<10} {kind:<9} trial {i + 1}: outage {out:.3f} s, "
                      f"{failed} failed", flush=True)

    directors = [d.name for d in lab.topology.directors]
    run("halab", lambda h: lab.stop_service(h, "heartbeat"),
        lambda h: lab.restart_service(h, "heartbeat"))
    with tempfile.TemporaryDirectory(prefix="halab-kd-") as tmp:
        for d in directors:
            lab.stop_service(d, "heartbeat")
        kd = Keepalived(lab, Path(tmp))
        try:
            kd.up()
            run("keepalived", kd.stop, kd.start)
        finally:
            kd.down()
            for d in directors:
                vip = f"{lab.topology.vip.address}/{lab.topology.vip.network.subnet.prefixlen}"
                lab.run(d, ["ip", "addr", "del", vip, "dev", "eth1"], check=False)
                lab.restart_service(d, "heartbeat")

    print(f"\n{trials} trials each; outage = fault to first good response (s)")
    print(f"{'stack':<11}{'fault':<10}{'median':>8}{'max':>8}{'failed (max)':>14}")
    med: dict[tuple[str, str], float] = {}
    for (stack, kind), rs in results.items():
        outs = [o for o, _ in rs]
        med[(stack, kind)] = statistics.median(outs)
        print(f"{stack:<11}{kind:<10}{statistics.median(outs):>8.3f}{max(outs):>8.3f}"
              f"{max(f for _, f in rs):>14}")
    for kind in ("power", "graceful"):
        a, b = med.get(("halab", kind)), med.get(("keepalived", kind))
        if a is not None and b:
            print(f"{kind}: halab / keepalived median outage = {a / b:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
