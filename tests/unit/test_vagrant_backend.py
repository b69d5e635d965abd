"""The vagrant backend's pure parts: systemd units for services, MACs, the box's inputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import box
from lab import topology as topo_mod
from lab.backends import vagrant
from lab.errors import HalabError
from provision import director, ssh, web


def test_halab_units_ship_with_provision() -> None:
    topo = topo_mod.load()
    unit, text = vagrant.unit_for(director.balancer_service(topo, "/opt/halab/venv/bin/python"))
    assert unit == "halab-balancer.service"
    assert text is not None and "Type=notify" in text


def test_sshd_is_the_systems_own_unit() -> None:
    assert vagrant.unit_for(ssh.sshd_service(topo_mod.load())) == ("ssh.service", None)


def test_other_services_get_a_unit_rendered_from_their_argv() -> None:
    unit, text = vagrant.unit_for(web.nginx_service(topo_mod.load()))
    assert unit == "halab-nginx.service" and text is not None
    assert "ExecStart=nginx -e stderr -g 'daemon off;' -c /etc/nginx/nginx.conf" in text
    assert "RuntimeDirectory=halab" in text  # its pidfile lives in /run/halab


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
