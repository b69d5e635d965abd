"""halab's balancer against HAProxy and nginx, side by side in the same lab and run.

wrk (-t1 -c50, keep-alive) from the client through the first director to the
two nginx web nodes. Each balancer runs with one worker, in turn, on the
director's public address (through the same firewall), without access logs.
Figures per run: requests/s and requests per CPU-second of the balancer's
processes (the steadiest figure on a noisy machine). Rounds rotate the
order; the report shows medians and halab's ratio to HAProxy in the same
mode (>= 1.0 is the goal).

    python benchmarks/balancer_vs_peers.py [--rounds 3] [--seconds 5]

Needs root, wrk and haproxy (./bootstrap bench installs them). The lab is
brought up if needed and the director's own balancer is restored afterwards.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.poll import wait_until
from lab import topology as topo_mod
from lab.backends.netns import NetnsBackend
from lab.backends.netns.supervisor import listening_ports
from lab.system import env, require_programs
from provision import provision
from provision.web import HEALTH_PATH

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Candidate:
    name: str
    mode: str  # http | tcp
    argv: list[str]
    config: tuple[str, str] | None = None  # (file name, text)


def candidates(topo: topo_mod.Topology, tmp: Path, python: str) -> list[Candidate]:
    d = topo.directors[0]
    bind = f"{d.address('public')}:{topo.ports.http}"
    webs = [(w.name, f"{w.address('private')}:{topo.ports.http}") for w in topo.webs]
    out = []
    for mode in ("http", "tcp"):
        servers = "".join(f'[[servers]]\nname = "{n}"\naddress = "{a}"\n' for n, a in webs)
        check = "http" if mode == "http" else "tcp"
        toml = (f'[global]\naccess_log = false\nmaxconn = 9000\n[frontend]\nbind = "{bind}"\n'
                f'mode = "{mode}"\n[health]\ncheck = "{check}"\npath = "{HEALTH_PATH}"\n'
                f"{servers}")
        out.append(Candidate(f"halab-{mode}", mode,
                             [python, "-m", "balancer", "-f", str(tmp / f"halab-{mode}.toml")],
                             (f"halab-{mode}.toml", toml)))
        hsrv = "".join(f"    server {n} {a} check inter 200 rise 2 fall 2\n" for n, a in webs)
        reuse = "    http-reuse safe\n" if mode == "http" else ""
        keep = "    option http-keep-alive\n" if mode == "http" else ""
        cfg = (f"global\n    nbthread 1\n    maxconn 9000\n"
               f"defaults\n    mode {mode}\n    timeout connect 300ms\n    timeout client 30s\n"
               f"    timeout server 30s\n    retries 3\n    option redispatch\n{keep}"
               f"frontend fe\n    bind {bind}\n    default_backend be\n"
               f"backend be\n    balance roundrobin\n{reuse}{hsrv}")
        out.append(Candidate(f"haproxy-{mode}", mode,
                             ["haproxy", "-db", "-f", str(tmp / f"haproxy-{mode}.cfg")],
                             (f"haproxy-{mode}.cfg", cfg)))
    ups = "".join(f"        server {a};\n" for _, a in webs)
    ngx = (f"worker_processes 1;\npid {tmp}/nginx.pid;\nerror_log stderr;\n"
           f"events {{ worker_connections 4096; }}\n"
           f"http {{\n    access_log off;\n    upstream be {{\n{ups}        keepalive 64;\n    }}\n"
           f"    server {{\n        listen {bind};\n        location / {{\n"
           f"            proxy_pass http://be;\n            proxy_http_version 1.1;\n"
           f'            proxy_set_header Connection "";\n        }}\n    }}\n}}\n')
    out.append(Candidate("nginx-proxy", "http",
                         ["nginx", "-e", "stderr", "-g", "daemon off;", "-c",
                          str(tmp / "nginx.conf")], ("nginx.conf", ngx)))
    return out


def cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and its direct children (nginx's worker)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        f = raw[raw.rindex(")") + 2:].split()
        if int(entry) == pid or int(f[1]) == pid:
            total += int(f[11]) + int(f[12])
    return total / CLK_TCK


def run_wrk(lab: NetnsBackend, client: str, url: str, seconds: int) -> tuple[int, float, str]:
    out = lab.run(client, ["wrk", "-t1", "-c50", f"-d{seconds}s", url],
                  timeout=seconds + 30).text
    m = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    if not m:
        raise RuntimeError(f"cannot read wrk output: {out}")
    span = float(m.group(2)) / (1000 if m.group(3) == "ms" else 1)
    bad = ""
    for pat in (r"Non-2xx or 3xx responses: (\d+)", r"Socket errors: (.*)"):
        e = re.search(pat, out)
        if e:
            bad += f" {e.group(0)}"
    return int(m.group(1)), span, bad.strip()


def measure(lab: NetnsBackend, cand: Candidate, url: str, seconds: int) -> dict[str, float]:
    topo = lab.topology
    d, client = topo.directors[0].name, topo.clients[0].name
    proc = subprocess.Popen(lab.command(d, cand.argv), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env())
    try:
        wait_until(lambda: proc.poll() is not None or topo.ports.http in listening_ports(
            proc.pid), 10, f"{cand.name} listening")
        if proc.poll() is not None:
            raise RuntimeError(f"{cand.name} exited: {proc.stderr.read().decode()[-500:]}"
                               if proc.stderr else cand.name)
        run_wrk(lab, client, url, 1)  # warm up: pools, caches, health state
        c0 = cpu_seconds(proc.pid)
        n, span, bad = run_wrk(lab, client, url, seconds)
        cpu = cpu_seconds(proc.pid) - c0
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if bad:
        print(f"  warning: {cand.name}: {bad}", file=sys.stderr)
    return {"rps": n / span, "per_cpu": n / cpu if cpu > 0 else float("inf"), "cpu": cpu}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--only", nargs="*", help="candidate names to run")
    args = ap.parse_args()
    rounds, seconds = max(1, min(args.rounds, 10)), max(1, min(args.seconds, 30))
    require_programs(["wrk", "haproxy", "nginx"])
    lab = NetnsBackend(topo_mod.load(os.environ.get("HALAB_TOPOLOGY")))
    topo = lab.topology
    if not lab.is_up():
        lab.up()
    provision(lab)
    director = topo.directors[0]
    url = f"http://{director.address('public')}:{topo.ports.http}/"
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="halab-bench-") as tmpdir:
        tmp = Path(tmpdir)
        os.chmod(tmp, 0o755)
        cands = [c for c in candidates(topo, tmp, lab.python)
                 if not args.only or c.name in args.only]
        for c in cands:
            if c.config:
                (tmp / c.config[0]).write_text(c.config[1])
        lab.stop_service(director.name, "balancer")
        try:
            for r in range(rounds):
                order = cands[r % len(cands):] + cands[:r % len(cands)]
                for c in order:
                    res = measure(lab, c, url, seconds)
                    results.setdefault(c.name, []).append(res)
                    print(f"round {r + 1}: {c.name:<13} {res['rps']:9.0f} req/s "
                          f"{res['per_cpu']:9.0f} req/CPU-s", flush=True)
        finally:
            lab.restart_service(director.name, "balancer")

    med = {name: {k: statistics.median(x[k] for x in runs) for k in ("rps", "per_cpu")}
           for name, runs in results.items()}
    print(f"\nmedians of {rounds} rounds, wrk -t1 -c50 -d{seconds}s, one worker each:")
    print(f"{'balancer':<14}{'req/s':>10}{'req/CPU-s':>12}")
    for name, m in med.items():
        print(f"{name:<14}{m['rps']:>10.0f}{m['per_cpu']:>12.0f}")
    for mode in ("http", "tcp"):
        ours, peer = med.get(f"halab-{mode}"), med.get(f"haproxy-{mode}")
        if ours and peer:
            print(f"halab {mode} / HAProxy {mode}: {ours['rps'] / peer['rps']:.2f}x req/s, "
                  f"{ours['per_cpu'] / peer['per_cpu']:.2f}x req/CPU-s (goal >= 1.0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
