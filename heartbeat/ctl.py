"""``hbctl``: talk to a running heartbeat daemon (like hb_standby / hb_takeover).

    hbctl [-s SOCKET | -f CONFIG] status [--json]
    hbctl standby      # hand the VIP over to a peer (it is never unowned)
    hbctl takeover     # take the VIP now
    hbctl events       # the latest events with timestamps
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from daemonkit import control

DEFAULT_CONFIG = "/etc/halab/heartbeat.toml"  # the daemon's own default
DEFAULT_SOCKET = "/run/halab/heartbeat.sock"


def socket_path(config: str = DEFAULT_CONFIG) -> str:
    """The socket the daemon's config names (``[cluster] control_socket``), else the default:
    how hbctl finds its daemon on any host without ``-s``."""
    return control.socket_in_config(config, "cluster", "control_socket", DEFAULT_SOCKET)


def ask(path: str, command: str, timeout: float = 5.0) -> Any:
    """The daemon's answer to one command, decoded (it answers in JSON)."""
    return json.loads(control.request(path, command, timeout))


def render_status(st: dict[str, Any]) -> str:
    lines = [f"{st['node']}: {st['state']} (priority {st['priority']}, "
             f"{st['in_state_s']:.1f} s), VIP {st['vip']} "
             f"{'held' if st['holds_vip'] else 'not held'} on {st['interface']}"]
    for p in st["peers"]:
        links = ", ".join(f"{k} {v}" for k, v in p["links"].items())
        heard = "never" if p["last_heard_ms"] is None else f"{p['last_heard_ms']} ms ago"
        lines.append(f"  peer {p['name']}: {p['state']} (priority {p['priority']}), "
                     f"{'alive' if p['alive'] else 'dead'}, heard {heard}; links: {links}")
    b = st["failover_budget_ms"]
    lines.append(f"  failover budget {b['total']} ms (detection {b['detection']}, tick "
                 f"{b['tick']}, VIP {b['vip_add']}, ARP {b['garp']})")
    dropped = {k: v for k, v in st["counters"].items() if k.startswith("dropped")}
    if dropped:
        lines.append(f"  dropped: {dropped}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="hbctl", description=__doc__.splitlines()[0])
    ap.add_argument("-s", "--socket", help="the daemon's control socket (default: the one "
                    f"its config names, else {DEFAULT_SOCKET})")
    ap.add_argument("-f", "--config", default=DEFAULT_CONFIG,
                    help="the daemon's config, where the socket is found (default: %(default)s)")
    ap.add_argument("command", choices=["status", "standby", "takeover", "events"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        args.socket = args.socket or socket_path(args.config)
    except (OSError, ValueError) as e:
        print(f"hbctl: {e}", file=sys.stderr)
        return 2
    try:
        answer = ask(args.socket, args.command)
    except (OSError, ValueError) as e:
        print(f"hbctl: {args.socket}: {e}", file=sys.stderr)
        return 2
    if isinstance(answer, dict) and "error" in answer:
        print(f"hbctl: {answer['error']}", file=sys.stderr)
        return 1
    if args.json or args.command != "status":
        print(json.dumps(answer, indent=2))
    else:
        sys.stdout.write(render_status(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
