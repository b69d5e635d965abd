"""Real packets inside the lab, through any backend: probes, listeners and client
loops run on lab hosts (``python -m harness.probe``, halab being installed there),
and who announces the VIP is read from the directors themselves.

Used by the integration suite and the benchmarks.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from lab.backend import Backend
from lab.errors import HalabError
from lab.system import env


def background(lab: Backend, host: str, argv: Sequence[str],
               stderr: int = subprocess.PIPE) -> subprocess.Popen[str]:
    """``argv`` on ``host`` in the background, its output piped, its input nothing: a
    remote command given the terminal (an ``ssh -tt`` on the VMs) puts it in raw mode,
    and a Ctrl-C typed there went to that command, not to halab (``halab watch`` on the
    VMs went on, its client loop ended)."""
    return subprocess.Popen(lab.command(host, argv), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=stderr, text=True, env=env())


def probe_argv(lab: Backend, *args: str) -> list[str]:
    return [lab.python, "-m", "harness.probe", *args]


def probe(lab: Backend, host: str, kind: str, addr: str, port: int,
          timeout: float = 1.0) -> str:
    """Send a real TCP/UDP probe from ``host``; returns open/refused/timeout/unreachable."""
    res = lab.run(host, probe_argv(lab, kind, addr, str(port), "--timeout", str(timeout)),
                  timeout=timeout + 10)
    return res.text.strip()


def ping(lab: Backend, host: str, addr: str, *, v6: bool = False) -> bool:
    argv = ["ping", "-6" if v6 else "-4", "-n", "-c", "1", "-W", "1", addr]
    return lab.run(host, argv, check=False, timeout=10).ok


@dataclass
class Listener:
    proc: subprocess.Popen[str]
    peers: list[str] = field(default_factory=list)

    def collect(self) -> list[str]:
        """Stop the listener and return the addresses it heard from."""
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=10)
        for line in out.splitlines():
            if line.startswith("{"):
                self.peers.append(json.loads(line)["peer"])
        return self.peers


@contextmanager
def listener(lab: Backend, host: str, kind: str, port: int, seconds: float = 120.0,
             addr: str = "0.0.0.0") -> Iterator[Listener]:
    """A probe server on ``host`` (``tcp-listen`` or ``udp-echo``), ended by PID afterwards."""
    proc = background(lab, host, probe_argv(lab, kind, str(port), "--seconds", str(seconds),
                                            "--addr", addr))
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the server is bound (or died)
    if line.strip() != "ready":
        proc.kill()
        _, err = proc.communicate(timeout=10)
        raise HalabError(f"{kind} listener on {host}:{port} did not start: {line!r} "
                         f"{err.strip()}")
    lst = Listener(proc)
    try:
        yield lst
    finally:
        if proc.poll() is None:
            lst.collect()


class ClientLoop:
    """Sequential HTTP requests from a lab host (``harness.probe http-loop``: a new
    connection each; ``keepalive``: one connection), read as they happen. A request's
    ``timeout`` is 1 s at the lab's pace (x ``Backend.slowness``) unless given."""

    def __init__(self, lab: Backend, host: str, url: str, count: int, gap_ms: float = 5.0,
                 timeout: float | None = None, connect_timeout: float | None = None,
                 keepalive: bool = False) -> None:
        if timeout is None:
            timeout = 1.0 * lab.slowness
        extra = ["--connect-timeout", str(connect_timeout)] if connect_timeout else []
        kind = "http-keepalive" if keepalive else "http-loop"
        self.proc = background(lab, host, probe_argv(
            lab, kind, url, "--count", str(count), "--gap-ms", str(gap_ms), "--timeout",
            str(timeout), *extra))
        self.results: list[dict[str, object]] = []
        self.count = count

    def read(self, n: int) -> list[dict[str, object]]:
        """Block until ``n`` results are in (or the loop ended)."""
        assert self.proc.stdout is not None
        while len(self.results) < n:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.results.append(json.loads(line))
        return self.results

    def finish(self) -> list[dict[str, object]]:
        self.read(self.count)
        self.proc.wait(timeout=60)
        return self.results

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    @staticmethod
    def failures(results: list[dict[str, object]]) -> list[dict[str, object]]:
        return [r for r in results if r.get("status") != 200]

    @staticmethod
    def first_good_after(results: Sequence[dict[str, object]],
                         t_fault: float) -> dict[str, object] | None:
        """The first good response that started after the fault and after the last
        failed request began: service is back (a request that slipped through
        before the fault took hold does not end the outage)."""
        starts = [float(r["t"]) for r in results  # type: ignore[arg-type]
                  if r.get("status") != 200 and float(r["t"]) >= t_fault]  # type: ignore[arg-type]
        since = max([t_fault, *starts])
        return next((r for r in results if r.get("status") == 200
                     and float(r["t"]) >= since), None)  # type: ignore[arg-type]

    @staticmethod
    def outage(results: Sequence[dict[str, object]], t_fault: float) -> float:
        """From the fault to the end of the first good response after it (above)."""
        r = ClientLoop.first_good_after(results, t_fault)
        if r is None:
            return float("inf")
        return float(r["t"]) + float(r["ms"]) / 1000 - t_fault  # type: ignore[arg-type]

    @staticmethod
    def rate(results: Sequence[dict[str, object]]) -> float:
        """Requests started per second over ``results``."""
        if len(results) < 2:
            return 0.0
        span = float(results[-1]["t"]) - float(results[0]["t"])  # type: ignore[arg-type]
        return (len(results) - 1) / span if span > 0 else float("inf")


def vip_state(ip_addr_json: bytes, vip: str) -> str | None:
    """Where a host has ``vip``, from its ``ip -j -4 addr show``: ``announced`` (on an
    interface up on the wire: it answers ARP for it), ``silent`` (only on lo, where a
    draining VIP stays while its connections finish, or on a link that is down), or
    None (not at all)."""
    places = [link for link in json.loads(ip_addr_json or b"[]")
              if any(a.get("local") == vip for a in link.get("addr_info", []))]
    if any(link.get("operstate") == "UP" and link["ifname"] != "lo" for link in places):
        return "announced"
    return "silent" if places else None


def announcing(lab: Backend, director: str, vip: str) -> bool:
    """Does ``director`` announce the VIP (``vip_state``)? A host that cannot be reached,
    powered off, has nothing."""
    try:
        res = lab.run(director, ["ip", "-j", "-4", "addr", "show"], check=False, timeout=5)
    except HalabError:
        return False
    return res.ok and vip_state(res.stdout, vip) == "announced"


def vip_holders(lab: Backend) -> list[str]:
    """The directors that announce the VIP right now (normally exactly one)."""
    vip = str(lab.topology.vip.address)
    return [d.name for d in lab.topology.directors if announcing(lab, d.name, vip)]


@dataclass(frozen=True)
class VipSample:
    t: float  # epoch seconds, the start of the sample
    end: float
    holders: tuple[str, ...] | None  # None: inconclusive (it changed while being read)


class VipSampler:
    """Samples who announces the VIP, over and over, in a thread while a failover
    happens (bounded in time); ``stop()`` returns every sample.

    The directors cannot be read at one instant, so a sample reads them all and
    then every one but the last again: if those agree, the sample stands for the
    moment the last one was read; if not, a director changed in between and the
    sample is marked inconclusive rather than showing a state that never was.
    """

    def __init__(self, lab: Backend, seconds: float = 30.0) -> None:
        self.lab = lab
        self.samples: list[VipSample] = []
        self._stop = threading.Event()
        self._deadline = time.monotonic() + seconds
        self._thread = threading.Thread(target=self._run, name="vip-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        vip = str(self.lab.topology.vip.address)
        names = [d.name for d in self.lab.topology.directors]
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            t = time.time()
            first = {d: announcing(self.lab, d, vip) for d in names}
            again = {d: announcing(self.lab, d, vip) for d in names[:-1]}
            same = all(first[d] == again[d] for d in again)
            holders = tuple(d for d in names if first[d]) if same else None
            self.samples.append(VipSample(t, time.time(), holders))

    def stop(self) -> list[VipSample]:
        self._stop.set()
        self._thread.join(timeout=30)
        return self.samples
