"""The fault catalogue: failures injected into a running lab, each with its heal.

Used by the integration tests and the ``halab fault`` command. Every fault goes
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
* ``Freeze(host, name)``: SIGSTOP: a hung daemon that keeps its sockets; heal: SIGCONT
* ``Partition(host, peer)``: each drops every packet from the other (their lab
  addresses, every network), while the rest of the lab reaches both: a split brain
* ``Netem(host, networks, delay_ms, jitter_ms, loss_pct)``: ``tc netem`` on the
  host's lab links (a slow or lossy cable); heal removes it. A kernel without the
  netem qdisc refuses it, with that reason

``Faults`` keeps what was injected, so whatever is still in effect when a test
ends (passed or failed) is healed, newest first.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar

from lab.backend import Backend
from lab.errors import HalabError


@dataclass
class Fault:
    host: str
    # when it took effect (epoch s); a fault is the same fault whenever it began
    at: float | None = field(default=None, init=False, compare=False)
    # past its look-ups: from here a failure may leave part of it in effect, to heal
    begun: bool = field(default=False, init=False, repr=False, compare=False)

    def inject(self, lab: Backend) -> float:
        """Inject; returns (and keeps in ``at``) the time it began to take effect
        (after the look-ups it needs, which can take long on a slow host)."""
        self._prepare(lab)
        self.begun = True
        t0 = time.time()
        took = self._inject(lab)  # the host's own time of it, where the backend knows it
        self.at = t0 if took is None else took
        return self.at

    def _prepare(self, lab: Backend) -> None:
        """Look-ups and checks before the fault itself (not part of its timing); a
        refusal here leaves the lab as it was."""

    def describe(self) -> str:
        """What is in effect, in a few words (``halab faults``)."""
        return f"{type(self).__name__} on {self.host}"

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

    def describe(self) -> str:
        return f"{self.host}: {self.service} stopped"

    def _inject(self, lab: Backend) -> float | None:
        return lab.stop_service(self.host, self.service)

    def _heal(self, lab: Backend) -> None:
        lab.restart_service(self.host, self.service)


@dataclass
class SignalService(Fault):
    service: str = ""
    signal: str = "QUIT"

    pid: int | None = field(default=None, init=False, repr=False, compare=False)

    def _prepare(self, lab: Backend) -> None:
        pids = [s.pid for s in lab.services(self.host) if s.name == self.service and s.running]
        if not pids:
            raise HalabError(f"{self.host}: {self.service} is not running")
        self.pid = pids[0]

    def describe(self) -> str:
        return f"{self.host}: {self.service} sent SIG{self.signal}"

    def _inject(self, lab: Backend) -> float:
        return lab.run_timed(self.host, ["kill", f"-{self.signal}", str(self.pid)])

    def _heal(self, lab: Backend) -> None:
        lab.restart_service(self.host, self.service)


@dataclass
class Freeze(SignalService):
    """SIGSTOP to the service's process: it holds its sockets and answers nothing (a
    hung daemon, not a dead one); heal sends SIGCONT, or starts it if it went."""

    signal: str = "STOP"
    # kept in the bookkeeping: heal wakes this very process
    pid: int | None = field(default=None, compare=False)

    def describe(self) -> str:
        return f"{self.host}: {self.service} frozen (SIGSTOP, pid {self.pid})"

    def _heal(self, lab: Backend) -> None:
        now = next((s for s in lab.services(self.host) if s.name == self.service), None)
        if now is not None and now.running and now.pid == self.pid:  # still that process
            lab.run(self.host, ["kill", "-CONT", str(self.pid)])
        elif now is None or not now.running:  # it went meanwhile (a restart wakes nothing)
            lab.restart_service(self.host, self.service)


@dataclass
class FirewallFault(Fault):
    """A fault made of iptables rules inserted first in their chains, tagged with a
    comment; heal deletes exactly those rules (every copy of them)."""

    def rules(self, lab: Backend) -> list[tuple[str, list[str]]]:
        raise NotImplementedError

    tag: ClassVar[str] = ""  # the rules' comment names it (default: the class)

    def _tagged(self, spec: list[str]) -> list[str]:
        tag = f"halab-fault-{self.tag or type(self).__name__.lower()}"
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

    def describe(self) -> str:
        return f"{self.host}: blackholed (every packet on its lab links dropped)"

    def rules(self, lab: Backend) -> list[tuple[str, list[str]]]:
        out: list[tuple[str, list[str]]] = []
        for iface in lab.host(self.host).interfaces:
            out += [("INPUT", ["-i", iface.name, "-j", "DROP"]),
                    ("OUTPUT", ["-o", iface.name, "-j", "DROP"])]
        return out


@dataclass
class Refuse(FirewallFault):
    port: int = 80

    def describe(self) -> str:
        return f"{self.host}: new TCP connections to port {self.port} refused"

    def rules(self, lab: Backend) -> list[tuple[str, list[str]]]:
        return [("INPUT", ["!", "-i", "lo", "-p", "tcp", "--syn", "--dport", str(self.port),
                           "-j", "REJECT", "--reject-with", "tcp-reset"])]


@dataclass
class Partition(Fault):
    """The two hosts (the directors) lose each other: each drops every packet whose
    source is one of the other's lab addresses, on every network. Dropping on input at
    both ends cuts multicast as well as unicast; everyone else still reaches both."""

    peer: str = ""

    def rules(self, lab: Backend, me: str, other: str) -> list[tuple[str, list[str]]]:
        return [("INPUT", ["-s", str(iface.address), "-j", "DROP"])
                for iface in lab.host(other).interfaces]

    def describe(self) -> str:
        return f"{self.host} and {self.peer}: partitioned (each drops the other's packets)"

    def _inject(self, lab: Backend) -> float | None:
        if self.peer == self.host or not self.peer:
            raise HalabError(f"a partition needs two hosts, not {self.host!r} and {self.peer!r}")
        took = [_Drop(me, given=self.rules(lab, me, other)).inject(lab)
                for me, other in ((self.host, self.peer), (self.peer, self.host))]
        return took[0]

    def _heal(self, lab: Backend) -> None:
        for me, other in ((self.host, self.peer), (self.peer, self.host)):
            _Drop(me, given=self.rules(lab, me, other)).heal(lab)


@dataclass
class _Drop(FirewallFault):
    """One side of a partition: the rules it is given, tagged as a partition's."""

    given: list[tuple[str, list[str]]] = field(default_factory=list)
    tag: ClassVar[str] = "partition"

    def rules(self, lab: Backend) -> list[tuple[str, list[str]]]:
        return self.given


@dataclass
class Netem(Fault):
    """``tc netem`` as the root qdisc of the host's lab links (those of ``networks``,
    else all): each packet leaving by them is delayed (``delay_ms`` +- ``jitter_ms``)
    and/or dropped (``loss_pct``), as containerlab's ``tools netem`` and Mininet's
    TCLink do; heal deletes that qdisc (the link's default comes back)."""

    networks: tuple[str, ...] | None = None
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0

    def interfaces(self, lab: Backend) -> list[str]:
        ifaces = lab.host(self.host).interfaces
        return [i.name for i in ifaces if self.networks is None or i.network.name in self.networks]

    def spec(self) -> str:
        if self.delay_ms <= 0 and self.loss_pct <= 0:
            raise HalabError("netem needs a delay or a loss (--delay MS, --loss PCT)")
        if self.jitter_ms and self.delay_ms <= 0:
            raise HalabError("netem: a jitter needs a delay")
        if not 0 <= self.loss_pct <= 100:
            raise HalabError(f"netem: a loss is a percentage (0-100), not {self.loss_pct:g}")
        out = []
        if self.delay_ms > 0:
            out += ["delay", f"{self.delay_ms:g}ms"] + ([f"{self.jitter_ms:g}ms"]
                                                        if self.jitter_ms else [])
        if self.loss_pct > 0:
            out += ["loss", f"{self.loss_pct:g}%"]
        return " ".join(out)

    def describe(self) -> str:
        where = ", ".join(self.networks) if self.networks else "every lab link"
        return f"{self.host}: netem {self.spec()} on {where}"

    def _prepare(self, lab: Backend) -> None:
        self.spec()
        if not self.interfaces(lab):
            raise HalabError(f"{self.host} has no lab link on {', '.join(self.networks or ())}")

    def _inject(self, lab: Backend) -> float:
        spec = self.spec()
        lines = [f"qdisc replace dev {name} root netem {spec}" for name in self.interfaces(lab)]
        try:
            return lab.run_timed(self.host, ["tc", "-batch", "-"], input="\n".join(lines) + "\n")
        except HalabError as e:
            if "qdisc kind is unknown" in str(e):
                raise HalabError(f"{self.host}: this kernel has no netem qdisc (sch_netem), so "
                                 "tc cannot delay or drop there (the netns lab shares this "
                                 "machine's kernel; the VMs have their own)") from None
            raise

    def _heal(self, lab: Backend) -> None:
        for name in self.interfaces(lab):
            shown = lab.run(self.host, ["tc", "qdisc", "show", "dev", name, "root"],
                            check=False).text
            if " netem " in f" {shown}":
                lab.run(self.host, ["tc", "qdisc", "del", "dev", name, "root"])


@dataclass
class CutLinks(Fault):
    networks: tuple[str, ...] | None = None

    def describe(self) -> str:
        where = ", ".join(self.networks) if self.networks else "every lab link"
        return f"{self.host}: cut from {where}"

    def _inject(self, lab: Backend) -> float | None:
        return lab.set_links(self.host, False, self.networks)

    def _heal(self, lab: Backend) -> None:
        lab.set_links(self.host, True, self.networks)


@dataclass
class PowerLoss(Fault):
    def describe(self) -> str:
        return f"{self.host}: powered off"

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
        try:
            at = fault.inject(self.lab)
        except Exception:  # a refused one left nothing; a half-injected one is undone
            if fault.begun:
                with contextlib.suppress(Exception):
                    self.heal(fault)
            self._forget(fault)
            raise
        self._save()  # with its time
        return at

    def _forget(self, fault: Fault) -> None:
        self.active = [f for f in self.active if f is not fault]
        self._save()

    def heal(self, fault: Fault) -> None:
        """Heal it, then strike it from the note (a heal that fails leaves it there)."""
        fault.heal(self.lab)
        self._forget(fault)

    def heal_all(self) -> None:
        errors = []
        for fault in reversed(list(self.active)):
            try:
                self.heal(fault)
            except Exception as e:  # keep healing the others; it stays in the note
                errors.append(f"{fault}: {e}")
        if errors:
            raise HalabError("could not heal: " + "; ".join(errors))

    # the note on the controller ---------------------------------------------------

    def _journal(self) -> Path:
        return self.lab.control_dir / "faults.json"

    def _save(self) -> None:
        rows = [{"fault": type(f).__name__, "at": f.at,
                 **{k.name: getattr(f, k.name) for k in fields(f) if k.init}}
                for f in self.active]
        path = self._journal()
        if rows:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(rows))
        else:
            path.unlink(missing_ok=True)

    @classmethod
    def load(cls, lab: Backend) -> Faults:
        """What is in effect now, from the note (``halab fault`` adds to it one command at
        a time, ``halab heal`` takes from it)."""
        faults = cls(lab)
        try:
            rows = json.loads(faults._journal().read_text())
        except (OSError, ValueError):
            return faults
        kinds = {k.__name__: k for k in CATALOGUE}
        for row in rows:
            kind = kinds[row.pop("fault")]
            at = row.pop("at", None)
            if row.get("networks") is not None:
                row["networks"] = tuple(row["networks"])
            fault = kind(**row)
            fault.at = at
            faults.active.append(fault)
        return faults

    @classmethod
    def recover(cls, lab: Backend) -> list[Fault]:
        """Heal what an earlier run left in effect (it was killed); returns those faults."""
        faults = cls.load(lab)
        left = list(faults.active)
        faults.heal_all()
        return left


CATALOGUE: tuple[type[Fault], ...] = (StopService, SignalService, Freeze, Refuse, Blackhole,
                                      Partition, Netem, CutLinks, PowerLoss)
