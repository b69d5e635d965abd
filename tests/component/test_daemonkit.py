"""daemonkit's I/O on loopback: the control socket (server and both clients) and the
TCP check, as the two daemons use them."""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from daemonkit import control
from daemonkit.check import ANSWERED, CONNECTED, TIMED_OUT, Outcome, tcp_check
from daemonkit.log import EventLog


def test_the_control_socket_answers_each_line_and_a_bug_still_answers(tmp_path: Path) -> None:
    path = str(tmp_path / "run" / "d.sock")
    (tmp_path / "run").mkdir()
    Path(path).write_text("stale")  # an earlier run's leftover is replaced
    logged = io.StringIO()

    async def handler(line: str) -> str:
        if line.strip() == "boom":
            raise RuntimeError("a bug")
        return f"got {line.strip()}\n"

    async def main() -> tuple[str, str, str, int]:
        server = await control.serve(path, handler, EventLog("t", stream=logged),
                                     lambda e: f"error: {e}\n")
        mode = stat.S_IMODE(os.stat(path).st_mode)
        two = await asyncio.to_thread(control.request, path, "one\ntwo")
        bug = await control.arequest(path, "boom")
        one = await control.arequest(path, "status")
        control.close(server, path)
        return two, bug, one, mode

    two, bug, one, mode = asyncio.run(main())
    assert two == "got one\ngot two\n" and one == "got status\n"
    assert bug == "error: a bug\n" and "control_command_failed" in logged.getvalue()
    assert mode == 0o600 and not os.path.exists(path)


def test_a_line_over_the_limit_closes_the_connection(tmp_path: Path) -> None:
    path = str(tmp_path / "d.sock")

    async def handler(line: str) -> str:
        return "ok\n"

    async def main() -> str:
        server = await control.serve(path, handler, EventLog("t", stream=io.StringIO()),
                                     str)
        answer = await control.arequest(path, "x" * (control.LINE_LIMIT + 10))
        control.close(server, path)
        return answer

    assert asyncio.run(main()) == ""


def test_the_tcp_check_connects_reads_a_first_line_and_times_out() -> None:
    async def main() -> tuple[Outcome, Outcome, Outcome]:
        async def answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readline()
            writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
            writer.close()

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()  # until the checker gives up

        a = await asyncio.start_server(answers, "127.0.0.1", 0)
        b = await asyncio.start_server(silent, "127.0.0.1", 0)
        pa, pb = (s.sockets[0].getsockname()[1] for s in (a, b))
        out = (await tcp_check("127.0.0.1", pa, 2.0),
               await tcp_check("127.0.0.1", pa, 2.0, b"GET / HTTP/1.1\r\n\r\n"),
               await tcp_check("127.0.0.1", pb, 0.2, b"GET / HTTP/1.1\r\n\r\n"))
        a.close()
        b.close()
        return out

    plain, asked, timed_out = asyncio.run(main())
    assert plain.ok and plain.reason == CONNECTED
    assert asked.ok and asked.first_line == b"HTTP/1.1 200 OK\r\n"
    assert not timed_out.ok and timed_out.reason == TIMED_OUT


def test_a_closed_port_is_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        out = asyncio.run(tcp_check("127.0.0.1", port, 2.0))
    assert not out.ok and out.reason == "connection refused"


def test_a_first_line_over_the_limit_is_an_answer_without_a_status_line() -> None:
    """A hostile server's endless first line ends the check, not the checker (the
    balancer then counts it as an invalid check response)."""
    async def main() -> Outcome:
        async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readline()
            writer.write(b"H" * (256 * 1024))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(endless, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        out = await tcp_check("127.0.0.1", port, 2.0, b"GET / HTTP/1.1\r\n\r\n")
        server.close()
        return out

    out = asyncio.run(main())
    assert out.ok and out.reason == ANSWERED and out.first_line == b""


def test_a_ctl_finds_the_socket_its_daemon_config_names(tmp_path: Path) -> None:
    """hbctl without -s: the socket of [cluster] control_socket in the config (-f, default
    the daemon's own /etc/halab/heartbeat.toml), as on any host provisioning wrote it."""
    path = str(tmp_path / "hb.sock")
    cfg = tmp_path / "heartbeat.toml"
    cfg.write_text(f'[node]\nname = "dir0"\n[cluster]\ncontrol_socket = "{path}"\n')

    async def handler(line: str) -> str:
        return json.dumps({"answered": line.strip()}) + "\n"

    async def main() -> subprocess.CompletedProcess[str]:
        server = await control.serve(path, handler, EventLog("t", stream=io.StringIO()),
                                     lambda e: f"error: {e}\n")
        try:
            return await asyncio.to_thread(
                subprocess.run, [sys.executable, "-m", "heartbeat.ctl", "-f", str(cfg),
                                 "events"], capture_output=True, text=True, timeout=10)
        finally:
            control.close(server, path)

    res = asyncio.run(main())
    assert (res.returncode, res.stderr) == (0, ""), res
    assert json.loads(res.stdout) == {"answered": "events"}


def test_the_socket_in_a_config_or_the_default(tmp_path: Path) -> None:
    cfg = tmp_path / "b.toml"
    assert control.socket_in_config(str(cfg), "global", "admin_socket", "/d.sock") == "/d.sock"
    cfg.write_text("[global]\nworkers = 1\n")  # names none
    assert control.socket_in_config(str(cfg), "global", "admin_socket", "/d.sock") == "/d.sock"
    cfg.write_text('[global]\nadmin_socket = "/x/b.sock"\n')
    assert control.socket_in_config(str(cfg), "global", "admin_socket", "/d.sock") == "/x/b.sock"
    cfg.write_text("[global\n")
    with pytest.raises(ValueError, match=f"{cfg}: not TOML"):
        control.socket_in_config(str(cfg), "global", "admin_socket", "/d.sock")
    res = subprocess.run([sys.executable, "-m", "balancer.ctl", "-f", str(cfg), "show", "servers"],
                         capture_output=True, text=True, timeout=10)
    assert res.returncode == 2 and res.stderr.startswith(f"balancerctl: {cfg}: not TOML")
