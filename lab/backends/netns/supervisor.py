"""A small supervisor for the daemons of one lab host (no systemd needed).

Each service runs in the foreground under a command prefix that puts it on
its host (``ip netns exec <ns>``, which execs, so the PID is the daemon's).
The supervisor keeps, per service:

* ``<run>/<name>.service``: how to run it (argv, ports that mean "ready")
* ``<run>/<name>.pid``: JSON with the PID and the process start time, so a
  recycled PID is never mistaken for the daemon (and never signalled)
* ``<log>/<name>.log``: the daemon's stdout and stderr, appended

Stopping is SIGTERM, a deadline, then SIGKILL; always by PID, and only for a
PID whose start time matches the pidfile. Restarting is stop + start.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from lab.backend import ServiceSpec, ServiceState
from lab.errors import HalabError
from lab.system import alive, proc_info, session_members

READY_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
POLL = 0.01
TCP_LISTEN = "0A"


def reap(pid: int) -> None:
    """Collect ``pid`` if it is our child and has exited (no zombies left behind)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def listening_ports(pid: int) -> set[int]:
    """TCP ports in LISTEN state in the network namespace of ``pid``."""
    ports: set[int] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == TCP_LISTEN:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def terminate(pid: int, start: int | None, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM ``pid``, wait up to ``timeout``, then SIGKILL; only if it is still ours."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, timeout)):
        if not alive(pid, start):
            reap(pid)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            reap(pid)
            if not alive(pid, start):
                return
            time.sleep(POLL)
    raise HalabError(f"process {pid} survived SIGKILL")


class Supervisor:
    """Start, stop and inspect the services of one host."""

    def __init__(
        self,
        host: str,
        run_dir: Path,
        log_dir: Path,
        wrap: Callable[[Sequence[str]], list[str]],
    ) -> None:
        self.host = host
        self.run_dir = run_dir
        self.log_dir = log_dir
        self.wrap = wrap

    def pidfile(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def specfile(self, name: str) -> Path:
        return self.run_dir / f"{name}.service"

    def log(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def _read_pidfile(self, name: str) -> tuple[int, int] | None:
        try:
            data = json.loads(self.pidfile(name).read_text())
            return int(data["pid"]), int(data["start"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def spec(self, name: str) -> ServiceSpec:
        """The spec a service was last started with (kept while it is stopped)."""
        try:
            data = json.loads(self.specfile(name).read_text())
            return ServiceSpec(name=name, argv=tuple(data["argv"]),
                               listens=tuple(data["listens"]), unit=data.get("unit"),
                               ready_path=data.get("ready_path"),
                               inputs=data.get("inputs", ""))
        except (OSError, ValueError, KeyError, TypeError):
            known = ", ".join(self.names()) or "none"
            raise HalabError(f"{self.host}: no service {name!r} (services: {known})") from None

    def state(self, name: str) -> ServiceState:
        rec = self._read_pidfile(name)
        if rec is None:
            return ServiceState(self.host, name, False, None, "stopped")
        pid, start = rec
        if alive(pid, start):
            return ServiceState(self.host, name, True, pid, "running")
        return ServiceState(self.host, name, False, None, f"dead (was pid {pid})")

    def names(self) -> list[str]:
        """Known services in the order they were first started."""
        if not self.run_dir.is_dir():
            return []
        files = sorted(self.run_dir.glob("*.service"), key=lambda p: p.stat().st_mtime_ns)
        return [p.stem for p in files]

    def states(self) -> list[ServiceState]:
        return [self.state(n) for n in self.names()]

    def start(self, spec: ServiceSpec, ready_timeout: float = READY_TIMEOUT) -> ServiceState:
        record = json.dumps({"argv": list(spec.argv), "listens": list(spec.listens),
                             "unit": spec.unit, "ready_path": spec.ready_path,
                             "inputs": spec.inputs})
        specfile = self.specfile(spec.name)
        current = self.state(spec.name)
        if current.running and specfile.exists() and specfile.read_text() == record:
            return current
        self.stop(spec.name)  # started with another spec or inputs; or dead, with leftovers
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if not specfile.exists() or specfile.read_text() != record:
            specfile.write_text(record)
        if spec.ready_path is not None:  # left by a process that is gone: not ready
            Path(spec.ready_path).unlink(missing_ok=True)
        log_path = self.log(spec.name)
        offset = log_path.stat().st_size if log_path.exists() else 0
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                self.wrap(spec.argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        info = proc_info(proc.pid)
        start = info.start if info else 0
        tmp = self.pidfile(spec.name).with_suffix(".pid.tmp")
        tmp.write_text(json.dumps({"pid": proc.pid, "start": start}))
        tmp.replace(self.pidfile(spec.name))
        self._wait_ready(proc, spec, ready_timeout, log_path, offset)
        return ServiceState(self.host, spec.name, True, proc.pid, "running")

    def restart(self, name: str) -> ServiceState:
        spec = self.spec(name)
        self.stop(name)
        return self.start(spec)

    def _wait_ready(
        self,
        proc: subprocess.Popen[bytes],
        spec: ServiceSpec,
        timeout: float,
        log_path: Path,
        offset: int,
    ) -> None:
        deadline = time.monotonic() + timeout
        missing = set(spec.listens)
        while True:
            if proc.poll() is not None:
                self.pidfile(spec.name).unlink(missing_ok=True)
                raise HalabError(
                    f"{self.host}: {spec.name} exited with status {proc.returncode} at start: "
                    f"{_tail(log_path, offset)}"
                )
            if missing:
                missing -= listening_ports(proc.pid)
            if not missing and (spec.ready_path is None or Path(spec.ready_path).exists()):
                return
            if time.monotonic() > deadline:
                what = (f"listen on port {', '.join(str(p) for p in sorted(missing))}"
                        if missing else f"create {spec.ready_path}")
                self.stop(spec.name)
                raise HalabError(
                    f"{self.host}: {spec.name} did not {what} "
                    f"within {timeout:.0f} s: {_tail(log_path, offset)}"
                )
            time.sleep(POLL)

    def stop(self, name: str, timeout: float = STOP_TIMEOUT) -> None:
        """Its main process, then what is left of its session, as systemd's default
        KillMode=control-group does: an nginx master killed by a fault leaves its workers
        holding the listening socket, serving."""
        rec = self._read_pidfile(name)
        if rec is not None:
            pid, start = rec
            terminate(pid, start, timeout=timeout)
            info = proc_info(pid)
            if info is None or info.start == start:  # the number is not another's now
                for left in session_members(pid):
                    terminate(left.pid, left.start, timeout=timeout)
        self.pidfile(name).unlink(missing_ok=True)

    def stop_all(self) -> None:
        for name in reversed(self.names()):
            self.stop(name)


def _tail(path: Path, offset: int, limit: int = 300) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace").strip()
    except OSError:
        return "(no log)"
    if not text:
        return "(no output)"
    return " | ".join(text.splitlines())[-limit:]
