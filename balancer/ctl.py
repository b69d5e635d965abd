"""``balancerctl``: send runtime API commands to a running balancer.

    balancerctl [-s SOCKET] show servers
    balancerctl set server web0 state drain
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Sequence

DEFAULT_SOCKET = "/run/halab/balancer.sock"


def send(path: str, command: str, timeout: float = 5.0) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(command.strip().encode() + b"\n")
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
    return b"".join(chunks).decode(errors="replace")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="balancerctl", description=__doc__.splitlines()[0])
    ap.add_argument("-s", "--socket", default=DEFAULT_SOCKET)
    ap.add_argument("command", nargs="+", help="e.g. show servers")
    args = ap.parse_args(argv)
    try:
        answer = send(args.socket, " ".join(args.command))
    except OSError as e:
        print(f"balancerctl: {args.socket}: {e.strerror or e}", file=sys.stderr)
        return 2
    sys.stdout.write(answer)
    return 1 if answer.startswith("error:") else 0


if __name__ == "__main__":
    sys.exit(main())
