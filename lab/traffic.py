"""Real packets inside the lab: probes and listeners run on lab hosts (see probe.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lab.backend import Backend
from lab.system import env

PROBE = Path(__file__).with_name("probe.py")


def probe(lab: Backend, host: str, kind: str, addr: str, port: int,
          timeout: float = 1.0) -> str:
    """Send a real TCP/UDP probe from ``host``; returns open/refused/timeout/unreachable."""
    res = lab.run(host, [sys.executable, str(PROBE), kind, addr, str(port),
                         "--timeout", str(timeout)], timeout=timeout + 10)
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
    argv = lab.command(host, [sys.executable, str(PROBE), kind, str(port),
                              "--seconds", str(seconds), "--addr", addr])
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env())
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the server is bound (or died)
    if line.strip() != "ready":
        proc.kill()
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"{kind} listener on {host}:{port} did not start: {line!r} {err.strip()}")
    lst = Listener(proc)
    try:
        yield lst
    finally:
        if proc.poll() is None:
            lst.collect()


class ClientLoop:
    """Sequential HTTP requests from a lab host (probe.py http-loop), read as they happen."""

    def __init__(self, lab: Backend, host: str, url: str, count: int, gap_ms: float = 5.0,
                 timeout: float = 1.0, connect_timeout: float | None = None) -> None:
        extra = ["--connect-timeout", str(connect_timeout)] if connect_timeout else []
        argv = lab.command(host, [sys.executable, str(PROBE), "http-loop", url,
                                  "--count", str(count), "--gap-ms", str(gap_ms),
                                  "--timeout", str(timeout), *extra])
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env())
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
    def outage(results: list[dict[str, object]], t_fault: float) -> float:
        """From the fault to the end of the first good response started after it."""
        for r in results:
            t = float(r["t"])  # type: ignore[arg-type]
            if t >= t_fault and r.get("status") == 200:
                return t + float(r["ms"]) / 1000 - t_fault  # type: ignore[arg-type]
        return float("inf")
