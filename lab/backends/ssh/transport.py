"""How the ssh backend reaches a host (its ``Transport``): fabric connections kept
open, commands through ``sudo -n``, files as one tar archive; ssh_config blocks for
OpenSSH and the operator; host keys checked, or trusted on first use and remembered
(for paramiko as for OpenSSH)."""

from __future__ import annotations

import fcntl
import functools
import importlib.util
import io
import logging
import os
import select
import shlex
import subprocess
import tarfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab.backend import Result, Transport
from lab.backends.ssh.inventory import Inventory, Target
from lab.errors import HalabError
from lab.topology import Host, Topology

SSH_PERSIST = 600
CHANNEL_TIMEOUT = 30.0  # s (x slowness): a session opened on a live connection takes ms
HOST_KEY_PUB = "/etc/ssh/ssh_host_ed25519_key.pub"

# paramiko logs a connection it could not open (a VM still booting: "Error reading SSH
# protocol banner") with its traceback, and Python prints that on stderr when nobody
# handles its logs; the failure itself comes here as an exception, said in one line
logging.getLogger("paramiko").addHandler(logging.NullHandler())


def require_fabric(kind: str) -> None:
    """The ssh and vagrant labs reach their hosts with fabric (and paramiko, which comes
    with it): without it, one line that says what to install."""
    if importlib.util.find_spec("fabric") is None:
        raise HalabError(f"the {kind} lab needs fabric, which is not installed: "
                         f"pip install 'halab[ssh]' (./bootstrap deps has it)")


@functools.cache
def _connection_class() -> Any:
    """fabric's Connection, its ProxyCommand (the vagrant lab's ``nc`` into halab's
    libvirt namespace) read as a socket is: once the command has ended (a VM booting
    refused the connection), the read says so. paramiko's own ProxyCommand.recv loops
    on an empty read until its timeout, a core busy all along: a power-on under TCG,
    polling for the VM's sshd, took 2.5 min and 110 CPU-seconds, the VMs' emulation
    slowed by it (measured 2026-12-04)."""
    import fabric
    from paramiko.proxy import ProxyCommand, ProxyCommandFailure

    class Proxy(ProxyCommand):  # type: ignore[misc]
        def recv(self, size: int) -> bytes:
            try:
                r, _, _ = select.select([self.process.stdout], [], [], self.timeout)
                data = os.read(self.process.stdout.fileno(), size) if r else None
            except OSError as e:
                raise ProxyCommandFailure(" ".join(self.cmd), e.strerror) from e
            if data is None:
                raise TimeoutError  # (socket.timeout, as a socket's recv)
            return data  # b"": the command has ended

    class Connection(fabric.Connection):  # type: ignore[misc]
        def open_gateway(self) -> Any:
            gateway = super().open_gateway()
            if isinstance(gateway, ProxyCommand):
                gateway.__class__ = Proxy
            return gateway

    return Connection


def ssh_block(name: str, t: Target, lines: Sequence[str], login: bool = True) -> str:
    """A Host block: halab's ``lines`` first (ssh_config's first value wins), the
    login's keys (``login``), then the target's own options."""
    keys = [*(f"IdentityFile {k}" for k in t.identities),
            *(["IdentitiesOnly yes"] if t.identities else [])] if login else []
    body = [f"HostName {t.address}", f"Port {t.port}", *lines, *keys,
            *(f"{k} {v}" for k, v in t.options)]
    return f"Host {name}\n" + "".join(f"  {line}\n" for line in body)


class _TrustOnFirstUse:
    """paramiko's missing-host-key policy: remember a host's key the first time (as
    OpenSSH's StrictHostKeyChecking=accept-new), in a file shared with OpenSSH."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        with open(self.path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        client.get_host_keys().add(hostname, key.get_name(), key)


class SshTransport(Transport):
    """Commands and files over SSH, for the hosts of ``inventory`` (the login user,
    root through ``sudo -n``); the backend holds the state (``_conns``, ``_lock``)."""

    topology: Topology
    kind: str
    control_dir: Path
    slowness: float
    inventory: Inventory | None
    _conns: dict[str, Any]
    _lock: threading.Lock
    if TYPE_CHECKING:
        def host(self, name: str) -> Host: ...

    def targets(self) -> dict[str, Target]:
        """How SSH reaches each host (that is up)."""
        assert self.inventory is not None
        return self.inventory.hosts

    def _target(self, host: str) -> Target:
        self.host(host)
        t = self.targets().get(host)
        if t is None:
            raise HalabError(f"{host}: not up (run `halab --lab {self.kind} up`)")
        return t

    def _login_host_keys(self, host: str, t: Target) -> list[str]:
        """How a login checks the host's key: against the inventory's known_hosts, else
        trusted on first use and remembered."""
        if t.known_hosts:
            return ["StrictHostKeyChecking yes", f"UserKnownHostsFile {t.known_hosts}"]
        return ["StrictHostKeyChecking accept-new",
                f"UserKnownHostsFile {self._tofu_file()}"]

    def _tofu_file(self) -> Path:
        path = self.control_dir / "known_hosts.login"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        return path

    def _trust(self, client: Any, host: str, t: Target) -> None:
        """paramiko's side of ``_login_host_keys``."""
        import paramiko

        known = Path(t.known_hosts) if t.known_hosts else self._tofu_file()
        try:
            client.get_host_keys().load(str(known))
        except OSError as e:
            raise HalabError(f"{host}: known_hosts {known}: {e.strerror}") from None
        client.set_missing_host_key_policy(paramiko.RejectPolicy() if t.known_hosts
                                           else _TrustOnFirstUse(known))

    def ssh_config_path(self) -> Path:
        """An ssh_config for the inventory's login on every host (that is up); rewritten
        at each call (VMs come up one by one)."""
        text = "\n".join(
            ssh_block(h, t, [f"User {t.user}", *self._login_host_keys(h, t),
                             "PasswordAuthentication no", "LogLevel FATAL",
                             "ServerAliveInterval 10", f"ControlPersist {SSH_PERSIST}",
                             "ControlMaster auto", f"ControlPath {self.control_dir}/cm-%h"])
            for h, t in self.targets().items())
        path = self.control_dir / "ssh_config"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".ssh_config.{os.getpid()}.{threading.get_ident()}")
        tmp.write_text(text)
        os.replace(tmp, path)
        return path

    def ssh_config(self) -> str:
        """Every host as root with the lab operator key (after provisioning), its host
        key checked against the lab's."""
        return "\n".join(
            ssh_block(h, t, ["User root", f"IdentityFile {self.control_dir}/operator_ed25519",
                             "IdentitiesOnly yes", "PasswordAuthentication no",
                             "StrictHostKeyChecking yes",
                             f"UserKnownHostsFile {self.control_dir}/known_hosts",
                             f"HostKeyAlias {h}", "LogLevel ERROR", "ControlPersist 120",
                             "ControlMaster auto", f"ControlPath {self.control_dir}/root-%h"],
                      login=False)
            for h, t in self.targets().items())

    def connection(self, host: str) -> Any:
        """A fabric Connection to ``host`` (the login user), kept open."""
        require_fabric(self.kind)
        import fabric

        with self._lock:
            conn = self._conns.get(host)
            if conn is None:
                t = self._target(host)  # (once per connection: the vagrant backend reads
                # its VMs' records from disk)
                cfg = fabric.Config(runtime_ssh_path=str(self.ssh_config_path()))
                # an SSH handshake under TCG, five at once, can take many seconds
                wait = 30 * self.slowness
                conn = _connection_class()(host, config=cfg, connect_timeout=wait,
                                           connect_kwargs={"banner_timeout": wait,
                                                           "auth_timeout": wait})
                self._trust(conn.client, host, t)
                self._conns[host] = conn
            return conn

    def _close(self, host: str) -> None:
        with self._lock:
            conn = self._conns.pop(host, None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        with self._lock:
            for conn in self._conns.values():
                conn.close()
            self._conns.clear()
        cfg = self.control_dir / "ssh_config"
        if cfg.exists():  # the ssh connection masters (command())
            for h in self.topology.hosts:
                subprocess.run(["ssh", "-F", str(cfg), "-O", "exit", h], capture_output=True,
                               check=False)

    @staticmethod
    def _sudo(user: str, argv: Sequence[str]) -> str:
        line = shlex.join(argv)
        return line if user == "root" else "sudo -n -- " + line

    command_has_tty = True

    def command(self, host: str, argv: Sequence[str]) -> list[str]:
        """ssh with a tty (the remote command ends with the session), riding on a
        connection master started beforehand: a master forked by this very command
        would hold its stdout open after the command ended."""
        self.host(host)
        cfg = str(self.ssh_config_path())
        if subprocess.run(["ssh", "-F", cfg, "-O", "check", host], capture_output=True,
                          check=False).returncode != 0:
            subprocess.run(["ssh", "-F", cfg, "-f", "-N", "-o", "ControlMaster=yes", host],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=60 * self.slowness, check=False)
        return ["ssh", "-F", cfg, "-tt", "-o", "ControlMaster=no", "-o", "LogLevel=ERROR", host,
                self._sudo(self._target(host).user, argv)]

    def _check_on(self, host: str, argv: Sequence[str]) -> None:
        """Before a command: raise if it cannot run there (the vagrant backend: a VM
        whose power is off)."""

    def execute(self, host: str, argv: Sequence[str], *, input: bytes | None,
                timeout: float) -> Result:
        if input is not None:
            raise HalabError(f"the {self.kind} backend passes no input to commands")
        self._check_on(host, argv)
        conn = self.connection(host)  # (fabric, and with it invoke, is there)
        from invoke.exceptions import CommandTimedOut

        try:
            conn.open()  # (connected already: nothing) then a channel, within a bound: on
            # a connection whose peer vanished (a VM powered off and on by another process)
            # paramiko's open waits an hour by default
            conn.transport.channel_timeout = CHANNEL_TIMEOUT * self.slowness
            res = conn.run(self._sudo(conn.user, argv), hide=True, warn=True, in_stream=False,
                           timeout=timeout * self.slowness)
        except CommandTimedOut as e:  # the command's own time: the connection is sound
            raise HalabError(f"{host}: `{' '.join(argv)}`: {type(e).__name__}: {e}") from None
        except Exception as e:  # paramiko's SSH errors: the next command connects anew
            self._close(host)
            raise HalabError(f"{host}: `{' '.join(argv)}`: {type(e).__name__}: {e}") from None
        return Result(list(argv), res.exited, res.stdout.encode(), res.stderr.encode())

    def put_file(self, host: str, path: str, content: bytes | str, mode: int = 0o644) -> None:
        self.put_files(host, [(path, content, mode)])

    def put_files(self, host: str, files: Sequence[tuple[str, bytes | str, int]]) -> None:
        """One tar archive (owner root, each file's mode), unpacked at / in one command
        (every command is an SSH round trip: half a second under TCG), then synced: a
        power loss soon after must not leave them empty (ext4's delayed allocation)."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for path, content, mode in files:
                data = content.encode() if isinstance(content, str) else content
                info = tarfile.TarInfo(path.lstrip("/"))
                info.size, info.mode, info.mtime = len(data), mode, int(time.time())
                tar.addfile(info, io.BytesIO(data))
        buf.seek(0)
        tmp = f"/tmp/.halab-{os.getpid()}-{threading.get_ident()}.tar"
        self.connection(host).put(buf, tmp)
        self.run(host, ["sh", "-c", f"tar -x --no-overwrite-dir -C / -f {tmp}; r=$?; "
                                    f"rm -f {tmp}; sync; exit $r"])

    def read_file(self, host: str, path: str) -> bytes:
        res = self.run(host, ["cat", path], check=False)
        if not res.ok:
            raise HalabError(f"{host}: no file {path}")
        return res.stdout
