"""A lab service as a systemd unit: halab's own unit (its text in the service spec), the
system's own (ssh.service), or one rendered from the service's argv; restarted only
when what it was started from changed."""

from __future__ import annotations

import hashlib
import shlex
from pathlib import Path

from lab.backend import ServiceSpec
from lab.backends.ssh.deploy import VENV

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


