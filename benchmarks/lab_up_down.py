"""Wall time of ``halab up`` and ``halab down`` (the embedded netns lab), median of N runs.

Targets on the reference machine (2 cores): up <= 3 s, down <= 2 s. The
runs use a lab of their own (lab name ``halabb``) beside any running one,
through the real CLI, so the figure includes what a user waits for.
As a reference measured in the same run, it also times the bare iproute2
work for the same namespaces and veths (``ip -batch``), the floor any
namespace lab pays.

    python benchmarks/lab_up_down.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from lab import topology as topo_mod
from lab.backends.netns import plan as netns
from lab.system import env

BENCH_LAB = "halabb"
TARGET_UP, TARGET_DOWN = 3.0, 2.0


def timed(argv: list[str], stdin: bytes | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, input=stdin, check=True, capture_output=True, env=env(), timeout=120)
    return time.perf_counter() - t0


def bare_iproute2(topo: topo_mod.Topology) -> tuple[float, float]:
    """Only the namespaces, bridges, veths and addresses, in one ip process per namespace."""
    t0 = time.perf_counter()
    subprocess.run(["ip", "-batch", "-"], check=True, env=env(),
                   input="\n".join(netns.plan_namespaces(topo, set())).encode())
    sw = netns.switch_namespace(topo)
    subprocess.run(["ip", "-n", sw, "-batch", "-"], check=True, env=env(),
                   input="\n".join(netns.plan_switch(topo, set())).encode())
    for host in topo.hosts.values():
        subprocess.run(["ip", "-n", topo.namespace(host.name), "-batch", "-"], check=True,
                       env=env(), input="\n".join(netns.plan_host(host)).encode())
    up = time.perf_counter() - t0
    names = [sw] + [topo.namespace(h) for h in topo.hosts]
    down = timed(["ip", "-batch", "-"], "\n".join(f"netns del {n}" for n in names).encode())
    return up, down


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--topology", default=None)
    args = ap.parse_args()
    runs = max(1, min(args.runs, 50))  # bounded

    data = yaml.safe_load(Path(args.topology or topo_mod.DEFAULT_TOPOLOGY).read_text())
    data["lab"] = BENCH_LAB
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "topology.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        topo = topo_mod.load(path)
        cli = [sys.executable, "-m", "halab.cli", "--topology", str(path)]
        subprocess.run([*cli, "down"], check=True, capture_output=True, env=env())
        ups, downs, bare_ups, bare_downs = [], [], [], []
        try:
            for _ in range(runs):
                ups.append(timed([*cli, "up"]))
                downs.append(timed([*cli, "down"]))
                bu, bd = bare_iproute2(topo)
                bare_ups.append(bu)
                bare_downs.append(bd)
        finally:
            subprocess.run([*cli, "down"], capture_output=True, env=env())

    def line(name: str, xs: list[float], ref: list[float], target: float) -> str:
        med, rmed = statistics.median(xs), statistics.median(ref)
        verdict = "meets" if med <= target else "MISSES"
        return (f"{name:<12} median {med:6.3f} s  (min {min(xs):.3f}, max {max(xs):.3f})  "
                f"{verdict} target {target:.1f} s;  bare iproute2 {rmed:.3f} s, "
                f"ratio {med / rmed:.1f}x")

    print(f"halab lab up/down, {runs} runs, {len(topo.hosts)} hosts")
    print(line("halab up", ups, bare_ups, TARGET_UP))
    print(line("halab down", downs, bare_downs, TARGET_DOWN))
    return 0


if __name__ == "__main__":
    sys.exit(main())
