"""A failover timeline from several vantage points, with millisecond timestamps.

Sources:
* the fault itself (when it was injected)
* the daemons' logfmt logs on each director (``peer_late``, ``peer_dead``,
  ``transition``, ``vip_added``, ``garp``, ``vip_removed`` ...)
* the client's neighbour table (``ip -t monitor neigh`` in the client: the
  moment the gratuitous ARP re-pointed the VIP at another MAC)
* the client's requests: every failed one (start and end) and the first
  successful one after the fault

Written as JSON, as a readable text timeline and as a PNG plot (matplotlib),
with the configuration's theoretical budget beside the measured values.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import re
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.traffic import ClientLoop, background
from lab.backend import Backend

LOG_LINE = re.compile(r"^(\S+Z) level=\S+ daemon=(\S+) event=(\S+)\s*(.*)$")
FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def parse_ts(stamp: str) -> float:
    ts = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ")
    return ts.replace(tzinfo=datetime.UTC).timestamp()


def event_times(lab: Backend, host: str, service: str, event: str,
                **match: str) -> list[float]:
    """Epoch times of ``event`` in a daemon's log, whose fields include ``match``."""
    out = []
    for line in lab.log_text(host, service).splitlines():
        m = LOG_LINE.match(line)
        if m and m.group(3) == event:
            fields = dict(FIELD.findall(m.group(4)))
            if all(fields.get(k) == v for k, v in match.items()):
                out.append(parse_ts(m.group(1)))
    return out


@dataclass
class Mark:
    t: float  # epoch seconds
    source: str  # "client", "dir1/heartbeat", "fault", ...
    what: str
    detail: str = ""
    end: float | None = None  # for spans (a failed request)


@dataclass
class Timeline:
    title: str
    t0: float  # the fault
    budget_ms: dict[str, float] = field(default_factory=dict)
    marks: list[Mark] = field(default_factory=list)
    measured: dict[str, float] = field(default_factory=dict)

    def add(self, t: float, source: str, what: str, detail: str = "",
            end: float | None = None) -> None:
        self.marks.append(Mark(t, source, what, detail, end))

    def add_log(self, lab: Backend, host: str, service: str, events: set[str],
                since: float, until: float) -> None:
        """The daemon's events between ``since`` and ``until`` (epoch)."""
        for line in lab.log_text(host, service).splitlines():
            m = LOG_LINE.match(line)
            if not m or m.group(3) not in events:
                continue
            t = parse_ts(m.group(1))
            if since <= t <= until:
                fields = dict(FIELD.findall(m.group(4)))
                detail = " ".join(f"{k}={v}" for k, v in fields.items()
                                  if k in ("from", "to", "reason", "peer", "silent_ms", "vip",
                                           "server", "link"))
                self.add(t, f"{host}/{service}", m.group(3), detail)

    def add_requests(self, results: list[dict[str, Any]], source: str = "client") -> None:
        """Failed requests as spans, and the first success that ends the outage."""
        for r in results:
            if r.get("status") != 200:
                t = float(r["t"])
                self.add(t, source, "request_failed", str(r.get("err") or r.get("status")),
                         end=t + float(r["ms"]) / 1000)
        first = ClientLoop.first_good_after(results, self.t0)
        if first is not None:
            end = float(first["t"]) + float(first["ms"]) / 1000  # type: ignore[arg-type]
            self.add(end, source, "first_success_after_fault", str(first.get("body", ""))[:40])
            self.measured["outage_ms"] = self.rel_ms(end)
        self.measured["failed_requests"] = sum(1 for r in results if r.get("status") != 200)

    def rel_ms(self, t: float) -> float:
        return round((t - self.t0) * 1000, 1)

    # --- output ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "fault_at": self.t0,
            "budget_ms": self.budget_ms,
            "measured": self.measured,
            "marks": [dict(asdict(m), rel_ms=self.rel_ms(m.t),
                           rel_end_ms=None if m.end is None else self.rel_ms(m.end))
                      for m in sorted(self.marks, key=lambda m: m.t)],
        }

    def text(self) -> str:
        at = datetime.datetime.fromtimestamp(self.t0, datetime.UTC)
        lines = [f"{self.title}  (t=0: the fault, {at:%H:%M:%S.%f} UTC)"]
        if self.budget_ms:
            parts = ", ".join(f"{k} {v:g}" for k, v in self.budget_ms.items())
            lines.append(f"  budget (ms): {parts}")
        if self.measured:
            lines.append("  measured: " + ", ".join(f"{k} {v:g}" for k, v in
                                                   self.measured.items()))
        for m in sorted(self.marks, key=lambda m: m.t):
            span = f" .. {self.rel_ms(m.end):+9.1f}" if m.end is not None else " " * 13
            lines.append(f"  {self.rel_ms(m.t):+9.1f} ms{span}  {m.source:<18} {m.what}"
                         + (f"  {m.detail}" if m.detail else ""))
        return "\n".join(lines) + "\n"

    def plot(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        sources = sorted({m.source for m in self.marks})
        rows = {s: i for i, s in enumerate(sources)}
        fig, ax = plt.subplots(figsize=(12, 1.6 + 1.0 * len(sources)))
        placed: dict[str, int] = {}
        for m in sorted(self.marks, key=lambda m: m.t):
            y = rows[m.source]
            x = self.rel_ms(m.t)
            if m.end is not None:
                ax.barh(y, self.rel_ms(m.end) - x, left=x, height=0.4, color="tab:red",
                        alpha=0.6)
                continue
            colour = {"first_success_after_fault": "tab:green", "fault": "black"}.get(
                m.what, "tab:blue")
            ax.plot([x], [y], marker="|", markersize=18, color=colour)
            n = placed.get(m.source, 0)  # stagger the labels of close events
            placed[m.source] = n + 1
            label = f"VIP: {m.detail}" if m.what == "vip_announced_by" else m.what
            ax.annotate(f"{label} {x:+.0f}", (x, y), xytext=(2, 8 + 10 * (n % 3)),
                        textcoords="offset points", fontsize=7, rotation=20)
        ax.axvline(0, color="black", linewidth=1)
        if "total" in self.budget_ms:
            ax.axvline(self.budget_ms["total"], color="tab:orange", linestyle="--",
                       label=f"budget {self.budget_ms['total']:g} ms")
        if "outage_ms" in self.measured:
            ax.axvline(self.measured["outage_ms"], color="tab:green", linestyle=":",
                       label=f"outage {self.measured['outage_ms']:g} ms")
        ax.set_yticks(range(len(sources)), sources)
        ax.set_xlabel("ms since the fault")
        ax.set_ylim(-0.5, len(sources) - 0.2)
        ax.set_title(self.title, pad=12)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

    def write(self, directory: Path, name: str) -> list[Path]:
        """JSON, text and, where matplotlib is installed (halab's ``plots`` extra), PNG;
        returns the files written."""
        directory.mkdir(parents=True, exist_ok=True)
        out = [directory / f"{name}.json", directory / f"{name}.txt"]
        out[0].write_text(json.dumps(self.to_dict(), indent=2))
        out[1].write_text(self.text())
        if can_plot():
            out.append(directory / f"{name}.png")
            self.plot(out[2])
        return out


NO_PLOTS = "no PNG: matplotlib is not installed (pip install 'halab[plots]')"


def can_plot() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


class NeighWatch:
    """The client's neighbour table, watched live: when did the VIP's MAC change?"""

    def __init__(self, lab: Backend, host: str, address: str) -> None:
        self.address = address
        self.proc = background(lab, host, ["ip", "-t", "monitor", "neigh"],
                               stderr=subprocess.DEVNULL)

    def stop(self) -> list[tuple[float, str]]:
        """(epoch, line) for every change of the watched address."""
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=10)
        changes = []
        stamp: float | None = None
        for line in out.splitlines():
            if line.startswith("Timestamp:"):
                # Timestamp: Wed Nov 25 17:50:01 2026 123456 usec
                parts = line.split()
                when = datetime.datetime.strptime(" ".join(parts[1:6]), "%a %b %d %H:%M:%S %Y")
                stamp = when.timestamp() + int(parts[6]) / 1e6
            elif stamp is not None and line.startswith(self.address + " ") and "lladdr" in line:
                mac = line.split("lladdr", 1)[1].split()[0]
                changes.append((stamp, mac))
        return changes
