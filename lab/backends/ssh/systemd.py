"""The ssh backend's services (``Services``) as systemd units: halab's own unit (its text
in the service spec), the system's own (ssh.service), or one rendered from the service's
argv; restarted only when what it was started from changed; logs are the journal's."""

from __future__ import annotations

import hashlib
import shlex
import time
from collections.abc import Sequence
from pathlib import Path

from lab.backend import Services, ServiceSpec, ServiceState, Transport
from lab.backends.ssh.deploy import VENV
from lab.errors import HalabError

SERVICES_DIR = "/etc/halab/services"  # one file per service provisioned: its unit
POWERED_OFF = "/run/halab/powered-off"  # the units a power loss stopped


def render_unit(spec: ServiceSpec) -> str:
    """A unit for a foreground daemon that ships none of halab's own."""
    return (f"# halab: {spec.name}, rendered from its argv by halab\n"
            f"[Unit]\nDescription=halab {spec.name}\nAfter=network-online.target\n"
            f"Conflicts={distro_unit(spec)}\n\n"
            f"[Service]\nExecStart={shlex.join(spec.argv)}\nRestart=on-failure\n"
            f"RestartSec=1\nRuntimeDirectory=halab\nRuntimeDirectoryPreserve=yes\n\n"
            f"[Install]\nWantedBy=multi-user.target\n")


def distro_unit(spec: ServiceSpec) -> str:
    """The distribution's unit for the same program (nginx.service), which a rendered
    unit replaces: both would want the same ports."""
    return f"{Path(spec.argv[0]).name}.service"


def unit_for(spec: ServiceSpec) -> tuple[str, str | None]:
    """(unit name, unit text to install, or None for the system's own unit)."""
    if spec.unit:
        return spec.unit, spec.unit_text
    return f"halab-{spec.name}.service", render_unit(spec)


def restart_unless_started(spec: ServiceSpec, unit: str, text: str | None,
                           services_dir: str = SERVICES_DIR, venv: str = VENV) -> str:
    """Shell: ``systemctl restart`` the unit unless it is active and was started from
    these inputs (the spec's, its unit's text, for halab's daemons the build installed
    in ``venv``), noted on the host when it was."""
    want = hashlib.sha256(f"{spec.inputs}\0{text or unit}".encode()).hexdigest()
    ours = bool(spec.argv) and spec.argv[0].startswith(venv)
    build = f" $(cat {venv}/wheels.sha256)" if ours else ""
    started = f"{services_dir}/.{spec.name}.started"
    return (f'new="{want}{build}"; systemctl is-active -q {unit} && '
            f'[ "$(cat {started} 2>/dev/null)" = "$new" ] || '
            f'{{ systemctl restart {unit} && echo "$new" > {started}; }}')


class SystemdServices(Transport, Services):
    """A host's lab services as systemd units, driven over the transport; each service
    provisioned is noted in ``SERVICES_DIR`` (its unit's name)."""

    slowness: float

    def _unit(self, host: str, name: str) -> str:
        try:
            return self.read_file(host, f"{SERVICES_DIR}/{name}").decode().strip()
        except HalabError:
            raise HalabError(f"{host}: no service {name!r}") from None

    def _units(self, host: str) -> list[str]:
        """The units of every service provisioned on ``host``."""
        out = self.run(host, ["sh", "-c", f"cat {SERVICES_DIR}/* 2>/dev/null; true"]).text
        return out.split()

    def start_service(self, host: str, spec: ServiceSpec) -> ServiceState:
        """Restart the unit where it is not active or was started from other inputs
        (its files, its unit, for halab's daemons the halab build installed), which
        are noted on the host; else leave it running. A notify unit returns once ready."""
        unit, text = unit_for(spec)
        self._install_unit(host, unit, text, restart_unless_started(spec, unit, text),
                           [(f"{SERVICES_DIR}/{spec.name}", unit + "\n", 0o644)],
                           replaces=distro_unit(spec) if spec.unit is None else None)
        self._wait_ready(host, spec)
        return self._state(host, spec.name, unit)

    def enable_at_boot(self, host: str, unit: str, text: str) -> None:
        self._install_unit(host, unit, text)

    def _install_unit(self, host: str, unit: str, text: str | None, then: str = "",
                      files: Sequence[tuple[str, bytes | str, int]] = (),
                      replaces: str | None = None) -> None:
        """Install ``unit`` (None: the system's own), enable it, run ``then``: in one
        command, and without what costs seconds under TCG when nothing changed
        (systemd's daemon-reload, `systemctl enable`). ``replaces``: the distribution's
        unit that this one stands in for, stopped and disabled when it is installed."""
        path = f"/etc/systemd/system/{unit}"
        staged = f"{SERVICES_DIR}/.{unit}.new"
        script = ""
        if text is not None:
            files = [*files, (staged, text, 0o644)]
            off = (f"systemctl disable -q --now {replaces} 2>/dev/null; " if replaces else "")
            script = (f"if cmp -s {staged} {path}; then rm {staged}; "
                      f"else {off}mv {staged} {path} && systemctl daemon-reload; fi && ")
        script += (f"{{ systemctl is-enabled -q {unit} || "
                   f"systemctl enable -q --no-reload {unit}; }}")
        if then:
            script += f" && {{ {then}; }}"
        if files:
            self.put_files(host, files)
        self.run(host, ["sh", "-c", script], timeout=120)

    def _wait_ready(self, host: str, spec: ServiceSpec) -> None:
        deadline = time.monotonic() + 60 * self.slowness
        while True:
            ports = self.run(host, ["ss", "-Hltn"]).text
            listening = all(f":{p} " in ports for p in spec.listens)
            ready = spec.ready_path is None or self.run(
                host, ["test", "-e", spec.ready_path], check=False).ok
            if listening and ready:
                return
            if time.monotonic() > deadline:
                raise HalabError(f"{host}: {spec.name} not ready within "
                                 f"{60 * self.slowness:g} s")
            time.sleep(0.2)

    def _state(self, host: str, name: str, unit: str) -> ServiceState:
        out = self.run(host, ["systemctl", "show", "-p", "ActiveState,MainPID", unit]).text
        props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        pid = int(props.get("MainPID", "0") or 0)
        active = props.get("ActiveState") == "active"
        return ServiceState(host, name, active, pid or None, f"{unit} {props.get('ActiveState')}")

    def stop_service(self, host: str, name: str) -> float:
        return self.run_timed(host, ["systemctl", "stop", self._unit(host, name)], timeout=60)

    def restart_service(self, host: str, name: str) -> ServiceState:
        unit = self._unit(host, name)
        self.run(host, ["systemctl", "restart", unit], timeout=120)
        return self._state(host, name, unit)

    def services(self, host: str) -> list[ServiceState]:
        names = self.run(host, ["ls", SERVICES_DIR], check=False).text.split()
        return [self._state(host, n, self._unit(host, n)) for n in names]

    def service_log(self, host: str, name: str) -> Path:
        raise HalabError(f"{host}: {name} logs to the journal: "
                         f"halab exec {host} -- journalctl -u {self._unit(host, name)}")

    def follow_argv(self, host: str, names: Sequence[str]) -> list[str]:
        units = [a for n in names for a in ("-u", self._unit(host, n))]
        return ["journalctl", "-q", "-o", "cat", "-n", "50", "-f", *units]

    def log_text(self, host: str, name: str) -> str:
        return self.run(host, ["journalctl", "-q", "-o", "cat", "--no-pager", "-u",
                               self._unit(host, name)], timeout=60).text
