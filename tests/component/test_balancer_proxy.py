"""The balancer daemon as a real process on loopback, in front of real HTTP servers."""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemonkit.control import request as send
from harness.poll import wait_until

from .backends import Backend, Garbage, Running, config_text, free_port, raw, running


@pytest.fixture(scope="module")
def lb(pair: list[Backend], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("lb")
    with running(tmp, pair, admin_port=free_port(), socket_path=str(tmp / "lb.sock"),
                 extra="[timeouts]\nclient_header = 500\n") as r:
        yield r


def get(port: int, path: str = "/", method: str = "GET", body: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        h = headers or {}
        c.request(method, path, body=body, headers=h,
                  encode_chunked="chunked" in h.get("Transfer-Encoding", ""))
        r = c.getresponse()
        return r.status, r.read(), dict(r.getheaders())
    finally:
        c.close()


def test_round_robin_alternates_exactly(lb: Running) -> None:
    seen = [get(lb.port)[1].decode().strip() for _ in range(10)]
    assert seen in (["web0", "web1"] * 5, ["web1", "web0"] * 5)


def test_keep_alive_client_is_balanced_per_request(lb: Running) -> None:
    c = http.client.HTTPConnection("127.0.0.1", lb.port, timeout=5)
    seen = []
    for _ in range(6):
        c.request("GET", "/")
        seen.append(c.getresponse().read().decode().strip())
    c.close()
    assert seen[0::2] == [seen[0]] * 3 and seen[1::2] == [seen[1]] * 3 and seen[0] != seen[1]


def test_forwarded_headers_and_hop_by_hop(lb: Running) -> None:
    status, body, _ = get(lb.port, "/headers", headers={
        "X-Forwarded-For": "192.0.2.7", "Connection": "close, X-Secret", "X-Secret": "s",
        "Keep-Alive": "timeout=5", "X-Keep": "yes"})
    text = body.decode().lower()
    assert status == 200
    assert "x-forwarded-for: 192.0.2.7, 127.0.0.1" in text
    assert "x-forwarded-proto: http" in text
    assert "x-keep: yes" in text
    assert "x-secret" not in text and "keep-alive: timeout" not in text


def test_request_bodies_length_and_chunked(lb: Running) -> None:
    status, body, _ = get(lb.port, "/echo", "POST", b"hello world")
    assert (status, body) == (200, b"hello world")
    big = bytes(range(256)) * 800  # 200 KiB: more than the retry buffer
    assert get(lb.port, "/echo", "POST", big)[1] == big
    chunks = iter([b"ab", b"cd" * 1000, b"ef"])
    status, body, _ = get(lb.port, "/echo", "POST", chunks,  # type: ignore[arg-type]
                          headers={"Transfer-Encoding": "chunked"})
    assert (status, body) == (200, b"ab" + b"cd" * 1000 + b"ef")


def test_chunked_and_until_close_responses(lb: Running) -> None:
    status, body, h = get(lb.port, "/chunked")
    assert status == 200 and body in (b"web0-1,web0-2,web0-3", b"web1-1,web1-2,web1-3")
    assert h.get("Transfer-Encoding") == "chunked"
    status, body, h = get(lb.port, "/close")
    assert status == 200 and body.endswith(b" until close\n")
    # an HTTP/1.0 client gets the body delimited by close, never chunked
    resp = raw(lb.port, b"GET /chunked HTTP/1.0\r\n\r\n")
    head, _, body10 = resp.partition(b"\r\n\r\n")
    assert b"chunked" not in head.lower() and body10.endswith(b"-3")


def test_head_request(lb: Running) -> None:
    status, body, h = get(lb.port, "/", "HEAD")
    assert status == 200 and body == b"" and h["Content-Length"] == "5"
    assert get(lb.port)[0] == 200  # and the next request is fine


def test_pipelined_requests_answered_in_order(lb: Running) -> None:
    req = b"GET /status/201 HTTP/1.1\r\nHost: x\r\n\r\nGET /status/202 HTTP/1.1\r\nHost: x\r\n\r\n"
    req += b"GET /status/203 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    out = raw(lb.port, req, shut=False)
    codes = re.findall(rb"HTTP/1\.1 (\d{3}) ", out)
    assert codes == [b"201", b"202", b"203"]


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GARBAGE\r\n\r\n", b"400"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", b"400"),
    (b"GET / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", b"400"),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", b"414"),
    (b"GET / HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", b"431"),
])
def test_bad_requests_get_4xx_and_the_daemon_keeps_serving(
        lb: Running, request_bytes: bytes, status: bytes) -> None:
    out = raw(lb.port, request_bytes)
    assert out.split(b" ")[1] == status, out[:200]
    assert lb.alive() and get(lb.port)[0] == 200


def test_a_rejected_request_keeps_its_answer_when_more_bytes_follow(lb: Running) -> None:
    """Lingering close, as nginx and HAProxy do: the balancer answers 414 before the
    request has all arrived; the client's next bytes must not meet a closed socket
    (its RST would destroy the answer the client has not read yet: seen on the VMs,
    `nc` got nothing). The answer, then FIN; what follows is read and dropped."""
    s = socket.create_connection(("127.0.0.1", lb.port), timeout=5)
    try:
        s.sendall(b"GET /" + b"a" * 9000)  # over max_url_size: answered at once
        wait_until(lambda: s.recv(16, socket.MSG_PEEK), 5, "the 414 sent")
        s.sendall(b" HTTP/1.1\r\nHost: x\r\n\r\n")  # the rest comes after it
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(4096):
            out += chunk
    finally:
        s.close()
    assert out.startswith(b"HTTP/1.1 414 "), out[:100]
    assert lb.alive() and get(lb.port)[0] == 200


def test_slowloris_gets_408(lb: Running) -> None:
    t0 = time.monotonic()
    out = raw(lb.port, b"GET / HTTP/1.1\r\nHost: x\r\n", shut=False)  # never finishes
    assert out.startswith(b"HTTP/1.1 408")
    assert time.monotonic() - t0 < 3


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=1, max_size=300))
def test_fuzz_never_crashes(lb: Running, junk: bytes) -> None:
    out = raw(lb.port, junk, timeout=3)
    assert out == b"" or out.startswith(b"HTTP/1.1 ")
    assert lb.alive()


def test_fuzzed_request_lines_get_a_status(lb: Running) -> None:
    for line, status in ((b"GET\r\n\r\n", b"400"), (b"GET / HTTP/9.9\r\n\r\n", b"505"),
                         (b"\x00\x01\x02\r\n\r\n", b"400"),
                         (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", b"400")):
        out = raw(lb.port, line)
        assert out.startswith(b"HTTP/1.1 " + status + b" "), (line, out[:80])
    assert get(lb.port)[0] == 200


def test_stats_json_metrics_and_page(lb: Running) -> None:
    cfg = lb.path.read_text()
    admin = int(cfg.split('[admin]\nbind = "127.0.0.1:')[1].split('"')[0])
    snap = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats.json").read())
    assert [s["name"] for s in snap["servers"]] == ["web0", "web1"]
    assert all(s["state"] == "UP" for s in snap["servers"])
    assert snap["frontend"]["requests"] > 0
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics").read().decode()
    assert 'halab_balancer_server_up{server="web0"} 1.0' in metrics
    assert "halab_balancer_server_requests_total" in metrics
    page = urllib.request.urlopen(f"http://127.0.0.1:{admin}/").read().decode()
    assert "<table>" in page and "web1" in page


def test_runtime_api_drain_and_weight(lb: Running, tmp_path: Path) -> None:
    sock = lb.path.read_text().split('admin_socket = "')[1].split('"')[0]
    assert "web0" in send(sock, "show servers")
    assert send(sock, "set server web0 state drain") == "server web0 state drain\n"
    try:
        assert {get(lb.port)[1] for _ in range(6)} == {b"web1\n"}
        assert "DRAIN" in send(sock, "show servers")
    finally:
        send(sock, "set server web0 state ready")
    send(sock, "set server web0 weight 3")
    try:
        seen = [get(lb.port)[1] for _ in range(8)]
        assert seen.count(b"web0\n") == 6
    finally:
        send(sock, "set server web0 weight 1")
    assert send(sock, "set server nope state drain").startswith("error: no server 'nope'")
    assert send(sock, "set server web0 weight 999").startswith("error:")
    assert send(sock, "bogus").startswith("error: unknown command")


def test_refusing_server_costs_no_failed_request(tmp_path: Path) -> None:
    a, b = Backend("a").start(), Backend("b").start()
    try:
        with running(tmp_path, [a, b], socket_path=str(tmp_path / "s.sock")) as r:
            assert get(r.port)[0] == 200
            a.stop()
            t0 = time.monotonic()
            results = [get(r.port) for _ in range(40)]
            assert [s for s, _, _ in results] == [200] * 40
            assert {body for _, body, _ in results} == {b"b\n"}
            snap = json.loads(send(str(tmp_path / "s.sock"), "show stat json"))
            srv = {s["name"]: s for s in snap["servers"]}
            assert srv["a"]["state"] == "DOWN" and srv["a"]["retries"] >= 1
            assert time.monotonic() - t0 < 5
            a.start()  # same port: it rejoins after `rise` good checks
            wait_until(lambda: b"a\n" in {get(r.port)[1] for _ in range(2)}, 5, "a rejoining")
    finally:
        a.stop()
        b.stop()


def test_no_server_gives_a_clear_503(tmp_path: Path) -> None:
    gone = Backend("gone")  # never started: its port refuses
    with running(tmp_path, [gone]) as r:
        status, body, _ = get(r.port)
        assert status == 503 and body.startswith(b"503 Service Unavailable\n")
        assert b"no server is available" in body
        status, body, _ = get(r.port)  # now marked DOWN
        assert status == 503 and b"no server is available" in body
    assert "server gone: connection refused" in r.log.read_text() or \
        'reason="connection refused"' in r.log.read_text()


def test_every_server_down_is_tried_anyway(tmp_path: Path) -> None:
    """DOWN is a verdict that can be wrong: with every server DOWN but serving, the
    client is served (nginx's behaviour), and the attempts are counted and logged."""
    a, b = Backend("a").start(), Backend("b").start()
    sock = str(tmp_path / "s.sock")
    try:
        with running(tmp_path, [a, b], socket_path=sock,
                     extra="[health]\ncheck = \"none\"\n") as r:
            for name in ("a", "b"):
                send(sock, f"set server {name} health down")
            results = [get(r.port) for _ in range(6)]
            assert [st for st, _, _ in results] == [200] * 6
            assert {body for _, body, _ in results} == {b"a\n", b"b\n"}
            snap = json.loads(send(sock, "show stat json"))
            assert {s["state"] for s in snap["servers"]} == {"DOWN"}
            assert snap["frontend"]["last_resort"] == 6
            b.stop()  # a refusing one is skipped for the other within the request
            assert [get(r.port)[:2] for _ in range(4)] == [(200, b"a\n")] * 4
            a.stop()  # none answers: a clean 503 after each was tried once
            status, body, _ = get(r.port)
            assert status == 503 and b"no server is available" in body
        assert "all_servers_down" in r.log.read_text()
    finally:
        a.stop()
        b.stop()


def test_a_check_timing_out_on_a_server_that_serves_is_inconclusive(tmp_path: Path) -> None:
    """Checks slower than their timeout (a loaded host) do not take down servers that
    answer real traffic meanwhile; once the traffic stops, the same checks count."""
    a, b = Backend("a").start(), Backend("b").start()
    sock = str(tmp_path / "s.sock")
    slow_checks = '[health]\npath = "/slow?ms=300"\ntimeout = 100\ninter = 150\n'
    try:
        with running(tmp_path, [a, b], socket_path=sock, extra=slow_checks) as r:
            def servers() -> dict[str, dict[str, object]]:
                return {s["name"]: s for s in
                        json.loads(send(sock, "show stat json"))["servers"]}

            deadline = time.monotonic() + 1.5  # a client loop, bounded in time and count
            for _ in range(3000):
                assert get(r.port)[0] == 200
                if time.monotonic() > deadline:
                    break
            seen = servers()
            assert all(s["checks_failed"] >= 3 for s in seen.values()), seen
            assert all(s["state"] == "UP" and s["downs"] == 0 for s in seen.values()), seen
            assert "inconclusive" in str(seen["a"]["last_check"])
            wait_until(lambda: {s["state"] for s in servers().values()} == {"DOWN"}, 5,
                       "both DOWN once no traffic answers during their checks")
    finally:
        a.stop()
        b.stop()


def test_reload_keeps_the_listener_and_applies_weights(tmp_path: Path) -> None:
    a, b = Backend("a").start(), Backend("b").start()
    try:
        with running(tmp_path, [a, b]) as r:
            stop = threading.Event()
            failures: list[str] = []

            def load() -> None:
                while not stop.is_set():
                    try:
                        get(r.port)
                    except OSError as e:
                        failures.append(str(e))

            t = threading.Thread(target=load)
            t.start()
            text = r.path.read_text().replace('name = "a"\n', 'name = "a"\nweight = 4\n')
            r.path.write_text(text)
            r.signal(signal.SIGHUP)
            wait_until(lambda: "event=reloaded" in r.log.read_text(), 5, "a reload")
            r.path.write_text("broken = [")
            r.signal(signal.SIGHUP)
            wait_until(lambda: "event=reload_failed" in r.log.read_text(), 5, "a failed reload")
            stop.set()
            t.join()
            assert not failures
            seen = [get(r.port)[1] for _ in range(10)]
            assert seen.count(b"a\n") == 8  # weights 4:1, and the bad reload changed nothing
    finally:
        a.stop()
        b.stop()


def test_sigterm_finishes_requests_in_flight(tmp_path: Path) -> None:
    a = Backend("a").start()
    try:
        port = free_port()
        r = Running(tmp_path, config_text(port, [a]), port).start()
        result: list[tuple[int, bytes, dict[str, str]]] = []
        t = threading.Thread(target=lambda: result.append(get(r.port, "/slow?ms=500")))
        t.start()
        wait_until(lambda: a.hits > 0, 5, "the slow request at the server")
        r.signal(signal.SIGTERM)
        t.join()
        assert result and result[0][0] == 200 and result[0][1] == b"a\n"
        assert result[0][2].get("Connection") == "close"
        assert r.proc is not None and r.proc.wait(timeout=10) == 0
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1)
    finally:
        a.stop()


def test_tcp_mode_pipes_and_retries(tmp_path: Path) -> None:
    a, b = Backend("a").start(), Backend("b").start()
    try:
        with running(tmp_path, [a, b], extra='[health]\ncheck = "tcp"\n') as r:
            text = r.path.read_text().replace("[frontend]", '[frontend]\nmode = "tcp"')
            r.stop()
            tcp = Running(tmp_path, text, r.port).start()
            try:
                seen = [get(tcp.port)[1] for _ in range(4)]
                assert sorted(seen) == [b"a\n", b"a\n", b"b\n", b"b\n"]
                assert get(tcp.port, "/echo", "POST", b"x" * 100_000)[1] == b"x" * 100_000
                a.stop()
                assert [get(tcp.port)[0] for _ in range(10)] == [200] * 10
            finally:
                tcp.stop()
    finally:
        a.stop()
        b.stop()


def test_several_workers_share_listeners_state_and_commands(tmp_path: Path) -> None:
    a, b = Backend("a").start(), Backend("b").start()
    sock = str(tmp_path / "lb.sock")
    admin_port = free_port()
    try:
        with running(tmp_path, [a, b], socket_path=sock, admin_port=admin_port,
                     extra="", access_log=False) as r:
            text = r.path.read_text().replace("[global]\n", "[global]\nworkers = 2\n")
            r.stop()
            multi = Running(tmp_path, text, r.port).start()
            try:
                seen = {get(multi.port)[1] for _ in range(40)}
                assert seen == {b"a\n", b"b\n"}
                snap = json.loads(send(sock, "show stat json"))
                assert snap["workers"] == 2
                assert sum(s["requests"] for s in snap["servers"]) == 40
                stats = json.loads(urllib.request.urlopen(
                    f"http://127.0.0.1:{admin_port}/stats.json").read())
                assert stats["frontend"]["requests"] == 40
                # a command reaches every worker
                assert send(sock, "set server a state maint").startswith("server a state maint")
                assert {get(multi.port)[1] for _ in range(20)} == {b"b\n"}
                # reload through the master; SIGTERM stops master and workers
                multi.signal(signal.SIGHUP)
                wait_until(lambda: multi.log.read_text().count("event=reloaded") == 2, 5,
                           "both workers reloaded")
            finally:
                assert multi.stop() == 0
            assert "event=stopped" in multi.log.read_text()
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", multi.port), timeout=1)
    finally:
        a.stop()
        b.stop()


def test_server_timeout_gives_504(tmp_path: Path) -> None:
    a = Backend("a").start()
    try:
        with running(tmp_path, [a], extra="[timeouts]\nserver = 300\n") as r:
            status, body, _ = get(r.port, "/slow?ms=1500")
            assert status == 504 and b"server a: server timeout" in body
            assert get(r.port)[0] == 200
    finally:
        a.stop()


def test_garbage_response_gives_502(tmp_path: Path) -> None:
    g = Garbage()
    try:
        with running(tmp_path, [g], extra='[health]\ncheck = "tcp"\n') as r:  # type: ignore[list-item]
            status, body, _ = get(r.port)
            assert status == 502 and b"invalid response" in body
            assert r.alive()
    finally:
        g.stop()


def test_server_maxconn_queues_then_times_out(tmp_path: Path) -> None:
    a = Backend("a").start()
    try:
        with running(tmp_path, [a], extra="[timeouts]\nqueue = 3000\n",
                     server_extra={"a": "maxconn = 1\n"}) as r:
            out: list[tuple[int, bytes, dict[str, str]]] = []
            threads = [threading.Thread(target=lambda: out.append(get(r.port, "/slow?ms=300")))
                       for _ in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert [s for s, _, _ in out] == [200, 200, 200]  # one at a time, none lost
        with running(tmp_path, [a], extra="[timeouts]\nqueue = 100\n",
                     server_extra={"a": "maxconn = 1\n"}) as r:
            hits = a.hits
            slow = threading.Thread(target=lambda: get(r.port, "/slow?ms=800"))
            slow.start()
            wait_until(lambda: a.hits > hits, 5, "the slow request holding the only slot")
            status, body, _ = get(r.port)
            slow.join()
            assert status == 503 and b"all servers are busy" in body
    finally:
        a.stop()


def test_global_maxconn_turns_connections_away(tmp_path: Path) -> None:
    a = Backend("a").start()
    try:
        with running(tmp_path, [a], extra="") as r:
            text = r.path.read_text().replace("[global]\n", "[global]\nmaxconn = 1\n")
            r.stop()
            one = Running(tmp_path, text, r.port).start()
            try:
                deadline = time.monotonic() + 5
                while True:  # the start-up probe's connection may not be gone yet
                    held = socket.create_connection(("127.0.0.1", one.port))
                    held.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    if held.recv(100).startswith(b"HTTP/1.1 200"):
                        break
                    held.close()
                    assert time.monotonic() < deadline
                with held:
                    out = raw(one.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    assert out.startswith(b"HTTP/1.1 503") and b"too many connections" in out, \
                        (out[:200], one.log.read_text()[-500:])
                assert "event=maxconn_reached" in one.log.read_text()
            finally:
                one.stop()
    finally:
        a.stop()
