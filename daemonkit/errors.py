"""Errors a daemon reports as one clear line (on stderr at start, in its log after)."""

from __future__ import annotations


class DaemonError(Exception):
    """An error meant for the operator: its message is one line that says what to do."""


class ConfigError(DaemonError):
    """A configuration file is wrong: names the file, the key and the reason."""

    def __init__(self, path: str, key: str, reason: str) -> None:
        self.path = path
        self.key = key
        self.reason = reason
        where = f"{path}: {key}" if key else path
        super().__init__(f"{where}: {reason}")
