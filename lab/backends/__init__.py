"""Backends that realize a topology: netns (embedded default), vagrant (libvirt VMs);
ssh (real hosts) to come."""

from __future__ import annotations

from lab.backend import Backend
from lab.errors import HalabError
from lab.topology import Topology

KINDS: tuple[str, ...] = ("netns", "vagrant")
# Named by the suite's --lab already; built in issue 6.
PLANNED: tuple[str, ...] = ("ssh",)


def make_backend(kind: str, topology: Topology) -> Backend:
    if kind == "netns":
        from lab.backends.netns import NetnsBackend

        return NetnsBackend(topology)
    if kind == "vagrant":
        from lab.backends.vagrant import VagrantBackend

        return VagrantBackend(topology)
    raise HalabError(f"unknown lab backend {kind!r} (known: {', '.join(KINDS)})")
