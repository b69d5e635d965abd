"""The balancer in front of the lab's real nginx, attacked from the client: a request
cannot smuggle another past it, a body flood costs no memory, and slow clients are
never held against a web node. (The whole conformance and smuggling corpus runs on
loopback: tests/unit/test_balancer_smuggling.py; this is its part through the VIP.)"""

from __future__ import annotations

import subprocess
import time

import pytest

from balancer import config as balancer_config
from harness.traffic import ClientLoop
from lab.backend import Backend
from lab.system import env
from lab.topology import Topology
from provision.director import BALANCER_CONFIG

from .common import page, servers, vip_url

pytestmark = pytest.mark.integration


def nc(lab: Backend, topo: Topology, data: str) -> str:
    """``data`` (printf's syntax) sent raw to the VIP; what came back before it closed."""
    vip = f"{topo.vip.address} {topo.ports.http}"
    return lab.run(topo.clients[0].name, ["sh", "-c", f"printf '{data}' | nc -w 3 {vip}"],
                   check=False).text


def balancer_pid(lab: Backend, director: str) -> int:
    pid = next(s.pid for s in lab.services(director) if s.name == "balancer")
    assert pid is not None
    return pid


def kib(lab: Backend, director: str, pid: int, field: str) -> int:
    status = lab.run(director, ["cat", f"/proc/{pid}/status"]).text
    return int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith(field + ":")))


def errors(lab: Backend, director: str) -> dict[str, tuple[object, object, object]]:
    return {name: (s["state"], s["response_errors"], s["downs"])
            for name, s in servers(lab, director).items()}


def test_connection_header_cannot_smuggle_a_request(lab: Backend, topo: Topology,
                                                    healthy: str) -> None:
    # the attack: the body (51 bytes) is the start of a request for /admin
    attack = ("GET / HTTP/1.1\\r\\nHost: x\\r\\nConnection: content-length\\r\\n"
              "Content-Length: 51\\r\\n\\r\\n"
              "GET /admin HTTP/1.1\\r\\nX-Forwarded-For: 10.0.0.1\\r\\nX: ")
    assert nc(lab, topo, attack).startswith("HTTP/1.1 200 ")
    pages = {page(w.name) for w in topo.webs}
    for _ in range(2 * len(topo.webs)):  # a victim on each pooled server connection
        got = lab.run(topo.clients[0].name, ["curl", "-s", "--max-time", "5",
                                             "-H", "Cookie: s=VICTIM", vip_url(topo)]).text
        assert got.strip() in pages, got[:200]
    for w in topo.webs:  # nginx never saw the smuggled request as a request
        log = lab.read_file(w.name, f"{lab.paths(w.name).log}/nginx-access.log").decode()
        assert "/admin" not in log


@pytest.mark.parametrize(("raw", "status"), [
    # CL.TE and TE.CL (both framings at once), a duplicate Host, an obfuscated TE
    ("POST / HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 6\\r\\nTransfer-Encoding: chunked"
     "\\r\\n\\r\\n0\\r\\n\\r\\nG", "400"),
    ("POST / HTTP/1.1\\r\\nHost: x\\r\\nTransfer-Encoding: chunked\\r\\nContent-Length: 3"
     "\\r\\n\\r\\n8\\r\\nSMUGGLED\\r\\n0\\r\\n\\r\\n", "400"),
    ("GET / HTTP/1.1\\r\\nHost: x\\r\\nHost: y\\r\\n\\r\\n", "400"),
    ("POST / HTTP/1.1\\r\\nHost: x\\r\\nTransfer-Encoding: chunked, chunked\\r\\n\\r\\n"
     "0\\r\\n\\r\\n", "400"),
    ("POST / HTTP/1.1\\r\\nHost: x\\r\\nTransfer-Encoding: gzip, chunked\\r\\n\\r\\n"
     "0\\r\\n\\r\\n", "501"),
    ("GET / HTTP/2.0\\r\\nHost: x\\r\\n\\r\\n", "505"),
])
def test_ambiguous_requests_are_refused(lab: Backend, topo: Topology, healthy: str,
                                        raw: str, status: str) -> None:
    assert nc(lab, topo, raw).startswith(f"HTTP/1.1 {status} ")


FLOOD = """
import select, socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(b"POST / HTTP/1.1\\r\\nHost: x\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n")
chunk = b"%x\\r\\n" % 65536 + bytes(65536) + b"\\r\\n"
s.setblocking(False)
sent, got, pos, end = 0, b"", 0, time.monotonic() + 60
while sent < 300 << 20 and time.monotonic() < end:
    r, w, _ = select.select([s], [s], [], 1)
    try:
        if r:
            data = s.recv(65536)
            got += data
            if not data:
                break
        if w:
            n = s.send(chunk[pos:])
            pos = (pos + n) % len(chunk)
            sent += n
    except OSError:
        break
print(sent >> 20, got.split(b"\\r\\n", 1)[0].decode(errors="replace"))
"""


def test_a_body_flood_after_the_answer_costs_no_memory(lab: Backend, topo: Topology,
                                                       healthy: str) -> None:
    """nginx answers a chunked POST to a static page at once (405) and the client goes
    on sending, up to 300 MB. The balancer passes the answer on, reads and drops the
    rest for a bounded time, and closes: the worker's peak memory barely moves."""
    pid = balancer_pid(lab, healthy)
    lab.run(healthy, ["sh", "-c", f"echo 5 > /proc/{pid}/clear_refs"])  # resets VmHWM
    before = kib(lab, healthy, pid, "VmRSS")
    out = lab.run(topo.clients[0].name, [lab.python, "-c", FLOOD, str(topo.vip.address),
                                         str(topo.ports.http)], timeout=90).text.split()
    assert out[1:3] == ["HTTP/1.1", "405"], out  # the answer got through
    peak = kib(lab, healthy, pid, "VmHWM")
    assert peak - before <= 16 * 1024, f"worker grew from {before} to {peak} KiB ({out[0]} MB)"
    assert balancer_pid(lab, healthy) == pid


def test_slow_uploads_past_the_server_timeout_make_no_server_down(
        lab: Backend, topo: Topology, healthy: str) -> None:
    """Four uploads trickle their bodies (a byte every 3 s, never finished) for longer
    than the server timeout, while a client loops through the VIP. A slow client is
    not a slow server: nobody is DOWN, nothing is counted against a web node, and no
    other request fails."""
    timeout = balancer_config.loads(lab.read_file(healthy, BALANCER_CONFIG).decode(),
                                    BALANCER_CONFIG).timeouts.server
    hold = timeout + 4
    before = errors(lab, healthy)
    trickle = ("(printf 'POST / HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 1000\\r\\n\\r\\n'; "
               f"for i in $(seq {int(hold // 3) + 1}); do sleep 3; printf x; done) "
               f"| nc -q 0 -w {int(hold) + 10} {topo.vip.address} {topo.ports.http}")
    uploads = [subprocess.Popen(lab.command(topo.clients[0].name, ["sh", "-c", trickle]),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=env()) for _ in range(4)]
    loop = ClientLoop(lab, topo.clients[0].name, vip_url(topo), count=100_000, gap_ms=100)
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < hold:  # the loop's results pace this wait
            loop.read(len(loop.results) + 1)
            assert not ClientLoop.failures(loop.results), loop.results[-1]
            assert loop.proc.poll() is None
    finally:
        loop.stop()
        for u in uploads:
            u.kill()
            u.wait(timeout=10)
    assert errors(lab, healthy) == before
