"""halab's own systemd units, as provisioning ships them to a host (``text``)."""

from __future__ import annotations

from pathlib import Path


def text(unit: str) -> str:
    """The text of one of halab's units (``halab-balancer.service``...)."""
    return (Path(__file__).parent / unit).read_text()
