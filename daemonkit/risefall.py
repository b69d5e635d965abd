"""Rise/fall counting, sans-IO: ``fall`` consecutive failures make a thing DOWN,
``rise`` consecutive successes make it UP again (HAProxy's and keepalived's rule).

    rf = RiseFall(rise=2, fall=3, up=True)
    rf.result(False)   # False: one failure, still UP
    rf.set(False)      # an outside verdict (an admin, real traffic): counts start over

Successes count only while not UP, failures only while not DOWN; a state not known
yet (``up=None``) counts both ways. Used by the balancer's server health and the
heartbeat's tracked resources.
"""

from __future__ import annotations


class RiseFall:
    def __init__(self, rise: int, fall: int, up: bool | None = None) -> None:
        self.rise = rise
        self.fall = fall
        self.up = up
        self.successes = 0  # consecutive, toward UP
        self.failures = 0  # consecutive, toward DOWN

    def result(self, ok: bool) -> bool:
        """Count one result; True when it changed the state (read it from ``up``)."""
        if ok:
            self.failures = 0
            if self.up is not True:
                self.successes += 1
                if self.successes >= self.rise:
                    self.set(True)
                    return True
        else:
            self.successes = 0
            if self.up is not False:
                self.failures += 1
                if self.failures >= self.fall:
                    self.set(False)
                    return True
        return False

    def set(self, up: bool) -> None:
        self.up = up
        self.successes = self.failures = 0
