"""A server's health: sans-IO, fed with check results and real-traffic observations.

States and rules (HAProxy's model):

* A server starts UP, so traffic flows at once; failures take it down.
* Active checks: while UP, ``fall`` consecutive failed checks make it DOWN;
  while DOWN, ``rise`` consecutive good checks make it UP.
* Passive observation: ``error_limit`` consecutive errors on real traffic
  (connect refused/timed out, reset before a response, 502/503/504 from the
  server) make an UP server DOWN at once; any good response resets the count.
  ``error_limit = 0`` turns passive observation off. Coming back UP always
  takes ``rise`` good active checks (or an admin command).
* Passive evidence counts the other way too: a check that got no answer at
  all (timed out) while real traffic got a good response from the server is
  *inconclusive*: the server was answering, the check was slow (a loaded
  host). It counts neither way, and the next check comes after ``fastinter``.
  A refused or failed check always counts; so does a timed-out one with no
  good traffic since it began (a silent server answers nobody).
* A check the balancer could not make (no file descriptor left) says nothing
  about the server: inconclusive too, it counts neither way.
* The next check is due after ``inter`` while stably UP, ``fastinter`` while
  the state is changing (some failures while UP, some successes while DOWN,
  an inconclusive check) and ``downinter`` while stably DOWN.

Every transition is returned as a :class:`Transition` (new state, reason, time)
for the caller to apply and log.
"""

from __future__ import annotations

from dataclasses import dataclass

from daemonkit.risefall import RiseFall


@dataclass(frozen=True)
class HealthParams:
    """What the state machine needs of the config (times in seconds)."""

    inter: float
    fastinter: float
    downinter: float
    rise: int
    fall: int


@dataclass(frozen=True)
class Transition:
    up: bool
    reason: str
    at: float


class Health:
    def __init__(self, params: HealthParams, error_limit: int, now: float) -> None:
        self.params = params
        self.error_limit = error_limit
        self.checks = RiseFall(params.rise, params.fall, up=True)
        self.since = now
        self.passive_errors = 0
        self.last_good: float | None = None  # real traffic's last good response
        self.inconclusive = False  # the last check timed out while traffic was answered
        self.last_check: str = "none"
        self.last_check_at: float | None = None

    @property
    def up(self) -> bool:
        return self.checks.up is True

    @property
    def successes(self) -> int:  # consecutive good checks (count while DOWN)
        return self.checks.successes

    @property
    def failures(self) -> int:  # consecutive failed checks (count while UP)
        return self.checks.failures

    def next_delay(self) -> float:
        p = self.params
        if self.inconclusive or (self.up and self.failures) or (not self.up and self.successes):
            return p.fastinter
        return p.inter if self.up else p.downinter

    def _go(self, up: bool, reason: str, now: float) -> Transition:
        self.checks.set(up)
        self.since = now
        self.passive_errors = 0
        return Transition(up, reason, now)

    def check_result(self, ok: bool, reason: str, now: float,
                     timed_out_from: float | None = None) -> Transition | None:
        """An active check's outcome; ``timed_out_from``: it got no answer at all, and
        began then."""
        self.last_check = reason
        self.last_check_at = now
        self.inconclusive = (not ok and timed_out_from is not None
                             and self.last_good is not None and self.last_good >= timed_out_from)
        if self.inconclusive:
            self.last_check = f"{reason}, inconclusive: traffic was answered meanwhile"
            return None
        if not self.checks.result(ok):
            return None
        what = f"{self.params.rise} good checks" if ok else f"{self.params.fall} failed checks"
        return self._go(ok, f"{what}: {reason}", now)

    def check_inconclusive(self, reason: str, now: float) -> None:
        """A check that could not be made for a cause of the balancer's own (no file
        descriptor left): counts neither way; the next one comes after ``fastinter``."""
        self.last_check = f"{reason}, inconclusive: not the server's fault"
        self.last_check_at = now
        self.inconclusive = True

    def observe(self, ok: bool, reason: str, now: float) -> Transition | None:
        """An outcome of real traffic."""
        if ok:
            self.passive_errors = 0
            self.last_good = now
            return None
        if not self.up or self.error_limit == 0:
            return None
        self.passive_errors += 1
        if self.passive_errors >= self.error_limit:
            return self._go(False, f"{self.passive_errors} errors on traffic: {reason}", now)
        return None

    def force(self, up: bool, reason: str, now: float) -> Transition | None:
        if up == self.up:
            return None
        return self._go(up, reason, now)
