"""The fault catalogue: failures injected into a running lab, each with its heal.

Used by the integration tests (and, later, the CLI). Every fault goes
through the backend interface, so it works the same on network namespaces,
VMs and real hosts. ``inject`` records the wall-clock time the fault took
effect, for timelines.

* ``StopService(host, name)``: the supervisor stops it (SIGTERM); heal starts it
* ``SignalService(host, name, "QUIT")``: e.g. nginx's graceful stop; heal restarts it
* ``Refuse(host, port)``: the service runs, but new TCP connections to ``port``
  are refused (a RST, as from a closed port); heal removes exactly that rule
* ``Blackhole(host)``: every packet in and out of the host's lab interfaces is
  dropped, established connections included (iptables in the host; a VM's
  management NIC is not a lab interface); heal removes exactly those rules
* ``CutLinks(host, networks)``: unplug the host's cables (all, or some); heal
  plugs them back
* ``PowerLoss(host)``: links cut, then every process killed (on VMs: the
  domain destroyed); heal boots it again

``Faults`` keeps what was injected, so whatever is still in effect when a test
ends (passed or failed) is healed, newest first.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from lab.backend import Backend
from lab.errors import HalabError


@dataclass
class Fault:
    host: str
    at: float | None = field(default=None, init=False)  # when it took effect (epoch s)

    def inject(self, lab: Backend) -> float:
        """Inject; returns (and keeps in ``at``) the time it began to take effect
        (after the look-ups it needs, which can take long on a slow host)."""
        self._prepare(lab)
        t0 = time.time()
        took = self._inject(lab)  # the host's own time of it, where the backend knows it
        self.at = t0 if took is None else took
        return self.at

    def _prepare(self, lab: Backend) -> None:
        """Look-ups before the fault itself (not part of its timing)."""

    def heal(self, lab: Backend) -> None:
        self._heal(lab)
        self.at = None

    def _inject(self, lab: Backend) -> float | None:
        raise NotImplementedError

    def _heal(self, lab: Backend) -> None:
        raise NotImplementedError


@dataclass
class StopService(Fault):
    service: str = ""

    def _inject(self, lab: Backend) -> float | None:
        return lab.stop_service(self.host, self.service)

    def _heal(self, lab: Backend) -> None:
        lab.restart_service(self.host, self.service)


@dataclass
class SignalService(Fault):
    service: str = ""
    signal: str = "QUIT"

    pid: int | None = field(default=None, init=False, repr=False)

    def _prepare(self, lab: Backend) -> None:
        pids = [s.pid for s in lab.services(self.host) if s.name == self.service and s.running]
        if not pids:
            raise HalabError(f"{self.host}: {self.service} is not running")
        self.pid = pids[0]

    def _inject(self, lab: Backend) -> float:
        return lab.run_timed(self.host, ["kill", f"-{self.signal}", str(self.pid)])

    def _heal(self, lab: Backend) -> None:
        lab.restart_service(self.host, self.service)


@dataclass
class FirewallFault(Fault):
    """A fault made of iptables rules inserted first in their chains, tagged with a
    comment; heal deletes exactly those rules (every copy of them)."""

    def rules(self, lab: Backend) -> list[tuple[str, list[str]]]:
        raise NotImplementedError

    def _tagged(self, spec: list[str]) -> list[str]:
        tag = f"halab-fault-{type(self).__name__.lower()}"
        return ["-m", "comment", "--comment", tag, *spec]

    def _inject(self, lab: Backend) -> float | None:
        """All the rules in one iptables-restore (one commit: the fault begins whole);
        returns the host's time of that commit."""
        rules = self.rules(lab)
        if not rules:
            return None
        lines = [" ".join(["-I", chain, "1", *self._tagged(spec)]) for chain, spec in rules]
        return lab.run_timed(self.host, ["iptables-restore", "--noflush"],
                             input="\n".join(["*filter", *lines, "COMMIT", ""]))

    def _heal(self, lab: Backend) -> None:
        for chain, spec in self.rules(lab):
            while lab.run(self.host, ["iptables", "-D", chain, *self._tagged(spec)],
                          check=False).ok:
                pass


@dataclass
class Blackhole(FirewallFault):
    """Silence on the host's lab interfaces (never a management NIC, eth0 on a VM)."""

    def rules(self, lab: Backend) -> list[tuple[str, list[str]]]:
        out: list[tuple[str, list[str]]] = []
        for iface in lab.host(self.host).interfaces:
            out += [("INPUT", ["-i", iface.name, "-j", "DROP"]),
                    ("OUTPUT", ["-o", iface.name, "-j", "DROP"])]
        return out


@dataclass
class Refuse(FirewallFault):
    port: int = 80

    def rules(self, lab: Backend) -> list[tuple[str, list[str]]]:
        return [("INPUT", ["!", "-i", "lo", "-p", "tcp", "--syn", "--dport", str(self.port),
                           "-j", "REJECT", "--reject-with", "tcp-reset"])]


@dataclass
class CutLinks(Fault):
    networks: tuple[str, ...] | None = None

    def _inject(self, lab: Backend) -> float | None:
        return lab.set_links(self.host, False, self.networks)

    def _heal(self, lab: Backend) -> None:
        lab.set_links(self.host, True, self.networks)


@dataclass
class PowerLoss(Fault):
    def _inject(self, lab: Backend) -> float | None:
        return lab.power_off(self.host)

    def _heal(self, lab: Backend) -> None:
        lab.power_on(self.host)


class Faults:
    """The faults of one test: injected through here, healed at the end whatever
    happened (newest first); a heal that fails does not stop the others.

    What is in effect is also written down on the controller (``faults.json`` in
    the lab's control directory), so a run that was killed before its teardown
    leaves a note, and ``recover`` heals those faults before the next run."""

    def __init__(self, lab: Backend) -> None:
        self.lab = lab
        self.active: list[Fault] = []

    def inject(self, fault: Fault) -> float:
        self.active.append(fault)  # a half-injected fault is healed too
        self._save()
        return fault.inject(self.lab)

    def heal(self, fault: Fault) -> None:
        self.active = [f for f in self.active if f is not fault]
        fault.heal(self.lab)
        self._save()

    def heal_all(self) -> None:
        errors = []
        while self.active:
            fault = self.active.pop()
            try:
                fault.heal(self.lab)
            except Exception as e:  # keep healing the others
                errors.append(f"{fault}: {e}")
        self._save()
        if errors:
            raise HalabError("could not heal: " + "; ".join(errors))

    # the note on the controller ---------------------------------------------------

    def _journal(self) -> Path:
        return self.lab.control_dir / "faults.json"

    def _save(self) -> None:
        rows = [{"fault": type(f).__name__,
                 **{k.name: getattr(f, k.name) for k in fields(f) if k.init}}
                for f in self.active]
        path = self._journal()
        if rows:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(rows))
        else:
            path.unlink(missing_ok=True)

    @classmethod
    def recover(cls, lab: Backend) -> list[Fault]:
        """Heal what an earlier run left in effect (it was killed); returns those faults."""
        faults = cls(lab)
        try:
            rows = json.loads(faults._journal().read_text())
        except (OSError, ValueError):
            return []
        kinds = {k.__name__: k for k in CATALOGUE}
        for row in rows:
            kind = kinds[row.pop("fault")]
            if row.get("networks") is not None:
                row["networks"] = tuple(row["networks"])
            faults.active.append(kind(**row))
        left = list(faults.active)
        faults.heal_all()
        return left


CATALOGUE: tuple[type[Fault], ...] = (StopService, SignalService, Refuse, Blackhole, CutLinks,
                                      PowerLoss)
