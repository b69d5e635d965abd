"""The ssh transport's ProxyCommand (the vagrant lab reaches its VMs through ``nc`` in
halab's libvirt namespace): a proxy that has ended, as ``nc`` does when a VM still
booting refuses the connection, ends the connection attempt at once, without a busy
core. paramiko's own ProxyCommand read an ended command as "nothing yet" and looped
until its timeout (a power-on under TCG: 110 CPU-seconds, the VMs slowed by it)."""

from __future__ import annotations

import socket
import time

import pytest

from lab.backends.ssh import transport


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nobody listens once it is closed


def test_a_proxy_that_ended_fails_the_connection_at_once_without_spinning() -> None:
    """The proxy takes paramiko's first words, then ends without a word: as ``nc``
    does when the VM's kernel refuses port 22 (its sshd not yet up)."""
    port = closed_port()
    conn = transport._connection_class()(
        "127.0.0.1", port=port, gateway="sleep 0.5", connect_timeout=20,
        connect_kwargs={"banner_timeout": 20, "auth_timeout": 20, "look_for_keys": False,
                        "allow_agent": False})
    t, cpu = time.monotonic(), time.process_time()
    with pytest.raises(Exception, match="banner"):  # (the end, read as a socket's)
        conn.open()
    conn.close()
    assert time.monotonic() - t < 5  # not the banner timeout's 20 s
    assert time.process_time() - cpu < 1.0
