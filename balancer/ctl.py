"""``balancerctl``: send runtime API commands to a running balancer.

    balancerctl [-s SOCKET | -f CONFIG] show servers
    balancerctl set server web0 state drain

The answer goes to stdout and the exit status is 0; an answer with an
``error: <reason>`` line (a bad command or value: nothing was changed) goes to
stderr and the exit status is 1, as is no answer at all. 2: the balancer's
socket cannot be reached.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from daemonkit import control

DEFAULT_CONFIG = "/etc/halab/balancer.toml"  # the daemon's own default
DEFAULT_SOCKET = "/run/halab/balancer.sock"


def socket_path(config: str = DEFAULT_CONFIG) -> str:
    """The socket the daemon's config names (``[global] admin_socket``), else the default:
    how balancerctl finds its daemon on any host without ``-s``."""
    return control.socket_in_config(config, "global", "admin_socket", DEFAULT_SOCKET)


def failed(answer: str) -> bool:
    """The balancer refused the command (or part of it, on one worker)."""
    return any(line.startswith("error:") for line in answer.splitlines())


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="balancerctl", description=__doc__.splitlines()[0])
    ap.add_argument("-s", "--socket", help="the daemon's control socket (default: the one "
                    f"its config names, else {DEFAULT_SOCKET})")
    ap.add_argument("-f", "--config", default=DEFAULT_CONFIG,
                    help="the daemon's config, where the socket is found (default: %(default)s)")
    # REMAINDER: the command's words go as they are, a value such as -1 or -5x included,
    # for the balancer to judge (and answer with its reason)
    ap.add_argument("command", nargs=argparse.REMAINDER, help="e.g. show servers")
    args = ap.parse_args(argv)
    try:
        args.socket = args.socket or socket_path(args.config)
    except (OSError, ValueError) as e:
        print(f"balancerctl: {e}", file=sys.stderr)
        return 2
    command = " ".join(args.command).strip()
    if not command:
        print("balancerctl: error: no command given (try: balancerctl help)", file=sys.stderr)
        return 1
    try:
        answer = control.request(args.socket, command)
    except OSError as e:
        print(f"balancerctl: {args.socket}: {e.strerror or e}", file=sys.stderr)
        return 2
    if not answer:
        print(f"balancerctl: error: no answer from the balancer to {command!r}",
              file=sys.stderr)
        return 1
    if failed(answer):
        sys.stderr.write(answer)
        return 1
    sys.stdout.write(answer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
