"""Backends that realize a topology: netns (embedded default), vagrant (libvirt VMs),
ssh (existing hosts, from an inventory)."""

from __future__ import annotations

from pathlib import Path

from lab.backend import Backend
from lab.errors import HalabError
from lab.topology import Topology

KINDS: tuple[str, ...] = ("netns", "vagrant", "ssh")


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

        return SshBackend.from_inventory(topology, inventory)
    raise HalabError(f"unknown lab backend {kind!r} (known: {', '.join(KINDS)})")
