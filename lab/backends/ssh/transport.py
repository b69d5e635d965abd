"""How the ssh backend reaches a host: OpenSSH config blocks for the operator, and the
host keys trusted on first use (for paramiko, as for OpenSSH)."""

from __future__ import annotations

import fcntl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lab.backends.ssh.inventory import Target

SSH_PERSIST = 600
HOST_KEY_PUB = "/etc/ssh/ssh_host_ed25519_key.pub"


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


