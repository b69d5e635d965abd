"""``halab fault``, ``halab faults`` and ``halab heal``: the suite's fault catalogue
(harness.faults) by hand, on any backend, with what is in effect kept in the same note
the suite keeps (so ``halab heal`` and the suite's own recovery undo it).

``--measure``: the client probes through the VIP while the fault goes in, halab waits
(bounded) until service is back, then says what the client saw (harness.measure) and
writes the timeline.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from harness import measure
from harness.faults import (
    Blackhole,
    CutLinks,
    Fault,
    Faults,
    Freeze,
    Netem,
    Partition,
    PowerLoss,
    Refuse,
    SignalService,
    StopService,
)
from harness.timeline import NO_PLOTS
from harness.traffic import ClientLoop, vip_holders
from lab.backend import Backend
from lab.errors import HalabError


@dataclass(frozen=True)
class Entry:
    name: str
    summary: str
    args: Callable[[argparse.ArgumentParser], None]  # its own arguments
    build: Callable[[Backend, argparse.Namespace], Fault]


def _host(p: argparse.ArgumentParser) -> None:
    p.add_argument("host")


def _service(p: argparse.ArgumentParser) -> None:
    p.add_argument("host")
    p.add_argument("service", help="e.g. heartbeat, balancer (directors), nginx (web nodes)")


def _networks(p: argparse.ArgumentParser) -> None:
    p.add_argument("--network", action="append", dest="networks", metavar="NET",
                   help="only this network's link (repeatable; default: every lab link)")


def _cut(p: argparse.ArgumentParser) -> None:
    _host(p)
    _networks(p)


def _partition(p: argparse.ArgumentParser) -> None:
    p.add_argument("pair", nargs="*", metavar="HOST",
                   help="the two hosts (default: the two directors)")


def _refuse(p: argparse.ArgumentParser) -> None:
    _host(p)
    p.add_argument("--port", type=int, help="default: the lab's HTTP port")


def _netem(p: argparse.ArgumentParser) -> None:
    _host(p)
    _networks(p)
    p.add_argument("--delay", type=float, default=0.0, metavar="MS")
    p.add_argument("--jitter", type=float, default=0.0, metavar="MS")
    p.add_argument("--loss", type=float, default=0.0, metavar="PCT")


def _nets(a: argparse.Namespace) -> tuple[str, ...] | None:
    return tuple(a.networks) if a.networks else None


def _pair(lab: Backend, a: argparse.Namespace) -> Partition:
    pair = a.pair or [d.name for d in lab.topology.directors[:2]]
    if len(pair) != 2 or pair[0] == pair[1]:
        raise HalabError("a partition is between two hosts: halab fault partition [HOST HOST]")
    for name in pair:
        lab.host(name)
    return Partition(pair[0], peer=pair[1])


def _service_of(lab: Backend, a: argparse.Namespace) -> str:
    names = [s.name for s in lab.services(a.host)]
    if a.service not in names:
        raise HalabError(f"{a.host} runs no service {a.service!r} (it runs: "
                         f"{', '.join(names) or 'none'})")
    return str(a.service)


CATALOGUE: tuple[Entry, ...] = (
    Entry("power-off", "power loss: links cut, then every process killed (a VM destroyed)",
          _host, lambda lab, a: PowerLoss(a.host)),
    Entry("power-on", "boot a host that power-off took down (heals that fault)",
          _host, lambda lab, a: PowerLoss(a.host)),
    Entry("cut", "unplug the host's cables: every lab link, or those of --network",
          _cut, lambda lab, a: CutLinks(a.host, networks=_nets(a))),
    Entry("partition", "the two directors lose each other on every link while the client "
          "reaches both: a split brain", _partition, _pair),
    Entry("kill", "SIGKILL a service: a crash (systemd restarts it where it supervises)",
          _service, lambda lab, a: SignalService(a.host, _service_of(lab, a), "KILL")),
    Entry("stop", "stop a service, as its supervisor does (SIGTERM: a graceful exit)",
          _service, lambda lab, a: StopService(a.host, _service_of(lab, a))),
    Entry("freeze", "SIGSTOP a service: a hung daemon that keeps its sockets (heal: SIGCONT)",
          _service, lambda lab, a: Freeze(a.host, _service_of(lab, a))),
    Entry("refuse", "new TCP connections to a port (default HTTP) refused with a RST; the "
          "service runs", _refuse,
          lambda lab, a: Refuse(a.host, port=a.port or lab.topology.ports.http)),
    Entry("blackhole", "every packet in and out of the host's lab links dropped, "
          "established connections too", _host, lambda lab, a: Blackhole(a.host)),
    Entry("netem", "tc netem on the host's lab links: --delay MS [--jitter MS], --loss PCT",
          _netem, lambda lab, a: Netem(a.host, networks=_nets(a), delay_ms=a.delay,
                                       jitter_ms=a.jitter, loss_pct=a.loss)),
)
BY_NAME = {e.name: e for e in CATALOGUE}
out = Console(soft_wrap=True, highlight=False)  # a line is a line, on a terminal or not


def add_parsers(add: Callable[..., argparse.ArgumentParser],
                parents: list[argparse.ArgumentParser]) -> None:
    """``fault`` (with one sub-command per fault, and ``list``), ``faults``, ``heal``;
    ``parents``: the options every command takes."""
    fp = add("fault", help="inject a fault (halab fault list: the catalogue)")
    kinds = fp.add_subparsers(dest="fault", required=True, metavar="NAME")
    kinds.add_parser("list", help="every fault, a line each", parents=parents)
    for e in CATALOGUE:
        p = kinds.add_parser(e.name, help=e.summary, description=e.summary, parents=parents)
        e.args(p)
        if e.name != "power-on":
            p.add_argument("--measure", action="store_true",
                           help="probe through the VIP meanwhile, wait until service is "
                           "back, print the outage and write the timeline")
            p.add_argument("--out", type=Path, default=Path("halab-timelines"), metavar="DIR",
                           help="--measure: where the timeline goes (default: %(default)s)")
    add("faults", help="the faults in effect (halab fault adds, halab heal undoes)")
    hp = add("heal", help="undo the faults in effect: one host's, or all")
    hp.add_argument("host", nargs="?")


def cmd_list() -> int:
    width = max(len(e.name) for e in CATALOGUE)
    for e in CATALOGUE:
        print(f"{e.name:<{width}}  {e.summary}")
    return 0


def require_up(lab: Backend) -> None:
    """The lab is up (a host powered off by a fault counts), else one line that says so."""
    if not lab.is_up():
        raise HalabError(f"lab {lab.topology.lab} is not up: run `halab up` first")


def cmd_fault(lab: Backend, a: argparse.Namespace) -> int:
    if a.fault == "list":
        return cmd_list()
    require_up(lab)
    entry = BY_NAME[a.fault]
    fault = entry.build(lab, a)
    if fault.host not in lab.topology.hosts:
        lab.host(fault.host)  # its error names the hosts there are
    faults = Faults.load(lab)
    if entry.name == "power-on":
        return _power_on(faults, fault.host)
    same = [f for f in faults.active if f == fault]
    if same:
        raise HalabError(f"already in effect: {same[0].describe()} (halab heal {fault.host})")
    if not a.measure:
        faults.inject(fault)
        out.print(f"{fault.describe()}   (halab heal {fault.host} undoes it)")
        return 0
    return _measured(lab, faults, fault, a)


def _power_on(faults: Faults, host: str) -> int:
    off = [f for f in faults.active if isinstance(f, PowerLoss) and f.host == host]
    if not off:
        raise HalabError(f"{host} was not powered off by halab (halab faults: what is in "
                         "effect)")
    faults.heal(off[0])
    out.print(f"{host}: powered on")
    return 0


@dataclass
class Measured:
    """What the client saw of one measured step (``halab fault --measure``, the demo)."""

    title: str
    back: bool  # service came back within the bound
    limit: float  # that bound (s)
    requests: int
    failed: int
    measured: dict[str, float]  # the timeline's figures (outage_ms, vip_added_ms, ...)
    budget_ms: float | None  # the failover budget the directors report
    holders: tuple[list[str], list[str]]  # who announced the VIP before, after
    files: list[Path]


def run_measured(lab: Backend, title: str, inject: Callable[[], float], out_dir: Path,
                 name: str) -> Measured:
    """``inject`` (it returns the fault's time) under the client's prober; waits until
    service is back and has stayed so (bounded), writes the timeline."""
    before = vip_holders(lab)
    if not before:
        raise HalabError("nobody holds the VIP: nothing to measure (halab status)")
    budget = measure.budget(lab)
    after = max(1.0, 2 * budget.get("total", 0.0) / 1000) * lab.slowness
    limit = 30.0 * lab.slowness
    back = False

    def act(loop: ClientLoop) -> float:
        nonlocal back
        t0 = inject()
        back = measure.until_back(loop, t0, after, time.monotonic() + limit)
        return t0

    obs = measure.observe(lab, count=100_000, act=act, sample_s=limit + 10)
    tl = measure.timeline(lab, title, obs)
    files = tl.write(out_dir, "-".join([time.strftime("%Y%m%d-%H%M%S"), name]))
    return Measured(title, back, limit, len(obs.results), len(ClientLoop.failures(obs.results)),
                    dict(tl.measured), budget.get("total"), (before, vip_holders(lab)), files)


def report(m: Measured) -> None:
    if not m.back:
        out.print(f"  [red]service was not back within {m.limit:g} s[/]")
    against = f" (the failover budget: {m.budget_ms:g} ms)" if m.budget_ms is not None else ""
    if m.failed:
        out.print(f"  outage {m.measured.get('outage_ms', float('inf')):g} ms{against}: "
                  f"{m.failed} of {m.requests} requests through the VIP failed")
    else:
        out.print(f"  no request failed ({m.requests} through the VIP)")
    before, now = m.holders
    if before != now:
        added = (f", added after {m.measured['vip_added_ms']:g} ms"
                 if "vip_added_ms" in m.measured else "")
        out.print(f"  VIP: {', '.join(before)} -> {', '.join(now) or 'nobody'}{added}")
    if "arp_seen_by_client_ms" in m.measured:
        out.print(f"  the client's ARP entry for the VIP changed after "
                  f"{m.measured['arp_seen_by_client_ms']:g} ms")
    png = any(p.suffix == ".png" for p in m.files)
    out.print("  timeline: " + ", ".join(map(str, m.files))
              + ("" if png else f"   ({escape(NO_PLOTS)})"))


def _measured(lab: Backend, faults: Faults, fault: Fault, a: argparse.Namespace) -> int:
    m = run_measured(lab, fault.describe(), lambda: faults.inject(fault), a.out,
                     f"{a.fault}-{fault.host}")
    out.print(f"{fault.describe()}   (halab heal {fault.host} undoes it)")
    report(m)
    return 0 if m.back else 1


def cmd_faults(lab: Backend) -> int:
    faults = Faults.load(lab)
    if not faults.active:
        out.print("no fault in effect")
        return 0
    now = time.time()
    for f in faults.active:
        since = f" (for {now - f.at:.0f} s)" if f.at is not None else ""
        out.print(f"{f.describe()}{since}")
    return 0


def cmd_heal(lab: Backend, host: str | None) -> int:
    faults = Faults.load(lab)
    if host is not None:
        lab.host(host)
    mine = [f for f in faults.active if host is None or f.host == host
            or getattr(f, "peer", None) == host]
    if not mine:
        out.print("nothing to heal" + (f" on {host}" if host else ""))
        return 0
    errors = []
    for f in reversed(mine):  # newest first
        try:
            faults.heal(f)
            out.print(f"healed: {f.describe()}")
        except HalabError as e:
            errors.append(f"{f.describe()}: {e}")
    if errors:
        raise HalabError("could not heal: " + "; ".join(errors))
    return 0
