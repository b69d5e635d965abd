"""A graceful takeover's forwarding, LVS-DR style: set up before taking over from a
master that stands by (the ``handover_prepare`` commands, then conntrack, iptables and
an ip rule), and torn down when the handover window closes.

TCP packets to the VIP that belong to no connection known here (mid-stream, not a SYN)
are routed to the old master over the handover link, which keeps the VIP as a silent
local address until its connections are done: no open connection is reset.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemonkit.log import EventLog
from heartbeat import commands, config

HANDOVER_MARK = "0x68"  # packets of the old master's connections
HANDOVER_TABLE = "168"
HANDOVER_CHAIN = "HALAB-HANDOVER"


class Handover:
    def __init__(self, cfg: config.Config, log: EventLog) -> None:
        self.cfg = cfg  # the daemon's, replaced on reload
        self.log = log
        self.iface = ""  # the VIP's interface, known at start
        self._fwd_handle: asyncio.TimerHandle | None = None
        self._fwd_on = False  # prepare set the forwarding up (stop undoes it)

    def prepare(self, peer: str, ready: Callable[[str], None]) -> None:
        """Route packets of connections not known here to ``peer`` over the handover
        link; ``ready(peer)`` when done (or failed: the takeover goes on).

        The forwarding for a graceful takeover, set up in a worker thread while this
        node, still BACKUP, keeps sending heartbeats: each command costs ~0.1 s on an
        emulated VM, and a takeover that blocked the loop for them outlasted deadtime
        there (the standing-by master gave up on us). The FSM hears when it is ready."""
        loop = asyncio.get_running_loop()
        addr = self.cfg.peer_address(peer, self.cfg.handover_link)
        prepare = list(self.cfg.handover_prepare)
        ran: list[dict[str, Any]] = []  # what the prepare commands did, logged here

        def work() -> str | None:
            ran.extend(self._run_prepare(prepare))
            return self._setup(addr)

        def done(f: asyncio.Future[str | None]) -> None:
            for fields in ran:
                self.log.log(20 if fields["status"] == 0 else 40, "handover_prepare", **fields)
            try:
                error = f.result()
            except Exception as e:  # an OSError starting a command: still hand over
                error = f"{type(e).__name__}: {e}"
            self._ready(peer, addr, error)
            ready(peer)

        loop.run_in_executor(None, work).add_done_callback(done)

    def _run_prepare(self, argvs: list[tuple[str, ...]]) -> list[dict[str, Any]]:
        """The configured ``handover_prepare`` commands, in order, each within the
        handover window (what will serve warms up while the old master still serves);
        what each did, for the log. A failure does not stop the takeover."""
        out = []
        for argv in argvs:
            o = commands.outcome(argv, timeout=max(self.cfg.handover_window, 1.0))
            out.append({"argv": o.argv, "status": o.status, "ms": o.ms,
                        "stderr": o.error or o.stderr})
        return out

    def _setup(self, addr: str) -> str | None:
        """The commands of the forwarding (three: conntrack, one iptables-restore, one
        ip batch); returns what failed, or None."""
        m, t, c, vip = HANDOVER_MARK, HANDOVER_TABLE, HANDOVER_CHAIN, f"{self.cfg.vip.ip}/32"
        unknown = "-p tcp ! --syn -m conntrack --ctstate NEW,INVALID"
        # Connections this node once had to the VIP (an earlier time as master) may
        # linger in conntrack (TIME_WAIT); a client port reused now would then not
        # look "unknown" and would be answered with a reset instead of passed on.
        commands.run(("conntrack", "-D", "-p", "tcp", "-d", str(self.cfg.vip.ip)))
        rules = (f"*mangle\n:{c} - [0:0]\n"
                 f"-A {c} -m connmark --mark {m} -j MARK --set-mark {m}\n"
                 f"-A {c} {unknown} -j CONNMARK --set-mark {m}\n"
                 f"-A {c} {unknown} -j MARK --set-mark {m}\n"
                 f"-I PREROUTING 1 -d {vip} -p tcp -j {c}\nCOMMIT\n"
                 f"*filter\n-I FORWARD 1 -m mark --mark {m} -j ACCEPT\nCOMMIT\n")
        # the VIP is local here now: the `local` table (rule 0) would claim the marked
        # packets before any other rule, so it moves behind ours
        routes = (f"route replace default via {addr} table {t}\n"
                  f"rule add pref 10 fwmark {m} lookup {t}\n"
                  "rule add pref 20 lookup local\nrule del pref 0 lookup local\n")
        for argv, data in ((("iptables-restore", "--noflush"), rules),
                           (("ip", "-batch", "-"), routes)):
            res = commands.run(argv, input=data.encode())
            if res.returncode != 0:
                return f"{' '.join(argv)}: {res.stderr.decode().strip()}"
        return None

    def _ready(self, peer: str, addr: str, error: str | None) -> None:
        if error is not None:
            self.log.error("handover_setup_failed", reason=error)
            self.stop(quiet=True, leftovers=True)  # how far it got: unknown
            return
        self._fwd_on = True
        self._forwarding(True)
        self.log.warning("handover_forwarding", peer=peer, via=addr,
                         window_s=self.cfg.handover_window)
        if self._fwd_handle is not None:
            self._fwd_handle.cancel()
        self._fwd_handle = asyncio.get_running_loop().call_later(
            self.cfg.handover_window, self.stop)

    def _forwarding(self, on: bool) -> None:
        with contextlib.suppress(OSError):
            Path(f"/proc/sys/net/ipv4/conf/{self.iface}/forwarding").write_text(
                "1" if on else "0")

    def stop(self, quiet: bool = False, leftovers: bool = False) -> None:
        """Undo ``prepare``: two commands when it was set up here, none when it was not
        (a release after a plain failover). ``leftovers``: also when this process did
        not set it up (at start, after a crash), rule by rule."""
        if self._fwd_handle is not None:
            self._fwd_handle.cancel()
        self._fwd_handle = None
        self._forwarding(False)
        was_on, self._fwd_on = self._fwd_on, False
        if not (was_on or leftovers):
            return
        m, t, c, vip = HANDOVER_MARK, HANDOVER_TABLE, HANDOVER_CHAIN, f"{self.cfg.vip.ip}/32"
        # the local table back in front (before its stand-in at pref 20 goes)
        local = "rule add pref 0 lookup local\n"
        if not was_on and commands.run(("ip", "rule", "show", "pref", "0")).stdout.strip():
            local = ""  # ip allows the same rule twice
        commands.run(("ip", "-force", "-batch", "-"), input=(
            f"{local}rule del pref 20 lookup local\nrule del pref 10 fwmark {m} lookup {t}\n"
            f"route flush table {t}\n").encode())
        drop = (f"*mangle\n-D PREROUTING -d {vip} -p tcp -j {c}\n-F {c}\n-X {c}\nCOMMIT\n"
                f"*filter\n-D FORWARD -m mark --mark {m} -j ACCEPT\nCOMMIT\n")
        existed = commands.run(("iptables-restore", "--noflush"),
                               input=drop.encode()).returncode == 0
        if not existed:  # partly there, or not at all: one rule at a time
            mangle = ("iptables", "-t", "mangle")
            for argv in ((*mangle, "-D", "PREROUTING", "-d", vip, "-p", "tcp", "-j", c),
                         (*mangle, "-F", c), (*mangle, "-X", c),
                         ("iptables", "-D", "FORWARD", "-m", "mark", "--mark", m, "-j", "ACCEPT")):
                commands.run(argv)
        if was_on and not quiet:
            self.log.info("handover_done")
