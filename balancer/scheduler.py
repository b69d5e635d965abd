"""Choosing a server: sans-IO, no sockets and no clock (the caller passes ``now``).

Rules:

* A server is *usable* when its admin state is READY and its health is UP.
  DRAIN keeps the connections it has but gets no new requests; MAINT gets
  nothing (and is not health-checked).
* Backup servers are used only when no primary server is usable.
* A usable server at its ``maxconn`` is *full*: it is skipped; when every
  usable server is full the answer is FULL and the caller queues.
* ``roundrobin`` is nginx's smooth weighted round robin: each pick adds every
  candidate's effective weight to its current value, takes the largest and
  subtracts the total from it. Equal weights alternate exactly; weights
  5,1,1 give a a b a c a a.
* ``leastconn`` takes the candidates with the fewest active requests per
  unit of weight; ties are broken by the same smooth round robin.
* ``source`` is weighted rendezvous hashing of the client address: a client
  stays on its server, and when a server leaves only its clients move.
* ``slowstart``: after rejoining, a server's effective weight ramps from
  1/weight up to its weight over the slowstart time.
* weight 0 means never chosen (while other servers are usable).
* ``exclude`` lets the caller redispatch a retry to another server; when every
  other usable server is excluded (they failed this request already), an
  excluded usable one may be picked again.
* Last resort (nginx does the same): when no server is usable because every
  READY one is DOWN, they are tried anyway, primaries before backups, each at
  most once per request (``exclude``), before the answer is NONE. A check can
  be wrong (a loaded host's check times out on a server that serves): then a
  DOWN verdict costs latency, not a 503. DRAIN and MAINT are never picked.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum


class Admin(StrEnum):
    READY = "ready"
    DRAIN = "drain"
    MAINT = "maint"


@dataclass
class Server:
    name: str
    host: str
    port: int
    weight: int = 1
    maxconn: int = 0
    backup: bool = False
    slowstart: float = 0.0
    admin: Admin = Admin.READY
    up: bool = True
    up_since: float | None = None  # when it last came UP (slowstart)
    active: int = 0  # requests (http) or connections (tcp) in progress
    current: int = field(default=0, repr=False)  # smooth round robin state

    @property
    def usable(self) -> bool:
        return self.admin is Admin.READY and self.up

    @property
    def full(self) -> bool:
        return self.maxconn > 0 and self.active >= self.maxconn

    def effective_weight(self, now: float) -> int:
        if self.weight == 0:
            return 0
        if self.slowstart > 0 and self.up_since is not None:
            elapsed = now - self.up_since
            if 0 <= elapsed < self.slowstart:
                return max(1, math.ceil(self.weight * elapsed / self.slowstart))
        return self.weight


class Verdict(StrEnum):
    OK = "ok"
    FULL = "full"  # every usable server is at maxconn: queue
    NONE = "none"  # no usable server: 503


@dataclass(frozen=True)
class Pick:
    verdict: Verdict
    server: Server | None = None
    last_resort: bool = False  # every READY server is DOWN: this one is tried anyway


class Scheduler:
    def __init__(self, servers: Sequence[Server], algorithm: str = "roundrobin") -> None:
        if algorithm not in ("roundrobin", "leastconn", "source"):
            raise ValueError(f"unknown algorithm {algorithm!r}")
        self.servers = list(servers)
        self.algorithm = algorithm

    def candidates(self, exclude: Iterable[str] = (), up: bool = True) -> list[Server]:
        """READY primaries whose health is ``up``, else such backups (excluded names
        left out)."""
        primaries: list[Server] = []
        backups: list[Server] = []
        for s in self.servers:
            if s.up is up and s.admin is Admin.READY and (not exclude or s.name not in exclude):
                (backups if s.backup else primaries).append(s)
        return primaries or backups

    def pick(self, now: float, client: str | None = None,
             exclude: Iterable[str] = ()) -> Pick:
        exclude = tuple(exclude)
        cands = self.candidates(exclude) or (self.candidates() if exclude else [])
        if not cands:
            down = self.candidates(exclude, up=False)
            if not down:
                return Pick(Verdict.NONE)
            return Pick(Verdict.OK, self._smooth_rr(down, now), last_resort=True)
        if any(s.weight == 0 for s in cands):
            cands = [s for s in cands if s.effective_weight(now) > 0] or cands
        open_ = [s for s in cands if not s.full] if any(s.maxconn for s in cands) else cands
        if not open_:
            return Pick(Verdict.FULL)
        if self.algorithm == "source" and client is not None:
            return Pick(Verdict.OK, _rendezvous(open_, client, now))
        if self.algorithm == "leastconn":
            best = min(_load(s, now) for s in open_)
            open_ = [s for s in open_ if _load(s, now) == best]
        return Pick(Verdict.OK, self._smooth_rr(open_, now))

    def _smooth_rr(self, servers: list[Server], now: float) -> Server:
        total = 0
        best: Server | None = None
        for s in servers:
            w = max(s.effective_weight(now), 1) if s.slowstart else max(s.weight, 1)
            s.current += w
            total += w
            if best is None or s.current > best.current:
                best = s
        assert best is not None
        best.current -= total
        return best

    def acquire(self, server: Server) -> None:
        server.active += 1

    def release(self, server: Server) -> None:
        server.active = max(0, server.active - 1)

    def set_up(self, server: Server, up: bool, now: float) -> None:
        if up and not server.up:
            server.up_since = now
            server.current = 0
        server.up = up

    def reset_rotation(self) -> None:
        for s in self.servers:
            s.current = 0


def _load(s: Server, now: float) -> float:
    return s.active / max(s.effective_weight(now), 1)


def _rendezvous(servers: list[Server], client: str, now: float) -> Server:
    def score(s: Server) -> float:
        digest = hashlib.blake2b(f"{client}|{s.name}".encode(), digest_size=8).digest()
        u = (int.from_bytes(digest, "big") + 1) / 2.0**64  # in (0, 1]
        return max(s.effective_weight(now), 1) / -math.log(u) if u < 1 else math.inf
    return max(servers, key=score)
