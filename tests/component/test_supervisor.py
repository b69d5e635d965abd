"""The supervisor with real processes on this machine (no root, no network namespace)."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from harness.poll import wait_until
from lab.backend import ServiceSpec
from lab.backends.netns.supervisor import Supervisor, listening_ports
from lab.errors import HalabError
from lab.system import alive, proc_info, session_members


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def identity(argv: Sequence[str]) -> list[str]:
    return list(argv)


@pytest.fixture
def sup(tmp_path: Path) -> Iterator[Supervisor]:
    s = Supervisor("h1", tmp_path / "run", tmp_path / "log", identity)
    yield s
    s.stop_all()


def listener(port: int) -> ServiceSpec:
    code = (
        "import socket,signal,sys;"
        "signal.signal(signal.SIGTERM, lambda *a: (print('bye', flush=True), sys.exit(0)));"
        f"s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
        f"s.bind(('127.0.0.1',{port}));s.listen();print('listening',flush=True);"
        "signal.pause()"
    )
    return ServiceSpec("listener", (sys.executable, "-c", code), listens=(port,))


def forking_listener(port: int) -> ServiceSpec:
    """Like an nginx master: it listens, then forks a worker that holds the socket."""
    code = (
        "import os,socket,signal;"
        f"s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
        f"s.bind(('127.0.0.1',{port}));s.listen();os.fork();signal.pause()"
    )
    return ServiceSpec("forking", (sys.executable, "-c", code), listens=(port,))


def test_start_waits_until_listening(sup: Supervisor) -> None:
    port = free_port()
    st = sup.start(listener(port))
    assert st.running and st.pid
    assert port in listening_ports(st.pid)
    assert sup.state("listener").running
    assert "listening" in sup.log("listener").read_text()


def test_start_is_idempotent(sup: Supervisor) -> None:
    port = free_port()
    a = sup.start(listener(port))
    b = sup.start(listener(port))
    assert a.pid == b.pid


def test_start_restarts_what_runs_from_other_inputs(sup: Supervisor) -> None:
    """Provisioning again: same inputs, left running; changed config, restarted."""
    port = free_port()
    a = sup.start(replace(listener(port), inputs="config v1"))
    assert sup.start(replace(listener(port), inputs="config v1")).pid == a.pid
    b = sup.start(replace(listener(port), inputs="config v2"))
    assert b.running and b.pid != a.pid and a.pid is not None and not alive(a.pid)
    assert sup.spec("listener").inputs == "config v2"
    assert sup.restart("listener").pid not in (a.pid, b.pid)


def test_stop_is_graceful_and_removes_pidfile(sup: Supervisor) -> None:
    st = sup.start(listener(free_port()))
    assert st.pid is not None
    sup.stop("listener")
    assert not alive(st.pid)
    assert not sup.pidfile("listener").exists()
    assert "bye" in sup.log("listener").read_text()  # it got SIGTERM, not SIGKILL
    assert sup.state("listener").detail == "stopped"
    assert sup.names() == ["listener"]  # still known, so it can be restarted


def test_sigkill_after_deadline(sup: Supervisor) -> None:
    code = "import signal;signal.signal(signal.SIGTERM, signal.SIG_IGN);signal.pause()"
    st = sup.start(ServiceSpec("stubborn", (sys.executable, "-c", code)))
    assert st.pid is not None
    sup.stop("stubborn", timeout=0.3)
    assert not alive(st.pid)


def test_restart_gives_a_new_pid(sup: Supervisor) -> None:
    a = sup.start(listener(free_port()))
    b = sup.restart("listener")
    assert b.running and a.pid != b.pid and a.pid is not None
    assert not alive(a.pid)


def test_restart_of_unknown_service(sup: Supervisor) -> None:
    with pytest.raises(HalabError, match="no service 'nope'"):
        sup.restart("nope")


def test_exit_at_start_reports_log(sup: Supervisor) -> None:
    spec = ServiceSpec("broken", (sys.executable, "-c", "print('bad config');raise SystemExit(3)"),
                       listens=(free_port(),))
    with pytest.raises(HalabError, match=r"broken exited with status 3 at start: bad config"):
        sup.start(spec)
    assert not sup.pidfile("broken").exists()


def test_not_listening_in_time_is_an_error(sup: Supervisor) -> None:
    spec = ServiceSpec("deaf", (sys.executable, "-c", "import signal;signal.pause()"),
                       listens=(free_port(),))
    with pytest.raises(HalabError, match="did not listen on port"):
        sup.start(spec, ready_timeout=0.3)
    assert not sup.state("deaf").running


def test_dead_process_is_reported(sup: Supervisor) -> None:
    st = sup.start(ServiceSpec("short", (sys.executable, "-c", "pass")))
    assert st.pid is not None
    os.waitpid(st.pid, 0)
    assert sup.state("short").detail.startswith("dead")


def test_recycled_pid_is_never_signalled(sup: Supervisor, tmp_path: Path) -> None:
    # A pidfile naming a live process with another start time is not ours.
    me = proc_info(os.getpid())
    assert me is not None
    sup.run_dir.mkdir(parents=True, exist_ok=True)
    sup.specfile("ghost").write_text(json.dumps({"argv": ["x"], "listens": []}))
    sup.pidfile("ghost").write_text(json.dumps({"pid": os.getpid(), "start": me.start + 1}))
    assert not sup.state("ghost").running
    sup.stop("ghost")  # must not kill this test process
    assert alive(os.getpid())


def test_stop_all_in_reverse_start_order(sup: Supervisor) -> None:
    sup.start(listener(free_port()))
    sup.start(ServiceSpec("second", (sys.executable, "-c", "import signal;signal.pause()")))
    assert sup.names() == ["listener", "second"]
    sup.stop_all()
    assert not any(s.running for s in sup.states())


def test_a_killed_main_process_leaves_no_worker_at_start_or_stop(sup: Supervisor) -> None:
    """As systemd's KillMode=control-group: the workers of a main process that was
    SIGKILLed (a fault) go with it when the service is started or stopped again."""
    port = free_port()
    spec = forking_listener(port)
    for again in (sup.start, lambda spec: sup.stop(spec.name)):
        pid = sup.start(spec).pid
        assert pid is not None
        worker = wait_until(lambda: session_members(pid), 5.0, "the worker forked")[0]  # noqa: B023
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        assert not sup.state(spec.name).running
        assert alive(worker.pid, worker.start) and port in listening_ports(worker.pid)
        again(spec)  # a start binds the port anew: the worker must be gone first
        assert not alive(worker.pid, worker.start)
