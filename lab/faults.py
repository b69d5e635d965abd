"""The fault catalogue: failures injected into a running lab, each with its heal.

Used by the integration tests (and, later, the CLI). Every fault goes
through the backend interface, so it works the same on network namespaces,
VMs and real hosts. ``inject`` records the wall-clock time the fault took
effect, for timelines.

* ``StopService(host, name)``: the supervisor stops it (SIGTERM); heal starts it
* ``SignalService(host, name, "QUIT")``: e.g. nginx's graceful stop; heal restarts it
* ``Blackhole(host)``: every packet in and out of the host's lab interfaces is
  dropped, established connections included (iptables in the host); heal
  removes exactly those rules
* ``CutLinks(host, networks)``: unplug the host's cables (all, or some); heal
  plugs them back
* ``PowerLoss(host)``: links cut, then every process killed (on VMs: the
  domain destroyed); heal boots it again
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from lab.backend import Backend
from lab.errors import HalabError


@dataclass
class Fault:
    host: str
    at: float | None = field(default=None, init=False)  # when it took effect (epoch s)

    def inject(self, lab: Backend) -> float:
        """Inject; returns (and keeps in ``at``) the time it began to take effect."""
        t0 = time.time()
        self._inject(lab)
        self.at = t0
        return t0

    def heal(self, lab: Backend) -> None:
        self._heal(lab)
        self.at = None

    def _inject(self, lab: Backend) -> None:
        raise NotImplementedError

    def _heal(self, lab: Backend) -> None:
        raise NotImplementedError


@dataclass
class StopService(Fault):
    service: str = ""

    def _inject(self, lab: Backend) -> None:
        lab.stop_service(self.host, self.service)

    def _heal(self, lab: Backend) -> None:
        lab.restart_service(self.host, self.service)


@dataclass
class SignalService(Fault):
    service: str = ""
    signal: str = "QUIT"

    def _inject(self, lab: Backend) -> None:
        pids = [s.pid for s in lab.services(self.host) if s.name == self.service and s.running]
        if not pids:
            raise HalabError(f"{self.host}: {self.service} is not running")
        lab.run(self.host, ["kill", f"-{self.signal}", str(pids[0])])

    def _heal(self, lab: Backend) -> None:
        lab.restart_service(self.host, self.service)


BLACKHOLE_RULES = (("INPUT", "-i"), ("OUTPUT", "-o"))


@dataclass
class Blackhole(Fault):
    @staticmethod
    def _spec(flag: str) -> list[str]:
        return ["!", flag, "lo", "-m", "comment", "--comment", "halab-fault-blackhole",
                "-j", "DROP"]

    def _inject(self, lab: Backend) -> None:
        for chain, flag in BLACKHOLE_RULES:
            lab.run(self.host, ["iptables", "-I", chain, "1", *self._spec(flag)])

    def _heal(self, lab: Backend) -> None:
        for chain, flag in BLACKHOLE_RULES:
            while lab.run(self.host, ["iptables", "-D", chain, *self._spec(flag)],
                          check=False).ok:
                pass


@dataclass
class CutLinks(Fault):
    networks: tuple[str, ...] | None = None

    def _inject(self, lab: Backend) -> None:
        lab.set_links(self.host, False, self.networks)

    def _heal(self, lab: Backend) -> None:
        lab.set_links(self.host, True, self.networks)


@dataclass
class PowerLoss(Fault):
    def _inject(self, lab: Backend) -> None:
        lab.power_off(self.host)

    def _heal(self, lab: Backend) -> None:
        lab.power_on(self.host)
