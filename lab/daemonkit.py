"""What halab's daemons share at start: the command line and the event loop."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from lab.logs import EventLog


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
