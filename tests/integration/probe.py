"""Real packets from inside a lab host: run as ``python probe.py ...`` on a host.

Clients print one word and exit 0:
  tcp ADDR PORT     open | refused | timeout | unreachable
  udp ADDR PORT     open (an echo came back) | refused (ICMP port unreachable)
                    | timeout (dropped, or nobody answered) | unreachable
Servers print ``ready`` once bound, then one JSON line per peer seen, and stop
by themselves after ``--seconds`` (every probe is bounded in time):
  tcp-listen PORT   accept and close
  udp-echo PORT     echo every datagram back
"""

from __future__ import annotations

import argparse
import errno
import json
import socket
import sys
import time

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


def serve(kind: str, port: int, seconds: float) -> None:
    stype = socket.SOCK_STREAM if kind == "tcp-listen" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, stype) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
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
    p.add_argument("kind", choices=["tcp", "udp", "tcp-listen", "udp-echo"])
    p.add_argument("args", nargs="+")
    p.add_argument("--timeout", type=float, default=1.0)
    p.add_argument("--seconds", type=float, default=60.0)
    a = p.parse_args()
    if a.kind in ("tcp", "udp"):
        addr, port = a.args[0], int(a.args[1])
        print(tcp(addr, port, a.timeout) if a.kind == "tcp" else udp(addr, port, a.timeout))
    else:
        serve(a.kind, int(a.args[0]), a.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
