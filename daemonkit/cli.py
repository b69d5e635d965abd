"""What halab's daemons share around their loop: the command line, the event loop, reload."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import TypeVar

from daemonkit.errors import ConfigError
from daemonkit.log import EventLog

T = TypeVar("T")


def parse_args(prog: str, description: str, default_config: str,
               argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("-f", "--config", default=default_config, help=f"default {default_config}")
    ap.add_argument("--check", action="store_true", help="validate the config and exit")
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    return ap.parse_args(argv)


def install_loop(log: EventLog) -> None:
    """uvloop when it is installed (it is a dependency), else asyncio's own loop."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        log.warning("no_uvloop", note="running on the default asyncio loop")


def reload_config(load: Callable[[str], T], path: str, log: EventLog) -> T | None:
    """SIGHUP's first step: the new config, or None (logged as ``reload_failed``) when it
    is wrong, and the daemon goes on with the one it has."""
    try:
        return load(path)
    except ConfigError as e:
        log.error("reload_failed", reason=str(e))
        return None
