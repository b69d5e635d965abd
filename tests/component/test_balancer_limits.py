"""File descriptor limits and the runtime API's refusals, on a real balancer process on
loopback (issue 13, items 5 and 6).

A balancer started with a low RLIMIT_NOFILE takes fewer client connections than its
configured maxconn: each needs a client and a server socket, and a reserve stays free
for the health checks, the admin listener and the keep-alive pools. The ones beyond get
a fast 503 (HTTP) or are closed at once (TCP), never a stall; the checks keep working,
and a check that finds no descriptor left is inconclusive, not the server's fault.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from daemonkit.control import request as send
from harness.poll import wait_until

from .backends import Backend, Running, config_text, free_port, running

NOFILE = 100
# the reserve: 32 (headroom) + 2 (a check per server) + 2 * pool_size 1 (HTTP pools):
# (100 - 36) // 2 = 32 client connections in HTTP mode; TCP has no pools: (100 - 34) // 2
EFFECTIVE = {"http": 32, "tcp": 33}
PARTIAL_HEAD = b"GET / HTTP/1.1\r\nHost: x\r\n"  # a request head not finished yet
EXTRA = ('[backend]\npool_size = 1\n[timeouts]\nclient_header = 30000\ndrain = 500\n'
         '[health]\ninter = 100\nfastinter = 50\nfall = 2\n')


def in_mode(r: Running, mode: str, nofile: int | None = None) -> Running:
    """The same balancer restarted in ``mode``."""
    if mode == "http":
        return r
    text = r.path.read_text().replace("[frontend]\n", f'[frontend]\nmode = "{mode}"\n', 1)
    r.stop()
    return Running(r.path.parent, text, r.port, nofile).start()


def stats(admin_port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/stats.json",
                                timeout=2) as resp:
        snap: dict[str, Any] = json.loads(resp.read())
    return snap


def servers_up(admin_port: int) -> bool:
    snap = stats(admin_port)
    return all(s["state"] == "UP" and s["downs"] == 0 for s in snap["servers"])


def admin_answers(admin_port: int) -> bool:
    """While the balancer has no descriptor left, a newcomer on the admin port is reset."""
    try:
        stats(admin_port)
    except OSError:
        return False
    return True


def drain(s: socket.socket) -> bytes:
    """What the balancer sent before it closed (a reset ends it too)."""
    s.settimeout(1.0)
    chunks = []
    with contextlib.suppress(OSError):
        while c := s.recv(65536):
            chunks.append(c)
    return b"".join(chunks)


def flood(port: int, total: int, data: bytes) -> tuple[list[socket.socket],
                                                        list[tuple[float, bytes]]]:
    """Open ``total`` connections one after the other, each sending ``data``, and keep
    them; an answered one (or one the balancer closed) is read to its end and closed.
    -> the ones still held after a second, and (seconds until answered, answer) of the
    others."""
    opened: dict[socket.socket, float] = {}
    answers: list[tuple[float, bytes]] = []

    def collect(wait: float) -> None:
        ready, _, _ = select.select(list(opened), [], [], wait)
        for s in ready:
            took = time.monotonic() - opened.pop(s)
            answers.append((took, drain(s)))
            s.close()

    for _ in range(total):
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
        opened[s] = time.monotonic()
        with contextlib.suppress(OSError):
            s.sendall(data)
        collect(0)
    deadline = time.monotonic() + 1.0
    while (left := deadline - time.monotonic()) > 0:
        collect(left)
    return list(opened), answers


@pytest.mark.parametrize("mode", ["http", "tcp"])
def test_a_low_fd_limit_turns_extra_connections_away_fast_and_checks_go_on(
        pair: list[Backend], tmp_path: Path, mode: str) -> None:
    admin = free_port()
    with running(tmp_path, pair, nofile=NOFILE, admin_port=admin, extra=EXTRA) as first:
        r = in_mode(first, mode, NOFILE)
        try:
            # (the daemon listens on its frontend first, then opens the admin port)
            wait_until(lambda: admin_answers(admin), 5, "the admin port answering")
            wait_until(lambda: stats(admin)["frontend"]["current"] == 0, 5,
                       "the start-up probe's connection gone")
            assert servers_up(admin)
            # 150 connections, more than the descriptor limit, each held with its head
            # unfinished: the first EFFECTIVE are taken, the others turned away at once
            held, answers = flood(r.port, 150, PARTIAL_HEAD)
            try:
                log = r.log.read_text()
                assert len(held) <= EFFECTIVE[mode], (  # (ClientConn.connection_made
                    len(held), log[-2000:])  # compares frontend.current with bal.maxconn)
                assert len(answers) >= 150 - EFFECTIVE[mode]
                slow = [took for took, _ in answers if took >= 1.0]
                assert not slow, f"{len(slow)} turned away only after {max(slow):.2f} s"
                if mode == "http":
                    bad = [a for _, a in answers if not (
                        a.startswith(b"HTTP/1.1 503 ") and b"\r\nConnection: close\r\n" in a)]
                    assert not bad, (len(bad), bad[:3], log[-2000:])
                else:  # TCP has no words for it: the connection is closed
                    assert all(a == b"" for _, a in answers)
                # with all that held: several check rounds, the servers stay UP, the
                # admin page answers, and more newcomers are still turned away fast
                until = time.monotonic() + 1.5
                while time.monotonic() < until:
                    assert servers_up(admin), stats(admin)["servers"]
                    more, refused = flood(r.port, 3, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    assert not more and all(took < 1.0 for took, _ in refused)
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/", timeout=2) as page:
                    assert page.status == 200 and b"web1" in page.read()
                snap = stats(admin)
                assert snap["frontend"]["maxconn"] == EFFECTIVE[mode]
                assert snap["frontend"]["fd_exhausted"] == 0
            finally:
                for s in held:
                    s.close()
            wait_until(lambda: stats(admin)["frontend"]["current"] == 0, 5,
                       "the held connections gone")
            for _ in range(4):
                with socket.create_connection(("127.0.0.1", r.port), timeout=3) as s:
                    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    answer = drain(s)
                assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
                assert answer.endswith((b"web0\n", b"web1\n"))
            assert servers_up(admin)
            log = r.log.read_text()
            assert (f"event=maxconn_limited maxconn=20000 effective={EFFECTIVE[mode]} "
                    f"fd_limit={NOFILE}") in log
            assert "event=maxconn_reached" in log and "server_down" not in log
        finally:
            r.stop()


def test_checks_that_find_no_descriptor_left_are_inconclusive(
        pair: list[Backend], tmp_path: Path) -> None:
    """Idle admin connections (the admin listener has no limit of its own) take every
    descriptor: the checks cannot open a socket. That is the balancer's trouble, not the
    servers': they stay UP, and it is logged."""
    admin = free_port()
    sock = str(tmp_path / "lb.sock")
    with running(tmp_path, pair, nofile=60, admin_port=admin, socket_path=sock,
                 extra=EXTRA) as r:
        wait_until(lambda: admin_answers(admin), 5, "the admin port answering")
        wait_until(lambda: servers_up(admin), 5, "both servers UP")
        hogs = []
        try:
            for _ in range(80):  # more than the limit: the last ones are reset
                hogs.append(socket.create_connection(("127.0.0.1", admin), timeout=2))
            wait_until(lambda: not admin_answers(admin), 5, "the balancer out of descriptors")
            time.sleep(1.0)  # ten check intervals (fall = 2), all without a descriptor
            assert not admin_answers(admin), "the balancer had descriptors again"
        finally:
            for s in hogs:
                s.close()
        wait_until(lambda: admin_answers(admin), 5, "the admin page back")
        snap = json.loads(send(sock, "show stat json"))
        assert all(s["state"] == "UP" and s["downs"] == 0 and s["checks_failed"] == 0
                   for s in snap["servers"]), snap["servers"]
        assert snap["frontend"]["fd_exhausted"] >= 2
        log = r.log.read_text()
        assert "server_down" not in log and "Too many open files" not in log
        lines = [ln for ln in log.splitlines() if "event=fd_exhausted" in ln]
        assert all("where=check" in ln for ln in lines)
        assert len(lines) <= 4  # once a second at most, for about 1 s


# --- balancerctl ----------------------------------------------------------------------

BAD_COMMANDS = [
    (["set", "server", "nope", "weight", "3"], "no server 'nope' (servers: web0, web1)"),
    (["set", "server", "web0", "weight", "abc"], "weight 'abc' is not a number"),
    (["set", "server", "web0", "weight", "²"], "weight '²' is not a number"),
    (["set", "server", "web0", "weight", "3.5"], "weight '3.5' is not a number"),
    (["set", "server", "web0", "weight", "257"], "weight 257 is out of range"),
    (["set", "server", "web0", "weight", "-1"], "weight -1 is out of range"),
    (["set", "server", "web0", "weight", "-5x"], "weight '-5x' is not a number"),
    (["set", "server", "web0", "state", "sleeping"], "unknown state 'sleeping'"),
    (["set", "server", "web0", "health", "sideways"], "unknown health 'sideways'"),
    (["set", "server", "web0", "colour", "red"], "unknown setting 'colour'"),
    (["set", "server", "web0", "weight"], "missing value: weight must be 0-256"),
    (["set", "server", "web0"], "missing what to set"),
    (["set", "server"], "missing server name"),
    (["set"], "missing argument"),
    (["set", "pool", "web0"], "cannot set 'pool'"),
    (["set", "server", "web0", "weight", "3", "4"], "unexpected '4' after weight 3"),
    (["frobnicate"], "unknown command 'frobnicate'"),
    (["show", "everything"], "unknown show command 'everything'"),
    (["help", "me"], "unknown command 'help me'"),
]


def ctl(sock: str, *words: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "balancer.ctl", "-s", sock, *words],
                          capture_output=True, text=True, timeout=10)


def test_balancerctl_says_why_a_command_is_refused_and_exits_1(
        pair: list[Backend], tmp_path: Path) -> None:
    sock = str(tmp_path / "lb.sock")
    port = free_port()
    text = config_text(port, pair, socket_path=sock, extra='[timeouts]\ndrain = 500\n')
    tcp = text.replace("[frontend]\n", '[frontend]\nmode = "tcp"\n', 1)  # no HTTP parsing
    r = Running(tmp_path, tcp, port).start()
    try:
        def settings() -> list[tuple[str, str, int]]:
            shown = ctl(sock, "show", "stat", "json")
            assert shown.returncode == 0 and shown.stderr == "", shown
            return [(s["name"], s["state"], s["weight"])
                    for s in json.loads(shown.stdout)["servers"]]

        assert settings() == [("web0", "UP", 1), ("web1", "UP", 1)]
        for words, reason in BAD_COMMANDS:
            p = ctl(sock, *words)
            assert (p.returncode, p.stdout) == (1, ""), (words, p)
            assert p.stderr.startswith("error: ") and reason in p.stderr, (words, p.stderr)
        assert settings() == [("web0", "UP", 1), ("web1", "UP", 1)]  # nothing changed
        assert r.alive() and "control_command_failed" not in r.log.read_text()
        good = ctl(sock, "set", "server", "web0", "weight", "7")
        assert (good.returncode, good.stdout, good.stderr) == (0, "server web0 weight 7\n", "")
        assert settings() == [("web0", "UP", 7), ("web1", "UP", 1)]
        nothing = ctl(sock)
        assert nothing.returncode == 1 and "no command" in nothing.stderr
        # without -s: the socket its config names (halab exec HOST -- balancerctl ...)
        found = subprocess.run([sys.executable, "-m", "balancer.ctl", "-f", str(r.path),
                                "show", "servers"], capture_output=True, text=True, timeout=10)
        assert (found.returncode, found.stderr) == (0, ""), found
        assert "web0" in found.stdout
    finally:
        r.stop()
    gone = ctl(sock, "show", "servers")
    assert gone.returncode == 2 and sock in gone.stderr
