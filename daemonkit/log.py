"""Structured logs for halab's daemons: one logfmt line per event on stderr.

    2026-11-25T16:08:47.123Z level=info daemon=balancer event=server_down server=web0 reason="..."

Millisecond UTC timestamps, so a failover can be put on a timeline; under
systemd, stderr goes to the journal.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any


def _quote(value: Any) -> str:
    s = str(value)
    if s == "" or any(c in s for c in ' ="\n\t'):
        s = '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return s


def logfmt(**fields: Any) -> str:
    return " ".join(f"{k}={_quote(v)}" for k, v in fields.items() if v is not None)


class _Formatter(logging.Formatter):
    def __init__(self, daemon: str) -> None:
        super().__init__()
        self.daemon = daemon

    def format(self, record: logging.LogRecord) -> str:
        t = time.gmtime(record.created)
        ms = int(record.msecs)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{ms:03d}Z"
        return (f"{stamp} level={record.levelname.lower()} daemon={self.daemon} "
                f"{record.getMessage()}")


class EventLog:
    """``log.info("server_down", server="web0", reason="...")``."""

    def __init__(self, daemon: str, level: str = "info", stream: Any = None) -> None:
        self.logger = logging.getLogger(f"halab.{daemon}")
        self.logger.handlers.clear()
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(_Formatter(daemon))
        self.logger.addHandler(handler)
        self.logger.setLevel(level.upper())
        self.logger.propagate = False

    def log(self, level: int, event: str, **fields: Any) -> None:
        if self.logger.isEnabledFor(level):
            self.logger.log(level, logfmt(event=event, **fields))

    def debug(self, event: str, **fields: Any) -> None:
        self.log(logging.DEBUG, event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        self.log(logging.INFO, event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.log(logging.WARNING, event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self.log(logging.ERROR, event, **fields)
