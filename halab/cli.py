"""The ``halab`` command: bring the lab up and down, look inside, run things on hosts."""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

from rich.console import Console

from halab import faultcmd
from halab.status import gather, render
from lab import topology as topo_mod
from lab.backend import Backend
from lab.backends import KINDS, make_backend
from lab.errors import HalabError
from lab.system import env
from lab.topology import Role

if TYPE_CHECKING:
    from lab.backends.vagrant import VagrantBackend, readiness

console = Console()
RUN_ENV = "HALAB_VAGRANT_RUN"  # set by the Vagrantfile: which vagrant command runs us
_say = threading.Lock()


def say(line: str) -> None:
    """One plain line, shown at once (under Vagrant too, whose trigger's output is a pipe;
    rich would wrap it to 80 columns there), whole among the lines of other threads."""
    with _say:
        print(line, flush=True)


def _global_options(p: argparse.ArgumentParser, here: bool) -> None:
    """The options of every command, taken before or after the command's name
    (``halab --lab ssh status`` = ``halab status --lab ssh``). ``here``: the top level,
    which holds the defaults; after a command, one that is not given leaves them."""
    def default(value: str | None) -> str | None:
        return value if here else argparse.SUPPRESS

    p.add_argument("--topology", metavar="FILE",
                   default=default(os.environ.get("HALAB_TOPOLOGY")),
                   help="topology file (default: $HALAB_TOPOLOGY, else lab/topology.yaml)")
    p.add_argument("--lab", choices=KINDS,
                   default=default(os.environ.get("HALAB_LAB", "netns")),
                   help="lab backend (default: $HALAB_LAB or netns)")
    p.add_argument("--inventory", metavar="FILE",
                   default=default(os.environ.get("HALAB_INVENTORY")),
                   help="--lab ssh: how SSH reaches each host (default: $HALAB_INVENTORY)")


class _Version(argparse.Action):
    """``--version``: the installed halab's, looked up only when asked for (importing
    importlib.metadata costs every other command ~40 ms)."""

    def __init__(self, option_strings: Sequence[str], dest: str) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="show halab's version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("halab")
        except PackageNotFoundError:  # a checkout run without installing it
            found = "unknown (not installed)"
        print(f"halab {found}")  # (on stdout, as argparse's own version action)
        parser.exit()


def _watch_seconds(text: str) -> float:
    """``watch --seconds``: it always ends by itself, within a day at most."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 86_400:
        raise argparse.ArgumentTypeError(f"{text}: more than 0 and at most 86400 (a day)")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="halab",
        description="A reproducible high-availability, load-balanced website lab.",
    )
    p.add_argument("--version", action=_Version)
    _global_options(p, here=True)
    globals_after = argparse.ArgumentParser(add_help=False)
    _global_options(globals_after, here=False)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    add = functools.partial(sub.add_parser, parents=[globals_after])

    upp = add("up", help="create the hosts and networks, provision them (idempotent)")
    upp.add_argument("-v", "--verbose", action="store_true",
                     help="--lab vagrant: Vagrant's own output, not one row per VM")
    add("down", help="stop everything and remove every trace of the lab")
    pv = add("provision", help="provision the hosts that are up again, or those "
             "named (idempotent; Vagrant's trigger runs it per VM)")
    pv.add_argument("--host", action="append", dest="hosts", metavar="HOST",
                    help="only this host (repeatable)")
    pv.add_argument("--if-needed", action="store_true",
                    help="--lab vagrant: skip a host provisioned already on this VM, in "
                    "this boot, with this build and inputs (the trigger after `vagrant up`)")
    st = add("status", help="hosts, addresses and services")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    ck = add("check", help="validate a topology file and exit")
    ck.add_argument("file", nargs="?", help="topology file (default: --topology)")
    sk = add("stack", help="the stacks a director can run: halab stack list | check "
             "NAME|DIR (render each director's configs, run their checkers)")
    sk.add_argument("action", choices=["list", "check"])
    sk.add_argument("stack", nargs="?", help="check: a built-in stack's name or a folder")
    sk.add_argument("--out", type=Path, metavar="DIR",
                    help="check: keep the rendered files here (default: a temporary one)")
    ex = add("exec", help="run a command on a host: halab exec HOST -- CMD...")
    ex.add_argument("host")
    ex.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD")
    sh = add("shell", help="an interactive shell on a host")
    sh.add_argument("host")
    lg = add("logs", help="print a host's service logs")
    lg.add_argument("host")
    lg.add_argument("service", nargs="?")
    lg.add_argument("-f", "--follow", action="store_true")
    for verb in ("start", "stop", "restart"):
        sv = add(verb, help=f"{verb} a supervised service on a host")
        sv.add_argument("host")
        sv.add_argument("service")
    faultcmd.add_parsers(add, [globals_after])
    wt = add("watch", help="the lab live: VIP, heartbeats, balancers, the client's loop, events")
    wt.add_argument("--seconds", type=_watch_seconds, default=600.0,
                    help="stop after this long (default: %(default)g; Ctrl-C leaves sooner)")
    wt.add_argument("--json", action="store_true", help="one JSON object a second instead")
    dm = add("demo", help="the seed's scenario, narrated and measured: round robin, a web "
             "node's nginx stopped, the master powered off, a graceful handover")
    dm.add_argument("--pause", action="store_true", help="wait for Enter between the steps")
    dm.add_argument("--out", type=Path, default=Path("halab-timelines"), metavar="DIR",
                    help="where the timelines go (default: %(default)s)")
    add("ssh-config", help="print an ssh_config for every host "
        "(ssh -F <(halab ssh-config) dir0)")
    vg = add("vagrant", help="run vagrant as halab does (--lab vagrant: libvirtd "
             "started, in its namespace): halab --lab vagrant vagrant -- up")
    vg.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- ARGS")
    iv = add("inventory", help="--lab vagrant: write an inventory for the ssh "
             "backend that reaches the VMs as Vagrant's user")
    iv.add_argument("-o", "--output", metavar="FILE", help="write it here (default: stdout)")
    bx = add("box", help="the Vagrant box: halab box build [--force]")
    bx.add_argument("action", choices=["build"])
    bx.add_argument("--force", action="store_true", help="rebuild even if it is cached")
    return p


def load_backend(args: argparse.Namespace) -> Backend:
    return make_backend(args.lab, topo_mod.load(args.topology), args.inventory)


def cmd_up(backend: Backend, verbose: bool = False) -> None:
    from provision import provision

    t0 = time.monotonic()
    if backend.kind == "vagrant" and console.is_terminal and not verbose:
        _vagrant_up(cast("VagrantBackend", backend))
    else:
        backend.up()
    if not backend.up_provisions:
        provision(backend)
    render(gather(backend), console)
    console.print(f"lab {backend.topology.lab} is up ({time.monotonic() - t0:.1f} s)")


def _vagrant_up(vms: VagrantBackend) -> None:
    """``vagrant up`` as one row per VM with its step (Vagrant's own output: ``-v``)."""
    from rich.live import Live

    from halab.upview import UpProgress

    progress = UpProgress(list(vms.topology.hosts))
    with Live(progress.view(), console=console, refresh_per_second=2) as live:
        def line(text: str) -> None:
            progress.feed(text)
            live.update(progress.view())
        vms.up(on_line=line)


def cmd_provision(backend: Backend, hosts: Sequence[str] | None,
                  if_needed: bool = False) -> None:
    """Provision, saying each host's steps as they are done; on the VMs of the vagrant
    lab, then whether every VM is now provisioned (lab/backends/vagrant/readiness.py). ``if_needed``
    (the vagrant lab): a host provisioned already on this VM, in this boot, with this
    build and inputs is skipped."""
    from lab.backends.vagrant import VagrantBackend, readiness  # (only the vagrant lab's)

    names = [backend.host(h).name for h in hosts] if hosts else list(backend.topology.hosts)
    if not isinstance(backend, VagrantBackend):
        _provision(backend, names)
        return
    vms = backend
    run = os.environ.get(RUN_ENV)  # the Vagrant command this is part of, if any
    inputs = provision_inputs(vms)
    ids, boots = domains(vms), vms.boot_ids(names)
    now = {h: readiness.Vm(ids[h], boots[h]) for h in names}
    todo = names
    if if_needed:
        marked, wanted = readiness.marked(vms.control_dir), readiness.inputs_digest(inputs)
        why = {h: readiness.why_provision(marked.get(h), now[h], wanted) for h in names}
        todo = [h for h in names if why[h] is not None]
        for h in names:
            say(f"{h}: provisioning: needed ({why[h]})" if why[h] else
                f"{h}: provisioned already in this boot with this build "
                "(vagrant provision does it again)")
        if not todo:
            line = readiness.status_if_changed(vms.control_dir, look(vms, now), run, wanted)
            if line is not None:
                say(line)
            return
    readiness.unmark(vms.control_dir, todo)
    _provision(backend, todo)
    # the keys as provisioning used them (made by the first provisioning of all)
    digest = readiness.inputs_digest({**inputs, "keys": keys_digest(vms.control_dir)})
    missing = [h for h in todo if now[h].boot is None]
    if missing:  # (it did not say before: once more)
        now.update({h: readiness.Vm(now[h].domain, b)
                    for h, b in vms.boot_ids(missing).items()})
    done = {h: readiness.Marker(vm.domain, vm.boot, digest)
            for h in todo if (vm := now[h]).domain is not None and vm.boot is not None}
    say(readiness.mark_provisioned(vms.control_dir, done, look(vms, now), run, digest))


def _provision(backend: Backend, names: Sequence[str]) -> None:
    from provision import provision

    t0 = time.monotonic()
    provision(backend, names, progress=lambda host, step: say(f"{host}: provisioning: {step}"))
    say(f"{', '.join(names)}: provisioned in {time.monotonic() - t0:.1f} s")


def provision_inputs(vms: VagrantBackend) -> dict[str, str]:
    """What provisioning a VM renders from, besides the VM itself (``--if-needed``
    compares their digest): the checkout's sources (halab's build), the topology's
    text, the lab's pace (slowness: the timers and timeouts it renders) and the lab's
    keys. Not where libvirtd runs (which decides the VMs' clock setup): a VM lives in
    one libvirtd all its life, whichever way halab reaches it (CI's workstation path
    reaches halab's own as the system's), so for the same VM it never changes."""
    from lab.backends.ssh.deploy import source_digest

    source = vms.topology.source
    try:
        topology = source.read_text()
    except OSError:
        topology = str(source)
    return {"sources": source_digest(vms.root), "topology": topology,
            "slowness": f"{vms.slowness:g}", "keys": keys_digest(vms.control_dir)}


def keys_digest(control_dir: Path) -> str:
    """The lab's keys on the controller (the public halves, the heartbeat key), which
    provisioning writes to the hosts: other keys, another provisioning."""
    from lab.backends.vagrant import readiness

    files = [control_dir / "operator_ed25519.pub", control_dir / "authkey",
             *sorted((control_dir / "host_keys").glob("*.pub"))]
    return readiness.inputs_digest({str(f.relative_to(control_dir)): f.read_text()
                                    for f in files if f.is_file()})


def look(vms: VagrantBackend, known: dict[str, readiness.Vm]) -> readiness.Look:
    """What every VM is now (readiness.Look): its domain id, and the boot id of each VM
    a marker names (``known``: those read already); never raises."""
    from lab.backends.vagrant import readiness

    def now(marked: Mapping[str, readiness.Marker]) -> dict[str, readiness.Vm]:
        ids = domains(vms)
        ask = [h for h, d in ids.items() if h not in known and d is not None
               and h in marked and marked[h].domain == d]
        boots = vms.boot_ids(ask) if ask else {}
        return {h: known[h] if h in known else readiness.Vm(d, boots.get(h))
                for h, d in ids.items()}
    return now


def domains(vms: VagrantBackend) -> dict[str, str | None]:
    """Every host's libvirt domain id, as Vagrant recorded it (None: no VM)."""
    found: dict[str, str | None] = {}
    for h in vms.topology.hosts:
        try:
            found[h] = vms.domain(h)
        except HalabError:
            found[h] = None
    return found


def cmd_demo(backend: Backend, pause: bool, out_dir: Path) -> int:
    """The lab brought up if it is not (else its status), then the seed's scenario."""
    if not backend.is_up():
        cmd_up(backend)
    else:
        render(gather(backend), console)
    from halab.demo import cmd_demo as narrate

    return narrate(backend, pause, out_dir)


def plain_stdio(argv: Sequence[str]) -> list[str]:
    """``argv`` with the remote terminal told to pass bytes as they are where ours is not
    a terminal: SSH backends give the command a tty (it ends with the session), whose
    newline translation turned piped output into CRLF and whose echo doubled piped input.
    (Only there: elsewhere stty would change the user's own terminal.)"""
    modes = [m for m, tty in (("-onlcr", sys.stdout.isatty()), ("-echo", sys.stdin.isatty()))
             if not tty]
    if not modes:
        return list(argv)
    return ["sh", "-c", f'stty {" ".join(modes)} 2>/dev/null; exec "$@"', "sh", *argv]


def exec_on(backend: Backend, host: str, argv: Sequence[str]) -> int:
    """Replace this process with ``argv`` on ``host`` (stdio and exit status pass through)."""
    full = backend.command(host, plain_stdio(argv) if backend.command_has_tty else argv)
    os.execvpe(full[0], full, env())
    return 127  # not reached


def cmd_stack(action: str, name: str | None, topo: topo_mod.Topology,
              out: Path | None) -> int:
    """``list``: each stack and what it is; ``check``: the stack rendered for every
    director from the topology, one line per file and its checker's verdict (what it
    said, when it refused); exit 1 if one refused."""
    import tempfile

    from provision import stack

    if action == "list":
        for known in stack.builtin():
            what = ("halab's own balancer and heartbeat (the default)" if known == stack.HALAB
                    else stack.load(known).description)
            print(f"{known:<20} {what}")
        return 0
    if name is None:
        raise HalabError("which stack? halab stack check NAME|DIR")
    if name == stack.HALAB:
        raise HalabError("halab's own stack has its daemons' checks: halab-balancer "
                         "--check, halab-heartbeat --check (halab provision runs them)")
    s = stack.load(name)
    with tempfile.TemporaryDirectory(prefix="halab-stack-") as tmp:
        done = stack.check(s, topo, out or Path(tmp))
        for c in done:
            verdict = f"{c.checker}: {'FAILED' if c.problem else 'ok'}" if c.checker \
                else "no checker"
            print(f"{c.host}  {c.path}  {verdict}")
            for line in c.problem.splitlines():
                print(f"    {line}")
    if out is not None:
        print(f"rendered under {out}/HOST/")
    return 1 if any(c.problem for c in done) else 0


def cmd_logs(backend: Backend, host: str, service: str | None, follow: bool) -> int:
    names = [service] if service else [s.name for s in backend.services(host)]
    if follow:
        return exec_on(backend, host, backend.follow_argv(host, names))
    for name in names:
        if len(names) > 1:
            print(f"==> {host} {name} <==")
        sys.stdout.write(backend.log_text(host, name))
    return 0


def dispatch(args: argparse.Namespace) -> int:
    if args.cmd == "check":
        t = topo_mod.load(args.file or args.topology)
        roles = {r.value: len(t.by_role(r)) for r in Role}
        print(f"{t.source}: ok: lab {t.lab}, {len(t.networks)} networks, "
              f"{len(t.hosts)} hosts {roles}, VIP {t.vip.address}")
        return 0
    if args.cmd == "stack":
        return cmd_stack(args.action, args.stack, topo_mod.load(args.topology), args.out)
    if args.cmd == "box":
        from lab.backends.vagrant import box

        print(box.build(force=args.force))
        return 0
    backend = load_backend(args)
    if args.cmd == "up":
        cmd_up(backend, args.verbose)
        return 0
    if args.cmd == "vagrant":
        from lab.backends.vagrant import VagrantBackend

        if not isinstance(backend, VagrantBackend):
            raise HalabError("`halab vagrant` needs --lab vagrant")
        return backend.vagrant_interactive(args.argv[1:] if args.argv[:1] == ["--"]
                                           else args.argv)
    if args.cmd == "inventory":
        from lab.backends.vagrant import VagrantBackend

        if not isinstance(backend, VagrantBackend):
            raise HalabError("`halab inventory` needs --lab vagrant")
        text = backend.inventory_text()
        if args.output:
            Path(args.output).write_text(text)
        else:
            print(text, end="")
        return 0
    if args.cmd == "provision":
        cmd_provision(backend, args.hosts, args.if_needed)
        return 0
    if args.cmd == "down":
        backend.down()
        console.print(f"lab {backend.topology.lab} is down")
        return 0
    if args.cmd == "status":
        status = gather(backend)
        if args.json:
            print(json.dumps(status, indent=2))
        else:
            render(status, console)
        return 0 if status["up"] else 3
    if args.cmd == "demo":
        return cmd_demo(backend, args.pause, args.out)
    if args.cmd == "watch":
        from halab.watch import cmd_watch

        return cmd_watch(backend, args.seconds, args.json, console)
    if args.cmd == "fault":
        return faultcmd.cmd_fault(backend, args)
    if args.cmd == "faults":
        return faultcmd.cmd_faults(backend)
    if args.cmd == "heal":
        return faultcmd.cmd_heal(backend, args.host)
    if args.cmd == "ssh-config":
        faultcmd.require_up(backend)
        print(backend.ssh_config(), end="")
        return 0
    if args.cmd in ("exec", "shell", "logs", "start", "stop", "restart"):
        backend.host(args.host)
        faultcmd.require_up(backend)
    if args.cmd == "exec":
        argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not argv:
            raise HalabError("nothing to run: halab exec HOST -- CMD...")
        return exec_on(backend, args.host, argv)
    if args.cmd == "shell":
        prompt = f"[{backend.topology.lab} {args.host}] \\w# "
        return exec_on(backend, args.host, ["env", f"PS1={prompt}", f"HALAB_HOST={args.host}",
                                            "bash", "--norc", "-i"])
    if args.cmd == "logs":
        return cmd_logs(backend, args.host, args.service, args.follow)
    if args.cmd == "stop":
        backend.stop_service(args.host, args.service)
        console.print(f"{args.host} {args.service}: stopped")
        return 0
    # start / restart
    running = [s for s in backend.services(args.host) if s.name == args.service and s.running]
    if args.cmd == "start" and running:
        console.print(f"{args.host} {args.service}: already running pid {running[0].pid}")
        return 0
    state = backend.restart_service(args.host, args.service)
    console.print(f"{args.host} {args.service}: running pid {state.pid}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return dispatch(args)
    except HalabError as e:
        print(f"halab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
