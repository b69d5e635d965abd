"""The ssh and vagrant backends' pure parts: the inventory, ssh_config, systemd units for
services, MACs, the box's inputs."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from harness.poll import wait_until
from lab import topology as topo_mod
from lab.backends import ssh as ssh_backend
from lab.backends import vagrant
from lab.backends.ssh import deploy as ssh_deploy
from lab.backends.ssh import inventory
from lab.backends.ssh import systemd as ssh_systemd
from lab.backends.ssh.inventory import Target
from lab.backends.vagrant import box
from lab.errors import ConfigError, HalabError
from provision import director, ssh, web

VENV_PYTHON = "/opt/halab/venv/bin/python"
TOPO = topo_mod.load()
INVENTORY = """
slowness = 2
[defaults]
user = "debian"
identity = "keys/id_ed25519"
options = { ProxyJump = "bastion.example.net" }
[hosts.client]
address = "192.0.2.10"
[hosts.dir0]
address = "192.0.2.11"
port = 2222
[hosts.dir1]
address = "192.0.2.12"
user = "root"
[hosts.web0]
address = "192.0.2.21"
[hosts.web1]
address = "192.0.2.22"
known_hosts = "trusted/known_hosts"
"""


def test_halab_units_ship_with_provision() -> None:
    topo = topo_mod.load()
    unit, text = ssh_systemd.unit_for(director.balancer_service(topo, VENV_PYTHON))
    assert unit == "halab-balancer.service"
    assert text is not None and "Type=notify" in text


def test_sshd_is_the_systems_own_unit() -> None:
    assert ssh_systemd.unit_for(ssh.sshd_service(topo_mod.load())) == ("ssh.service", None)


def test_other_services_get_a_unit_rendered_from_their_argv() -> None:
    unit, text = ssh_systemd.unit_for(web.nginx_service(topo_mod.load()))
    assert unit == "halab-nginx.service" and text is not None
    assert "ExecStart=nginx -e stderr -g 'daemon off;' -c /etc/nginx/nginx.conf" in text
    assert "RuntimeDirectory=halab" in text  # its pidfile lives in /run/halab
    # the distribution's nginx.service would want the same port
    assert "Conflicts=nginx.service" in text


def test_mac_shows_the_address() -> None:
    dir0 = topo_mod.load().hosts["dir0"]
    assert [i.mac for i in dir0.interfaces] == ["02:00:cb:00:71:0b", "02:00:c6:12:00:0b"]


def test_box_fingerprint_follows_its_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    before = box.fingerprint()
    monkeypatch.setattr(box, "PACKAGES", (*box.PACKAGES, "tcpdump"))
    assert box.fingerprint() != before


def test_vagrant_dir_is_found_above_or_refused(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HALAB_VAGRANT_DIR", raising=False)
    (tmp_path / "Vagrantfile").write_text("")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert vagrant.vagrant_dir() == tmp_path
    monkeypatch.chdir("/")
    with pytest.raises(HalabError, match="no Vagrantfile"):
        vagrant.vagrant_dir()


def write_inventory(tmp_path: Path, text: str = INVENTORY) -> Path:
    path = tmp_path / "inventory.toml"
    path.write_text(text)
    return path


def test_inventory_says_how_ssh_reaches_each_host(tmp_path: Path) -> None:
    inv = inventory.load(write_inventory(tmp_path), TOPO)
    assert set(inv.hosts) == set(TOPO.hosts)
    assert inv.slowness == 2.0
    assert inv.state_dir == tmp_path / ".halab" / TOPO.lab  # beside the inventory
    d0 = inv.hosts["dir0"]
    assert (d0.address, d0.user, d0.port) == ("192.0.2.11", "debian", 2222)
    assert d0.identities == (str(tmp_path / "keys" / "id_ed25519"),)  # relative to it
    assert d0.options == (("ProxyJump", "bastion.example.net"),)
    assert inv.hosts["dir1"].user == "root"
    assert inv.hosts["web1"].known_hosts == str(tmp_path / "trusted" / "known_hosts")
    assert inv.hosts["web0"].known_hosts is None


@pytest.mark.parametrize(("change", "message"), [
    (lambda s: s.replace('[hosts.web1]\naddress = "192.0.2.22"\n', ""),
     r"inventory.toml: hosts.web1: missing \(the topology .* has that host\)"),
    (lambda s: s + '[hosts.web9]\naddress = "192.0.2.99"\n',
     r"inventory.toml: hosts.web9: no such host in the topology"),
    (lambda s: s.replace("port = 2222", "port = 70000"),
     r"inventory.toml: hosts.dir0.port: must be a TCP port"),
    (lambda s: s.replace('address = "192.0.2.12"', "adress = '192.0.2.12'"),
     r"inventory.toml: hosts.dir1.address: missing"),
    (lambda s: s.replace('user = "debian"', 'user = "debian"\naddress = "x"'),
     r"inventory.toml: defaults.address: unknown key"),
    (lambda s: s.replace("slowness = 2", "slowness = 0.5"),
     r"inventory.toml: slowness: must be a number >= 1"),
    (lambda s: s.replace("[defaults]", "[default]"),
     r"inventory.toml: default: unknown key"),
])
def test_inventory_errors_name_file_key_and_reason(tmp_path: Path, change: Any,
                                                   message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        inventory.load(write_inventory(tmp_path, change(INVENTORY)), TOPO)


def test_an_inventory_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(inventory.ENV, raising=False)
    with pytest.raises(HalabError, match="--inventory FILE"):
        inventory.load(None, TOPO)


def test_a_rendered_inventory_reads_back(tmp_path: Path) -> None:
    targets = {h: Target(f"192.0.2.{i}", "vagrant", 22, (f"/k/{h}",),
                         (("ProxyCommand", 'ip netns exec "ns" nc %h %p'),))
               for i, h in enumerate(TOPO.hosts)}
    text = inventory.render(targets, 5.0, comment="made by a test\nsecond line")
    assert text.startswith("# made by a test\n# second line\n")
    inv = inventory.load(write_inventory(tmp_path, text), TOPO)
    assert inv.hosts == targets and inv.slowness == 5.0


def test_ssh_configs_login_and_root(tmp_path: Path) -> None:
    lab = ssh_backend.SshBackend.from_inventory(TOPO, write_inventory(tmp_path))
    login = lab.ssh_config_path().read_text()
    block = login.split("Host dir0\n")[1].split("\nHost ")[0]
    assert "  HostName 192.0.2.11\n  Port 2222\n  User debian\n" in block
    # the host key: trusted on first use, remembered beside the lab's files
    assert f"UserKnownHostsFile {lab.control_dir}/known_hosts.login" in block
    assert "StrictHostKeyChecking accept-new" in block
    assert "ProxyJump bastion.example.net" in block
    web1 = login.split("Host web1\n")[1]
    assert f"StrictHostKeyChecking yes\n  UserKnownHostsFile {tmp_path}/trusted/known_hosts" \
        in web1
    root = lab.ssh_config().split("Host dir0\n")[1].split("\nHost ")[0]
    assert "User root" in root and "keys/id_ed25519" not in root
    assert f"IdentityFile {lab.control_dir}/operator_ed25519" in root
    assert "HostKeyAlias dir0" in root and "ProxyJump bastion.example.net" in root
    # halab's settings come first: ssh_config's first value wins over the options
    assert root.index("User root") < root.index("ProxyJump")


def test_trust_on_first_use_remembers_and_then_checks(tmp_path: Path) -> None:
    import paramiko

    lab = ssh_backend.SshBackend.from_inventory(TOPO, write_inventory(tmp_path))
    first, other = paramiko.ECDSAKey.generate(), paramiko.ECDSAKey.generate()

    def client() -> paramiko.SSHClient:
        c = paramiko.SSHClient()
        lab._trust(c, "dir0", lab.targets()["dir0"])
        return c

    c = client()
    c._policy.missing_host_key(c, "[192.0.2.11]:2222", first)
    assert (lab.control_dir / "known_hosts.login").read_text().startswith(
        "[192.0.2.11]:2222 ecdsa-sha2-nistp256 ")
    again = client().get_host_keys().lookup("[192.0.2.11]:2222")
    assert again is not None and again["ecdsa-sha2-nistp256"] == first != other
    # with the inventory's known_hosts: that file, strictly
    strict = paramiko.SSHClient()
    with pytest.raises(HalabError, match=r"web1: known_hosts .*/trusted/known_hosts: No such"):
        lab._trust(strict, "web1", lab.targets()["web1"])
    (tmp_path / "known").write_text(f"192.0.2.22 {other.get_name()} {other.get_base64()}\n")
    lab._trust(strict, "web1", Target("192.0.2.22", known_hosts=str(tmp_path / "known")))
    assert isinstance(strict._policy, paramiko.RejectPolicy)
    assert strict.get_host_keys().lookup("192.0.2.22")[other.get_name()] == other


def test_vmhost_mode_follows_the_setting_else_what_runs(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from lab.backends.vagrant import vmhost

    monkeypatch.delenv(vmhost.MODE_ENV, raising=False)
    monkeypatch.setattr(vmhost, "running", lambda: False)
    sock = tmp_path / "libvirt-sock"
    monkeypatch.setattr(vmhost, "SYSTEM_SOCKET", sock)
    assert vmhost.mode() == "netns"  # no libvirtd here: halab brings its own
    sock.touch()
    assert vmhost.mode() == "netns"  # a socket file left behind is no libvirtd
    sock.unlink()
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(sock))
        listening.listen()
        assert vmhost.mode() == "system"  # a workstation's libvirtd
        assert vmhost.command(["virsh", "list"]) == ["virsh", "list"]
        monkeypatch.setattr(vmhost, "running", lambda: True)
        assert vmhost.mode() == "netns"  # halab's own runs
        assert vmhost.command(["virsh", "list"])[:4] == ["ip", "netns", "exec", vmhost.NS]
    monkeypatch.setenv(vmhost.MODE_ENV, "system")
    assert vmhost.mode() == "system"
    monkeypatch.setenv(vmhost.MODE_ENV, "kvm")
    with pytest.raises(HalabError, match="HALAB_VMHOST='kvm': must be one of netns, system"):
        vmhost.mode()


@pytest.mark.parametrize("mode", ["netns", "system"])
def test_vagrant_reaches_its_vms_through_the_namespace_only_in_the_netns_mode(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    import json

    monkeypatch.setenv("HALAB_VMHOST", mode)
    monkeypatch.delenv("HALAB_BOX", raising=False)
    lab = vagrant.VagrantBackend(TOPO, root=tmp_path)
    (lab.control_dir / "ssh").mkdir(parents=True)
    (lab.control_dir / "ssh" / "dir0.json").write_text(json.dumps(
        {"host": "192.168.121.5", "port": 22, "user": "vagrant", "keys": ["/k"]}))
    t = lab.targets()
    assert list(t) == ["dir0"] and t["dir0"].address == "192.168.121.5"
    if mode == "netns":
        assert t["dir0"].options == (("ProxyCommand", "ip netns exec halabvm nc %h %p"),)
        assert vagrant.box_name() == box.BOX_NAME  # built offline
    else:
        assert t["dir0"].options == ()
        assert vagrant.box_name() == vagrant.PUBLIC_BOX


def test_down_ends_only_the_ssh_proxies_left_in_the_namespace() -> None:
    """An ssh whose VM vanished leaves its ProxyCommand (nc) behind in halabvm: down
    ends those, and nothing else it finds there."""
    import subprocess

    from lab.backends.vagrant import vmhost

    proxy = subprocess.Popen(["bash", "-c", "exec -a nc sleep 30"])
    other = subprocess.Popen(["sleep", "30"])
    try:
        wait_until(lambda: Path(f"/proc/{proxy.pid}/cmdline").read_bytes().startswith(b"nc\0"),
                   5, "the proxy named nc")
        vmhost._end_proxies([proxy.pid, other.pid])
        assert proxy.wait(timeout=5) == -15
        assert other.poll() is None
    finally:
        for p in (proxy, other):
            p.kill()
            p.wait()


def test_provisioning_restarts_a_unit_only_when_its_inputs_changed(tmp_path: Path) -> None:
    """The shell start_service runs on the host, with a stand-in for systemctl: a unit
    that is active and was started from these inputs is left alone; one stopped, one
    whose inputs or halab build changed, is restarted."""
    import subprocess
    from dataclasses import replace

    bin_, venv, services = tmp_path / "bin", tmp_path / "venv", tmp_path / "services"
    for d in (bin_, venv / "bin", services):
        d.mkdir(parents=True)
    log, active = tmp_path / "systemctl.log", tmp_path / "active"
    (bin_ / "systemctl").write_text(
        f'#!/bin/sh\necho "$*" >> {log}\n'
        f'case "$1" in is-active) [ -e {active} ];; restart) touch {active};; esac\n')
    (bin_ / "systemctl").chmod(0o755)
    (venv / "wheels.sha256").write_text("build-1\n")
    spec = replace(director.balancer_service(TOPO, f"{venv}/bin/python"), inputs="files-1")

    def provision(s: Any) -> list[str]:
        log.write_text("")
        script = ssh_systemd.restart_unless_started(s, "halab-balancer.service", "[Unit]\n",
                                                    str(services), str(venv))
        subprocess.run(["sh", "-c", script], check=True, timeout=10,
                       env={"PATH": f"{bin_}:/usr/bin:/bin"})
        return [line.split()[0] for line in log.read_text().splitlines()]

    assert provision(spec) == ["is-active", "restart"]  # first time: not running
    assert provision(spec) == ["is-active"]  # again: nothing changed, left running
    assert provision(replace(spec, inputs="files-2")) == ["is-active", "restart"]
    (venv / "wheels.sha256").write_text("build-2\n")  # another halab installed
    assert provision(replace(spec, inputs="files-2")) == ["is-active", "restart"]
    active.unlink()  # stopped (a fault, a crash)
    assert provision(replace(spec, inputs="files-2")) == ["is-active", "restart"]
    assert provision(replace(spec, inputs="files-2")) == ["is-active"]


def test_the_source_digest_covers_every_package_of_the_wheel() -> None:
    """A change in any package the hosts get must build the wheelhouse again: the digest
    reads the very packages pyproject.toml puts in the wheel."""
    root = Path(__file__).resolve().parents[2]
    data = tomllib.loads((root / "pyproject.toml").read_text())
    include = data["tool"]["setuptools"]["packages"]["find"]["include"]
    assert sorted(p.removesuffix("*") for p in include) == sorted(ssh_deploy.WHEEL_PACKAGES)
    on_disk = {p.parent.name for p in root.glob("*/__init__.py")} - {"tests", "benchmarks"}
    assert on_disk == set(ssh_deploy.WHEEL_PACKAGES)
