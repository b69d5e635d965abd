"""``python -m harness.look``, what ``halab watch`` reads from each director over one
session, against a real balancer on loopback: a line a second with the balancer's
servers and the host's addresses, a daemon that does not answer is null, and it stops
by itself: after ``--seconds``, and as soon as its reader has gone."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from harness.traffic import vip_state

from .backends import Backend, Running, config_text, free_port


def look(tmp: Path, balancer_config: Path, seconds: float) -> subprocess.Popen[str]:
    hb = tmp / "heartbeat.toml"  # names a socket nobody listens on: no heartbeat here
    hb.write_text(f'[cluster]\ncontrol_socket = "{tmp / "hb.sock"}"\n')
    return subprocess.Popen([sys.executable, "-m", "harness.look", "--seconds", str(seconds),
                             "--heartbeat-config", str(hb),
                             "--balancer-config", str(balancer_config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_line_a_second_until_its_time_is_up(pair: list[Backend], tmp_path: Path) -> None:
    port = free_port()
    r = Running(tmp_path, config_text(port, pair, socket_path=str(tmp_path / "lb.sock")),
                port).start()
    try:
        t0 = time.monotonic()
        proc = look(tmp_path, r.path, seconds=3.5)
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        r.stop()
    assert (proc.returncode, err) == (0, "")
    lines = [json.loads(line) for line in out.splitlines()]
    assert 4 <= len(lines) <= 5 and took < 10, (len(lines), took)
    # one at once, then one on every whole second (every director at the same moments)
    assert all(abs(line["t"] - round(line["t"])) < 0.25 for line in lines[1:]), lines
    assert len({round(line["t"]) for line in lines[1:]}) == len(lines) - 1
    for line in lines:
        assert line["heartbeat"] is None
        assert [(s["name"], s["state"]) for s in line["balancer"]["servers"]] == \
            [("web0", "UP"), ("web1", "UP")]
        assert vip_state(line["addr"].encode(), "127.0.0.1") == "silent"  # on lo only


def test_it_stops_when_its_reader_has_gone(tmp_path: Path) -> None:
    lb = tmp_path / "balancer.toml"
    lb.write_text(f'[global]\nadmin_socket = "{tmp_path / "lb.sock"}"\n')
    proc = look(tmp_path, lb, seconds=60)
    assert proc.stdout is not None and proc.stderr is not None
    first = json.loads(proc.stdout.readline())
    assert first["balancer"] is None and first["heartbeat"] is None  # nobody answers
    proc.stdout.close()
    assert proc.wait(timeout=10) == 0  # its next line found nobody to read it
    assert proc.stderr.read() == ""
