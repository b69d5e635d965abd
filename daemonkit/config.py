"""Reading TOML daemon configs with one-line errors naming file, key and reason.

Shared by the balancer and heartbeat configs::

    r = Reader.load(path)                 # ConfigError on a missing file or bad TOML
    g = r.table("global")                 # a sub-table ({} if absent)
    n = g.integer("maxconn", 10000, lo=1) # typed getters with defaults and ranges
    g.done()                              # any key not read is an error (typos)
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from daemonkit.errors import ConfigError

_MISSING: Any = object()
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(us|ms|s|m|h)")
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


class Reader:
    def __init__(self, data: dict[str, Any], path: str, prefix: str = "") -> None:
        self.data = data
        self.path = path
        self.prefix = prefix
        self.seen: set[str] = set()

    @classmethod
    def load(cls, path: str | Path) -> Reader:
        try:
            raw = Path(path).read_bytes()
        except OSError as e:
            raise ConfigError(str(path), "", f"cannot read: {e.strerror}") from None
        return cls.loads(raw.decode(errors="replace"), str(path))

    @classmethod
    def loads(cls, text: str, path: str = "<config>") -> Reader:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(path, "", f"not valid TOML: {e}") from None
        return cls(data, path)

    # --- helpers ---------------------------------------------------------------

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def fail(self, name: str, reason: str) -> ConfigError:
        return ConfigError(self.path, self.key(name), reason)

    def _get(self, name: str, default: Any) -> Any:
        self.seen.add(name)
        if name in self.data:
            return self.data[name]
        if default is _MISSING:
            raise self.fail(name, "missing")
        return default

    def value(self, name: str, default: Any = _MISSING) -> Any:
        """The raw value, for shapes the typed getters do not cover."""
        return self._get(name, default)

    def has(self, name: str) -> bool:
        return name in self.data

    def done(self) -> None:
        for name in self.data:
            if name not in self.seen:
                allowed = ", ".join(sorted(self.seen))
                raise self.fail(name, f"unknown key (known here: {allowed})")

    # --- typed getters ----------------------------------------------------------

    def table(self, name: str, required: bool = False) -> Reader:
        value = self._get(name, _MISSING if required else {})
        if not isinstance(value, dict):
            raise self.fail(name, "must be a table")
        return Reader(value, self.path, self.key(name))

    def tables(self, name: str) -> list[Reader]:
        value = self._get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.fail(name, f"must be an array of tables ([[{self.key(name)}]])")
        return [Reader(v, self.path, f"{self.key(name)}[{i}]") for i, v in enumerate(value)]

    def text(self, name: str, default: Any = _MISSING, choices: Sequence[str] = ()) -> str:
        value = self._get(name, default)
        if not isinstance(value, str) or not value:
            raise self.fail(name, f"{value!r} must be a non-empty string")
        if choices and value not in choices:
            raise self.fail(name, f"{value!r} must be one of {', '.join(choices)}")
        return value

    def flag(self, name: str, default: Any = _MISSING) -> bool:
        value = self._get(name, default)
        if not isinstance(value, bool):
            raise self.fail(name, f"{value!r} must be true or false")
        return value

    def integer(self, name: str, default: Any = _MISSING, lo: int | None = None,
            hi: int | None = None) -> int:
        value = self._get(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(name, f"{value!r} must be an integer")
        if lo is not None and value < lo:
            raise self.fail(name, f"{value} must be at least {lo}")
        if hi is not None and value > hi:
            raise self.fail(name, f"{value} must be at most {hi}")
        return value

    def ms(self, name: str, default: Any = _MISSING, lo: int = 1,
           hi: int = 3_600_000) -> float:
        """A duration, returned in seconds: an integer is milliseconds (``200``); a
        string carries its unit, as HAProxy's timeouts (``"200ms"``, ``"2s"``,
        ``"1.5s"``, ``"1m"``; also us and h)."""
        value = self._get(name, default)
        if isinstance(value, str):
            m = _DURATION.fullmatch(value.strip())
            if m is None:
                raise self.fail(name, f"{value!r} is not a duration: write milliseconds "
                                      f"(200) or a number with its unit (200ms, 2s, 1m)")
            ms = float(m[1]) * _UNIT_MS[m[2]]
        elif isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(name, f"{value!r} is not a duration: write milliseconds "
                                  f"(200) or a number with its unit (200ms, 2s, 1m)")
        else:
            ms = value
        if ms < lo:
            raise self.fail(name, f"{value} must be at least {lo} ms")
        if ms > hi:
            raise self.fail(name, f"{value} must be at most {hi} ms")
        return ms / 1000.0

    def endpoint(self, name: str, default: Any = _MISSING) -> tuple[str, int]:
        return self._endpoint(name, self._get(name, default))

    def endpoints(self, name: str, default: Any = _MISSING) -> list[tuple[str, int]]:
        value = self._get(name, default)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            raise self.fail(name, "must be an address:port or a non-empty list of them")
        out = [self._endpoint(name, v) for v in value]
        if len(set(out)) != len(out):
            raise self.fail(name, "lists an address twice")
        return out

    def _endpoint(self, name: str, value: Any) -> tuple[str, int]:
        if not isinstance(value, str) or ":" not in value:
            raise self.fail(name, f"{value!r} must be IPv4-address:port")
        host, _, port_s = value.rpartition(":")
        try:
            ipaddress.IPv4Address(host)
            port = int(port_s)
        except ValueError:
            raise self.fail(name, f"{value!r} must be IPv4-address:port") from None
        if not 1 <= port <= 65535:
            raise self.fail(name, f"{value!r}: port must be 1-65535")
        return host, port
