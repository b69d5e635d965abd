"""OpenSSH on every lab host: a real sshd with its own host key.

The lab has one operator key pair (made on the controller). Its public half
is root's authorized key on every host, its private half root's identity on
every host, and every host trusts every other host's key through a global
known_hosts file: ``ssh dir0`` works from any lab host, with strict host key
checking, and testinfra's or fabric's SSH backends work as against VMs.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lab.backend import HostPaths, ServiceSpec
from lab.system import require_programs
from lab.topology import Host, Topology

HOST_KEY = "/etc/ssh/ssh_host_ed25519_key"
IDENTITY = "/etc/ssh/halab_operator_key"
SSHD_CONFIG = "/etc/ssh/sshd_config"


@dataclass(frozen=True)
class KeyPair:
    private: str
    public: str


def generate_keypair(comment: str) -> KeyPair:
    """A new ed25519 key pair from ssh-keygen (the key never touches a host's /etc here)."""
    require_programs(["ssh-keygen"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "key"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
            check=True, capture_output=True,
        )
        return KeyPair(path.read_text(), path.with_suffix(".pub").read_text())


def sshd_config(topo: Topology, host: Host, paths: HostPaths, user_keys: bool = False) -> str:
    """``user_keys``: the host's own users log in too (VMs, real servers): their keys
    count, and PAM stays on, as Debian has it (without it, sshd turns away a user whose
    password is locked, as a cloud image's login user's is, even with a good key)."""
    keys = "/etc/ssh/authorized_keys/%u" + (" .ssh/authorized_keys" if user_keys else "")
    pam = "yes" if user_keys else "no"
    return f"""\
# halab: sshd for {host.name}, rendered from lab/topology.yaml
Port {topo.ports.ssh}
ListenAddress 0.0.0.0
HostKey {HOST_KEY}
PidFile {paths.run}/sshd.pid
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile {keys}
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM {pam}
UseDNS no
X11Forwarding no
PrintMotd no
AcceptEnv LANG LC_*
Subsystem sftp /usr/lib/openssh/sftp-server
"""


def ssh_config(host: Host) -> str:
    return f"""\
# halab: ssh client settings on {host.name}
Host *
    IdentityFile {IDENTITY}
    GlobalKnownHostsFile /etc/ssh/ssh_known_hosts
    UserKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    BatchMode yes
    ConnectTimeout 5
"""


def known_hosts(topo: Topology, host_keys: Mapping[str, str]) -> str:
    """One line per host: its name, name-network aliases and addresses, then its key."""
    lines = []
    for host in topo.hosts.values():
        names = [host.name]
        for iface in host.interfaces:
            names += [f"{host.name}-{iface.network.name}", str(iface.address)]
        key = " ".join(host_keys[host.name].split()[:2])
        lines.append(f"{','.join(names)} {key}")
    return "\n".join(lines) + "\n"


def sshd_service(topo: Topology) -> ServiceSpec:
    return ServiceSpec(
        name="sshd",
        argv=("/usr/sbin/sshd", "-D", "-e", "-f", SSHD_CONFIG),
        listens=(topo.ports.ssh,),
        unit="ssh.service",
        reads=(SSHD_CONFIG, HOST_KEY, HOST_KEY + ".pub"),
    )
