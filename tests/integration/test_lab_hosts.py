"""The hosts as testinfra sees them, over real SSH: services, sockets, files, rules.

testinfra's ssh backend reaches every lab host through ``halab ssh-config``
(each host's own sshd, through its loopback), exactly as it would reach VMs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import testinfra
from testinfra.host import Host

from harness.traffic import vip_holders
from lab.backend import Backend
from lab.topology import Topology
from provision import firewall
from provision import host as ph
from provision.director import AUTHKEY, BALANCER_CONFIG, HEARTBEAT_CONFIG

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def hosts(lab: Backend, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Host]:
    cfg = tmp_path_factory.mktemp("ssh") / "ssh_config"
    cfg.write_text(lab.ssh_config())
    return {h: testinfra.get_host(f"ssh://{h}", ssh_config=str(cfg))
            for h in lab.topology.hosts}


def test_every_host_is_itself_over_ssh(hosts: dict[str, Host], topo: Topology) -> None:
    for name, host in hosts.items():
        assert host.check_output("hostname") == name
        for iface in topo.hosts[name].interfaces:
            assert str(iface.address) in host.interface(iface.name).addresses


def test_web_nodes_serve_with_nginx(hosts: dict[str, Host], topo: Topology) -> None:
    for w in topo.webs:
        host = hosts[w.name]
        assert host.socket(f"tcp://{w.address('private')}:{topo.ports.http}").is_listening
        assert host.process.filter(comm="nginx")
        assert host.file("/etc/nginx/nginx.conf").contains(str(w.address("private")))


def test_directors_run_balancer_and_heartbeat(lab: Backend, hosts: dict[str, Host],
                                              topo: Topology) -> None:
    http, admin, hb = topo.ports.http, topo.ports.admin, topo.ports.heartbeat
    for d in topo.directors:
        host = hosts[d.name]
        assert host.socket(f"tcp://{topo.vip.address}:{http}").is_listening  # before owning it
        assert host.socket(f"tcp://{d.address('public')}:{http}").is_listening
        assert host.socket(f"tcp://{d.address('private')}:{admin}").is_listening
        assert host.socket(f"udp://{d.address('private')}:{hb}").is_listening
        assert host.sysctl("net.ipv4.ip_nonlocal_bind") == 1
        key = host.file(AUTHKEY)
        assert key.mode == 0o600 and key.user == "root"
        assert host.run(f"{lab.python} -m balancer --check -f {BALANCER_CONFIG}").rc == 0
        assert host.run(f"{lab.python} -m heartbeat --check -f {HEARTBEAT_CONFIG}").rc == 0
        assert host.file(HEARTBEAT_CONFIG).contains(f'name = "{d.name}"')


def test_vip_on_exactly_one_director(lab: Backend, hosts: dict[str, Host],
                                     topo: Topology) -> None:
    vip = str(topo.vip.address)
    owners = [d.name for d in topo.directors
              if vip in hosts[d.name].interface(d.interface("public").name).addresses]  # type: ignore[union-attr]
    assert owners == vip_holders(lab) and len(owners) == 1


def test_firewall_rules_read_back_over_ssh(lab: Backend, hosts: dict[str, Host],
                                           topo: Topology) -> None:
    for h in [*topo.directors, *topo.webs]:
        rendered = firewall.render_v4(topo, h)
        assert rendered is not None
        want = [r for r in firewall.saved_rules(rendered) if r.startswith("-A ")]
        assert hosts[h.name].iptables.rules("filter", "INPUT") == ["-P INPUT DROP", *want]
        assert hosts[h.name].file(ph.IPTABLES_FILE).content_string == rendered


def test_ssh_config_comes_from_the_cli(lab: Backend, tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "halab.cli", "--lab", lab.kind, "--topology",
                          str(lab.topology.source), "ssh-config"],
                         capture_output=True, text=True, check=True).stdout
    assert out == lab.ssh_config()
