"""Spurious failovers under saturation: the heartbeat must not flap while the machine is busy.

wrk drives the balancer through the VIP as hard as it can (both cores busy:
wrk, the balancer, nginx) for ``--minutes``; meanwhile the VIP owner is
sampled every second. Reported: transitions of either director during the
run (the goal is 0), late-heartbeat warnings (warntime exceeded), the longest
silence seen, and what wrk served.

    python benchmarks/failover_soak.py [--minutes 10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.traffic import vip_holders
from lab import topology as topo_mod
from lab.backends.netns import NetnsBackend
from lab.system import env, require_programs
from provision import provision
from provision.director import heartbeat_socket


def events(lab: NetnsBackend, director: str) -> list[dict[str, object]]:
    sock = heartbeat_socket(lab.paths(director))
    out = lab.run(director, ["hbctl", "-s", sock, "events"]).text
    return list(json.loads(out))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    args = ap.parse_args()
    minutes = max(0.1, min(args.minutes, 60.0))  # bounded
    require_programs(["wrk"])
    lab = NetnsBackend(topo_mod.load(os.environ.get("HALAB_TOPOLOGY")))
    topo = lab.topology
    if not lab.is_up():
        lab.up()
    provision(lab)
    directors = [d.name for d in topo.directors]
    start_holders = vip_holders(lab)
    t0 = time.time()
    seconds = int(minutes * 60)
    wrk = subprocess.Popen(lab.command(topo.clients[0].name,
                                       ["wrk", "-t2", "-c100", f"-d{seconds}s",
                                        f"http://{topo.vip.address}/"]),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env(), text=True)
    owners_seen: set[tuple[str, ...]] = set()
    try:
        while wrk.poll() is None and time.time() - t0 < seconds + 30:
            owners_seen.add(tuple(vip_holders(lab)))
            time.sleep(1.0)  # sampling period of the owner, not a synchronisation
        out, _ = wrk.communicate(timeout=60)
    finally:
        if wrk.poll() is None:
            wrk.kill()
            wrk.wait()
    transitions = late = 0
    longest = 0.0
    for d in directors:
        for e in events(lab, d):
            if float(e["t"]) < t0:  # type: ignore[arg-type]
                continue
            if e["event"] == "transition":
                transitions += 1
                print(f"  {d}: {e}")
            elif e["event"] in ("peer_late", "peer_dead"):
                late += e["event"] == "peer_late"
                longest = max(longest, float(e.get("silent_ms", 0)))  # type: ignore[arg-type]
    served = [ln.strip() for ln in out.splitlines() if "requests in" in ln or "Socket" in ln
              or "Non-2xx" in ln or "Requests/sec" in ln]
    print(f"saturated for {minutes:g} min: VIP owner at start {start_holders}, "
          f"owners seen {sorted(owners_seen)}")
    print(f"spurious transitions: {transitions} (goal 0); late heartbeats: {late}; "
          f"longest silence reported: {longest:.0f} ms")
    print("wrk: " + "; ".join(served))
    return 0 if transitions == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
