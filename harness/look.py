"""A director as it sees itself, once a second, for as long as asked: run on a director
as ``python -m harness.look --seconds N`` (halab being installed there), it prints one
JSON line at once, then one on every whole second: ``{"t" (epoch s), "addr" (``ip -j -4
addr show``), "heartbeat" (the daemon's status), "balancer" (its ``show stat json``)}``,
a daemon that does not answer being ``null``.

One process and one SSH session for the whole view (``halab watch``): starting the two
daemons' command-line tools every second takes seconds under software emulation, asking
their control sockets from a process already running takes milliseconds. It stops by
itself after ``--seconds``, and when its reader has gone (its next line cannot be
written).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from balancer import ctl as balancerctl
from daemonkit import control
from heartbeat import ctl as hbctl

INTERVAL = 1.0
ASK_TIMEOUT = 0.5  # a daemon that takes longer is shown as not answering, this second


def _ask(socket_of: Callable[[str], str], config: str, command: str) -> Any:
    try:
        return json.loads(control.request(socket_of(config), command, ASK_TIMEOUT))
    except (OSError, ValueError):
        return None


def look(heartbeat_config: str = hbctl.DEFAULT_CONFIG,
         balancer_config: str = balancerctl.DEFAULT_CONFIG) -> dict[str, Any]:
    t = time.time()
    try:
        addr = subprocess.run(["ip", "-j", "-4", "addr", "show"], capture_output=True,
                              timeout=ASK_TIMEOUT * 4, check=False).stdout.decode()
    except (OSError, subprocess.TimeoutExpired):
        addr = ""
    return {"t": round(t, 3), "addr": addr,
            "heartbeat": _ask(hbctl.socket_path, heartbeat_config, "status"),
            "balancer": _ask(balancerctl.socket_path, balancer_config, "show stat json")}


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m harness.look", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, required=True, help="stop after this long")
    p.add_argument("--heartbeat-config", default=hbctl.DEFAULT_CONFIG,
                   help="where the heartbeat's socket is named (default: %(default)s)")
    p.add_argument("--balancer-config", default=balancerctl.DEFAULT_CONFIG,
                   help="where the balancer's socket is named (default: %(default)s)")
    a = p.parse_args()
    end = time.monotonic() + a.seconds
    while time.monotonic() < end:
        try:
            print(json.dumps(look(a.heartbeat_config, a.balancer_config)), flush=True)
        except BrokenPipeError:  # the reader went away (as Python's docs say to leave)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        time.sleep(INTERVAL - time.time() % INTERVAL)  # on the whole second: every
        # director looks at the same moments, their lines can be read together
    return 0


if __name__ == "__main__":
    sys.exit(main())
