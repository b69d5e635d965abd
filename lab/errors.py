"""Errors that halab reports to its user as one clear line."""

from __future__ import annotations


class HalabError(Exception):
    """An error meant for the user: its message is one line that says what to do."""


class ConfigError(HalabError):
    """A configuration file is wrong: names the file, the key and the reason."""

    def __init__(self, path: str, key: str, reason: str) -> None:
        self.path = path
        self.key = key
        self.reason = reason
        where = f"{path}: {key}" if key else path
        super().__init__(f"{where}: {reason}")
