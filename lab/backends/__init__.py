"""Backends that realize a topology: netns (embedded default), vagrant (libvirt VMs),
ssh (existing hosts, from an inventory).

Which one the proof suite tests when nobody says (``choose_lab``): this checkout's
Vagrant lab if it is up (``vagrant up``, then ``tox -e integration``), else the
embedded netns lab."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lab.backend import Backend
from lab.errors import HalabError
from lab.topology import Topology

KINDS: tuple[str, ...] = ("netns", "vagrant", "ssh")
LAB_ENV = "HALAB_LAB"


def make_backend(kind: str, topology: Topology, inventory: str | Path | None = None) -> Backend:
    """``inventory``: the ssh backend's (else $HALAB_INVENTORY)."""
    if kind == "netns":
        from lab.backends.netns import NetnsBackend

        return NetnsBackend(topology)
    if kind == "vagrant":
        from lab.backends.vagrant import VagrantBackend

        return VagrantBackend(topology)
    if kind == "ssh":
        from lab.backends.ssh import SshBackend
        from lab.backends.ssh.transport import require_fabric

        require_fabric(kind)  # before anything is tried
        return SshBackend.from_inventory(topology, inventory)
    raise HalabError(f"unknown lab backend {kind!r} (known: {', '.join(KINDS)})")


def choose_lab(option: str | None, env_value: str | None,
               vagrant_up: Callable[[], bool]) -> tuple[str, str]:
    """(kind, why): ``--lab`` if given, else ``$HALAB_LAB`` if set, else ``vagrant`` when
    ``vagrant_up()`` says this checkout's Vagrant lab is up, else ``netns``. ``vagrant_up``
    is asked only when neither was given."""
    if option:
        return option, f"--lab {option} given"
    if env_value:
        if env_value not in KINDS:
            raise HalabError(f"{LAB_ENV}={env_value!r}: must be one of {', '.join(KINDS)}")
        return env_value, f"{LAB_ENV}={env_value}"
    if vagrant_up():
        return "vagrant", "a Vagrant lab of this checkout is up (every VM running)"
    return "netns", "no Vagrant lab of this checkout is up: the embedded netns lab"


def vagrant_lab_up(topology: Topology) -> bool:
    """Whether this checkout's Vagrant lab is up (``VagrantBackend.is_up``): cheap, starts
    nothing, and no Vagrantfile, Vagrant or libvirt here simply means no."""
    from lab.backends.vagrant import VagrantBackend

    try:
        return VagrantBackend(topology).is_up()
    except HalabError:  # no Vagrantfile here or above
        return False


def root_refusal(kind: str, euid: int) -> str | None:
    """The one line that stops a netns run by a user who is not root (else None)."""
    if kind != "netns" or euid == 0:
        return None
    return ("the netns lab needs root (it builds network namespaces): run as root "
            "(sudo .venv/bin/tox -e integration), or bring up the VM lab first "
            "(vagrant up, then tox -e integration again)")
