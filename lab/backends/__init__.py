"""Backends that realize a topology: netns (embedded default); vagrant and ssh to come."""

from __future__ import annotations

from lab.backend import Backend
from lab.errors import HalabError
from lab.topology import Topology

KINDS: tuple[str, ...] = ("netns",)
# Named by the suite's --lab already; built in issue 6.
PLANNED: tuple[str, ...] = ("vagrant", "ssh")


def make_backend(kind: str, topology: Topology) -> Backend:
    if kind == "netns":
        from lab.backends.netns import NetnsBackend

        return NetnsBackend(topology)
    raise HalabError(f"unknown lab backend {kind!r} (known: {', '.join(KINDS)})")
