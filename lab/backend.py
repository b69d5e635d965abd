"""The backend interface: how a topology becomes running hosts.

A backend realizes :class:`~lab.topology.Topology` somewhere (network
namespaces on this machine, libvirt VMs, real hosts over SSH) and offers the
few verbs that provisioning, the CLI and the tests need, in the spirit of
pytest-testinfra's small backend classes:

* ``Transport``, the core: ``run(host, argv)`` (written once, over each backend's
  ``execute``), ``put_file`` / ``read_file`` (files as the host itself sees them:
  ``/etc/nginx/nginx.conf`` means that host's nginx.conf), ``paths(host)`` (the
  host's run/log/state directories)
* ``Services``: ``start_service`` / ``stop_service`` / ``services``: supervised daemons
* ``Links`` and ``Power``: the faults a backend makes as the hardware would (cables
  pulled, power lost), each realized its own way
* ``Backend`` brings them together with ``up()`` / ``down()``: bring the hosts and
  networks up, tear everything down

Provisioning is written once against this interface and is the same for
every backend.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lab.errors import HalabError
from lab.topology import Host, Topology

# run_timed's shell. $1 the input ('' for none), then the command. With input the
# command is started on a pipe and watched (no process: bash builtins and /proc) until
# it blocks reading it; the clock is read then, the input written. A command that ends
# first reports its own failure; one that never reads is an error, after 60 s.
_TIMED = r"""
in=$1; shift
if [ -z "$in" ]; then t=$EPOCHREALTIME; "$@" >/dev/null || exit; echo "$t"; exit 0; fi
trap '' PIPE
exec {to}> >(exec "$@" >/dev/null)
p=$!
exec {nap}<> <(:)
end=$(( ${EPOCHREALTIME/./} + 60000000 ))
until read -r w 2>/dev/null < /proc/$p/wchan; [[ $w == *pipe_read ]]; do
  read -r st 2>/dev/null < /proc/$p/stat || break
  st=${st##*) }; [[ $st == Z* ]] && break
  if (( ${EPOCHREALTIME/./} > end )); then
    echo "$1: not reading its input after 60 s" >&2; kill $p; exit 1
  fi
  read -r -t 0.002 -u $nap
done
t=$EPOCHREALTIME
printf %s "$in" 2>/dev/null >&$to
exec {to}>&-
wait $p || exit
echo "$t"
"""


@dataclass(frozen=True)
class HostPaths:
    """Where a host keeps its runtime files (identical paths on VMs and real hosts)."""

    run: Path  # pidfiles, unix sockets
    log: Path  # daemon logs
    state: Path  # persistent state, document root


@dataclass(frozen=True)
class ServiceSpec:
    """A long-running daemon on a host, run in the foreground.

    ``argv`` is what a supervisor runs; ``unit`` is the systemd unit that
    plays the same part on a VM: one of halab's, whose text ``unit_text`` carries, or
    the system's own (ssh.service, run with the lab's config: no text); None: a unit
    is rendered from ``argv``. The service counts as ready once it listens
    on every TCP port in ``listens`` and ``ready_path`` (a socket, say) exists.
    ``reads``: the files it reads when it starts (its configuration); ``inputs``
    fingerprints them as provisioning writes them: a running service started with
    other inputs is restarted, one started with these is left running (provisioning
    again restarts only what a changed file concerns).
    """

    name: str
    argv: tuple[str, ...]
    listens: tuple[int, ...] = ()
    unit: str | None = None
    unit_text: str | None = None
    ready_path: str | None = None
    reads: tuple[str, ...] = ()
    inputs: str = ""


@dataclass(frozen=True)
class ServiceState:
    host: str
    name: str
    running: bool
    pid: int | None = None
    detail: str = ""


@dataclass
class Result:
    """What a command on a host did."""

    argv: list[str]
    returncode: int
    stdout: bytes = b""
    stderr: bytes = b""

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class Transport(abc.ABC):
    """The core every backend has: run a command on a host, put and read its files.

    ``run`` is written once, here: a backend says how a command reaches a host
    (``execute``: a namespace's ``ip netns exec``, an SSH session), ``run`` checks it.
    """

    @abc.abstractmethod
    def execute(self, host: str, argv: Sequence[str], *, input: bytes | None,
                timeout: float) -> Result:
        """Run ``argv`` on ``host`` once; HalabError if it could not be run or took longer
        than ``timeout`` (a failing command is a Result, not an error)."""

    def run(
        self,
        host: str,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        check: bool = True,
        timeout: float = 30.0,
    ) -> Result:
        """Run ``argv`` on ``host``; raise HalabError if ``check`` and it fails."""
        res = self.execute(host, argv, input=input, timeout=timeout)
        if check and not res.ok:
            err = res.stderr.decode(errors="replace").strip().replace("\n", " | ")
            raise HalabError(f"{host}: `{' '.join(argv)}` failed (exit {res.returncode}): {err}")
        return res

    def run_timed(self, host: str, argv: Sequence[str], *, input: str | None = None,
                  timeout: float = 30.0) -> float:
        """Run ``argv`` on ``host`` (checked, output dropped); return the host's clock
        (epoch s) when it acted: when a fault made this way took effect, which a
        command's round trip (an SSH one takes a second under TCG) would blur if timed
        here. With ``input``, the command is started first and the clock read once it
        waits for its input, just before it is given: its start (under TCG several
        hundred ms for `ip`) is not counted. Without, the clock is read just before
        the command (a bash builtin such as ``kill`` runs as such, no process)."""
        res = self.run(host, ["bash", "-c", _TIMED, "bash", input or "", *argv],
                       timeout=timeout)
        return float(res.text.split()[-1])

    # True where ``command`` gives the remote command a terminal of its own (ssh -tt)
    command_has_tty: bool = False

    @abc.abstractmethod
    def command(self, host: str, argv: Sequence[str]) -> list[str]:
        """The local argv that runs ``argv`` on ``host`` with inherited stdio."""

    @abc.abstractmethod
    def put_file(self, host: str, path: str, content: bytes | str, mode: int = 0o644) -> None:
        """Write a file on ``host`` (parents are created)."""

    def put_files(self, host: str, files: Sequence[tuple[str, bytes | str, int]]) -> None:
        """Write several files (path, content, mode) on ``host``; a backend whose every
        command is a round trip sends them in one go."""
        for path, content, mode in files:
            self.put_file(host, path, content, mode)

    @abc.abstractmethod
    def read_file(self, host: str, path: str) -> bytes:
        """Read a file as ``host`` sees it."""

    @abc.abstractmethod
    def paths(self, host: str) -> HostPaths:
        """The host's run/log/state directories."""


class Services(abc.ABC):
    """Supervised daemons on a host: started until ready, stopped gracefully, listed."""

    @abc.abstractmethod
    def start_service(self, host: str, spec: ServiceSpec) -> ServiceState:
        """Start a service unless it runs with the same spec (a running one whose spec
        or inputs changed is restarted); return once it is ready."""

    @abc.abstractmethod
    def stop_service(self, host: str, name: str) -> float | None:
        """Stop a service gracefully (SIGTERM, then SIGKILL after a deadline). Returns
        as ``set_links`` does: when the stop began by the host's clock, or None."""

    @abc.abstractmethod
    def services(self, host: str) -> list[ServiceState]:
        """The state of every service known on ``host``."""

    @abc.abstractmethod
    def restart_service(self, host: str, name: str) -> ServiceState:
        """Stop and start a known service again."""

    @abc.abstractmethod
    def service_log(self, host: str, name: str) -> Path:
        """The log file of a service, as a path on the host."""

    def follow_argv(self, host: str, names: Sequence[str]) -> list[str]:
        """The command, on ``host``, that prints the last lines of these services' logs
        and follows them (``halab logs -f``): a tail of their files here."""
        return ["tail", "-n", "50", "-F", *(str(self.service_log(host, n)) for n in names)]

    @abc.abstractmethod
    def enable_at_boot(self, host: str, unit: str, text: str) -> None:
        """Have ``unit`` (its text: ``text``) run at every boot of ``host``."""


class Links(abc.ABC):
    """A host's cables: cut and plugged back."""

    @abc.abstractmethod
    def set_links(self, host: str, up: bool, networks: Sequence[str] | None = None
                  ) -> float | None:
        """Cut (or restore) the host's links, all or those on ``networks``: its cables.
        Returns when that happened by the host's clock (epoch s) where it happens there,
        long after the call under emulation; None: at the call (a cable pulled here)."""



class Power(abc.ABC):
    """A host's power: lost at once (no goodbye), and back (a boot)."""

    @abc.abstractmethod
    def power_off(self, host: str) -> float | None:
        """Power loss: links cut first, then every process killed at once (no goodbye).
        Returns as ``set_links`` does."""

    @abc.abstractmethod
    def power_on(self, host: str) -> None:
        """Boot again: links up, only the configured addresses, services started."""


class Backend(Transport, Services, Links, Power):
    """A lab: its hosts made from the topology (up, down), reached through the parts
    above, and what the operator and the suite need of it (an ssh_config, halab on the
    hosts)."""

    kind: str = "abstract"
    # Where the controller keeps the lab's own files (operator key, snapshots).
    control_dir: Path
    # The Python interpreter that has halab installed, as a path on the hosts.
    python: str
    # How much slower than the netns lab commands and daemons run here (software
    # emulation: several times); limits scale with it, promises do not.
    slowness: float = 1.0
    # Whether the hosts' own users keep their ~/.ssh/authorized_keys beside the lab
    # operator's key (VMs: Vagrant logs in as its user; not the netns lab, whose hosts
    # share this machine's home directories).
    user_keys: bool = False

    def __init__(self, topology: Topology) -> None:
        self.topology = topology

    def hosts(self) -> list[Host]:
        return list(self.topology.hosts.values())

    def host(self, name: str) -> Host:
        try:
            return self.topology.hosts[name]
        except KeyError:
            known = ", ".join(self.topology.hosts)
            raise HalabError(f"no host {name!r} in the topology (hosts: {known})") from None

    @abc.abstractmethod
    def up(self) -> None:
        """Create hosts and networks; idempotent."""

    @abc.abstractmethod
    def down(self) -> None:
        """Stop everything and remove every trace; idempotent."""

    @abc.abstractmethod
    def is_up(self) -> bool:
        """Whether the lab's hosts exist (one a power-off turned off is there, to be
        powered on)."""

    # Whether ``up()`` provisions the hosts itself (Vagrant's triggers do, each VM as it
    # comes up); otherwise ``halab up`` provisions once ``up()`` returns.
    up_provisions: bool = False

    def prepare(self, hosts: Sequence[str]) -> None:
        """Before provisioning: make halab itself runnable on ``hosts`` (its Python
        package installed). Nothing to do where the hosts share this machine's."""

    def require_programs(self, programs: Sequence[str], hosts: Sequence[str] | None = None
                         ) -> None:
        """Every host (or those named) has ``programs``; missing ones are installed with
        apt (a host without the packages baked in, where a mirror is reachable)."""
        from lab.system import PACKAGES

        for h in hosts or [h.name for h in self.hosts()]:
            check = " ".join(f"command -v {p} >/dev/null || echo {p};" for p in programs)
            missing = self.run(h, ["sh", "-c", check], timeout=60).text.split()
            if missing:
                pkgs = sorted({w for p in missing for w in PACKAGES.get(p, p).split()})
                self.run(h, ["sh", "-c", "DEBIAN_FRONTEND=noninteractive apt-get update "
                             "-qq && apt-get install -y -qq " + " ".join(pkgs)],
                         timeout=900)

    def close(self) -> None:
        """Let go of what this object holds open to the hosts (SSH connections); the
        lab stays as it is."""

    def own_host_key(self, host: str) -> str | None:
        """The host's own SSH host key (public half), which the lab keeps (real servers);
        None: the lab gives the host a key of its own (netns hosts, VMs)."""
        return None

    def log_text(self, host: str, name: str) -> str:
        """A service's log, read as the host sees it."""
        return self.read_file(host, str(self.service_log(host, name))).decode(errors="replace")

    @abc.abstractmethod
    def ssh_config(self) -> str:
        """An ssh_config reaching every lab host by its name, as root (testinfra, fabric)."""

