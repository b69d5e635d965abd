"""Real packets from inside a lab host: run as ``python -m harness.probe ...`` on a host.

Clients print one word and exit 0:
  tcp ADDR PORT     open | refused | timeout | unreachable
  udp ADDR PORT     open (an echo came back) | refused (ICMP port unreachable)
                    | timeout (dropped, or nobody answered) | unreachable
Servers print ``ready`` once bound, then one JSON line per peer seen, and stop
by themselves after ``--seconds`` (every probe is bounded in time):
  tcp-listen PORT   accept and close (on --addr, default all addresses)
  udp-echo PORT     echo every datagram back
A client loop, bounded by --count:
  http-loop URL     sequential GETs, a new TCP connection each, one JSON line per
                    request: {"i", "t" (start, epoch s), "ms", "status", "body", "err",
                    "port" (the client's local port)}
  http-keepalive URL  the same over one persistent HTTP/1.1 connection (a new one
                    only after an error): one connection, one local port
"""

from __future__ import annotations

import argparse
import errno
import http.client
import json
import socket
import sys
import time
import urllib.parse

PAYLOAD = b"halab-probe"


def classify(err: OSError) -> str:
    if err.errno == errno.ECONNREFUSED:
        return "refused"
    if err.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return "unreachable"
    if isinstance(err, TimeoutError) or err.errno == errno.ETIMEDOUT:
        return "timeout"
    return f"error:{errno.errorcode.get(err.errno or 0, err.errno)}"


def tcp(addr: str, port: int, timeout: float) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect((addr, port))
        except OSError as e:
            return classify(e)
    return "open"


def udp(addr: str, port: int, timeout: float) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.connect((addr, port))
            s.send(PAYLOAD)
            data = s.recv(2048)
        except OSError as e:
            return classify(e)
    return "open" if data == PAYLOAD else "garbage"


def http_loop(url: str, count: int, gap: float, timeout: float,
              connect_timeout: float | None = None, keepalive: bool = False) -> None:
    """One JSON line per request; a new connection each, or one reused (``keepalive``)."""
    u = urllib.parse.urlsplit(url)
    conn: http.client.HTTPConnection | None = None
    for i in range(count):
        t = time.time()
        t0 = time.monotonic()
        rec: dict[str, object] = {"i": i, "t": t}
        if conn is None:
            conn = http.client.HTTPConnection(u.hostname or "", u.port or 80,
                                              timeout=connect_timeout or timeout)
        try:
            if conn.sock is None:
                conn.connect()
            # the rest of the request has what is left of the timeout
            conn.sock.settimeout(max(timeout - (time.monotonic() - t0), 0.001))
            conn.request("GET", u.path or "/")
            resp = conn.getresponse()
            rec["status"] = resp.status
            rec["body"] = resp.read().decode(errors="replace").strip()
            rec["port"] = conn.sock.getsockname()[1]
        except (OSError, http.client.HTTPException) as e:
            rec["err"] = f"{type(e).__name__}: {e}"
            conn.close()
            conn = None
        if not keepalive and conn is not None:
            conn.close()
            conn = None
        rec["ms"] = round((time.monotonic() - t0) * 1000, 2)
        print(json.dumps(rec), flush=True)
        time.sleep(gap)
    if conn is not None:
        conn.close()


def serve(kind: str, port: int, seconds: float, addr: str = "0.0.0.0") -> None:
    stype = socket.SOCK_STREAM if kind == "tcp-listen" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, stype) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
        if stype == socket.SOCK_STREAM:
            s.listen(64)
        print("ready", flush=True)
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                if stype == socket.SOCK_STREAM:
                    conn, peer = s.accept()
                    conn.close()
                else:
                    data, peer = s.recvfrom(2048)
                    s.sendto(data, peer)
            except TimeoutError:
                break
            print(json.dumps({"peer": peer[0]}), flush=True)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["tcp", "udp", "tcp-listen", "udp-echo", "http-loop",
                                    "http-keepalive"])
    p.add_argument("args", nargs="+")
    p.add_argument("--timeout", type=float, default=1.0)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--addr", default="0.0.0.0")
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--gap-ms", type=float, default=5.0)
    p.add_argument("--connect-timeout", type=float, default=None)
    a = p.parse_args()
    if a.kind in ("tcp", "udp"):
        addr, port = a.args[0], int(a.args[1])
        print(tcp(addr, port, a.timeout) if a.kind == "tcp" else udp(addr, port, a.timeout))
    elif a.kind == "http-loop":
        http_loop(a.args[0], min(a.count, 100_000), a.gap_ms / 1000, a.timeout,
                  a.connect_timeout)
    elif a.kind == "http-keepalive":
        http_loop(a.args[0], min(a.count, 100_000), a.gap_ms / 1000, a.timeout,
                  keepalive=True)
    else:
        serve(a.kind, int(a.args[0]), a.seconds, a.addr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
