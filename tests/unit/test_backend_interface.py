"""The backend interface: ``run`` is written once, over each backend's ``execute``; the
backends are made of the interface's parts."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from lab.backend import HostPaths, Links, Power, Result, Services, Transport
from lab.backends.netns import NetnsBackend
from lab.backends.ssh import SshBackend
from lab.backends.vagrant import VagrantBackend
from lab.errors import HalabError


class Echo(Transport):
    """A transport that answers every command with the exit status it names."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, list[str], bytes | None, float]] = []

    def execute(self, host: str, argv: Sequence[str], *, input: bytes | None,
                timeout: float) -> Result:
        self.seen.append((host, list(argv), input, timeout))
        return Result(list(argv), int(argv[-1]), b"out", b"first\nsecond\n")

    def command(self, host: str, argv: Sequence[str]) -> list[str]:
        return list(argv)

    def put_file(self, host: str, path: str, content: bytes | str, mode: int = 0o644) -> None:
        raise NotImplementedError

    def read_file(self, host: str, path: str) -> bytes:
        raise NotImplementedError

    def paths(self, host: str) -> HostPaths:
        raise NotImplementedError


def test_run_passes_the_command_once_and_returns_what_it_did() -> None:
    t = Echo()
    res = t.run("web0", ["true", "0"], input=b"x", timeout=7)
    assert res.ok and res.text == "out"
    assert t.seen == [("web0", ["true", "0"], b"x", 7)]


def test_a_failing_command_is_an_error_in_one_line_unless_unchecked() -> None:
    t = Echo()
    with pytest.raises(HalabError) as e:
        t.run("web0", ["false", "3"])
    assert str(e.value) == "web0: `false 3` failed (exit 3): first | second"
    assert t.run("web0", ["false", "3"], check=False).returncode == 3


@pytest.mark.parametrize("backend", [NetnsBackend, SshBackend, VagrantBackend])
def test_each_backend_is_made_of_every_part(backend: type) -> None:
    assert all(issubclass(backend, part) for part in (Transport, Services, Links, Power))
    assert "run" not in vars(backend)  # the interface's own, not a copy
