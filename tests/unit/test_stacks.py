"""The stacks' files, pure: each built-in stack loads and renders for a director from
the topology alone, as its source wrote it (the seed's ha.cf, haresources, HAProxy
listen block); a broken manifest or template is one line naming the file, the key or
line, and the reason. Each rendered config's own checker: tests/component/
test_stack_configs.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import topology as t
from lab.backend import HostPaths
from lab.errors import ConfigError, HalabError
from provision import stack as st

TOPO = t.load()
KEY = "0123456789abcdef0123456789abcdef"


def paths(root: Path, host: str) -> HostPaths:
    return HostPaths(root / host / "run", root / host / "log", root / host / "state")


def test_the_builtin_stacks() -> None:
    assert st.builtin() == ["halab", "keepalived-haproxy", "keepalived-nginx", "ldirectord",
                            "pen", "seed"]


def test_the_seed_as_its_author_wrote_it(tmp_path: Path) -> None:
    """ha.cf, haresources and the HAProxy listen block of the write-up, the lab's
    addresses filled in."""
    dir0, dir1 = TOPO.directors
    out = st.render(st.load("seed"), TOPO, dir0, paths(tmp_path, "dir0"), KEY)
    files = {p: c for p, c, _ in out.files}
    ha = files["/etc/ha.d/ha.cf"].splitlines()
    for line in ("keepalive 2", f"udpport {TOPO.ports.heartbeat}", "auto_failback off",
                 f"ucast {dir0.interface('private').name} {dir1.address('private')}",  # type: ignore[union-attr]
                 "node dir0", "node dir1"):
        assert line in ha
    prefix = TOPO.vip.network.subnet.prefixlen
    assert files["/etc/ha.d/haresources"].split() == [
        "dir0", f"IPaddr2::{TOPO.vip.address}/{prefix}/{dir0.interface('public').name}"  # type: ignore[union-attr]
        f"/{TOPO.vip.network.subnet.broadcast_address}", "haproxy"]
    assert files["/etc/ha.d/authkeys"] == f"auth 3\n3 md5 {KEY}\n"
    haproxy = [line.strip() for line in files["/etc/haproxy/haproxy.cfg"].splitlines()]
    assert {"balance roundrobin", "stats enable"} <= set(haproxy)
    for w in TOPO.webs:
        assert (f"server {w.name} {w.address('private')}:{TOPO.ports.http} "
                "check inter 20 rise 2 fall 2") in haproxy
    assert out.stats_socket == f"{tmp_path}/dir0/run/haproxy.sock"


def test_pen_listens_everywhere_as_the_seed_balance_did(tmp_path: Path) -> None:
    out = st.render(st.load("pen"), TOPO, TOPO.directors[1], paths(tmp_path, "dir1"), KEY)
    pen = next(s for s in out.services if s.name == "pen")
    assert pen.argv[-3:] == (f"0.0.0.0:{TOPO.ports.http}",
                             *(f"{w.address('private')}:{TOPO.ports.http}" for w in TOPO.webs))
    assert pen.listens == (TOPO.ports.http,)


def test_timers_follow_the_labs_pace(tmp_path: Path) -> None:
    stack = st.load("keepalived-haproxy")
    fast, slow = (dict((p, c) for p, c, _ in st.render(
        stack, TOPO, TOPO.directors[0], paths(tmp_path, "dir0"), KEY, s).files)
        ["/etc/keepalived/keepalived.conf"] for s in (1.0, 5.0))
    assert "advert_int 1\n" in fast and "advert_int 5\n" in slow


def own_stack(tmp_path: Path, manifest: str, templates: dict[str, str]) -> Path:
    root = tmp_path / "mine"
    root.mkdir()
    (root / "stack.toml").write_text(manifest)
    for name, text in templates.items():
        (root / name).write_text(text)
    return root


MINE = """\
description = "a student's"
[[files]]
template = "haproxy.cfg"
path = "/etc/haproxy/haproxy.cfg"
[[services]]
name = "haproxy"
command = "haproxy -W -db -f /etc/haproxy/haproxy.cfg"
listens = ["http"]
[adapter]
failover = "vrrp"
state = "traffic"
"""


def test_a_folder_of_ones_own(tmp_path: Path) -> None:
    """Bring your own: a folder with a manifest, which may include a built-in's file."""
    root = own_stack(tmp_path, MINE, {"haproxy.cfg": '{% include "seed/haproxy.cfg" %}'})
    stack = st.load(str(root))
    out = st.render(stack, TOPO, TOPO.directors[0], paths(tmp_path, "dir0"), KEY)
    assert stack.name == "mine" and "balance roundrobin" in out.files[0][1]


@pytest.mark.parametrize(("change", "says"), [
    (("failover = \"vrrp\"", "failover = \"carp\""), "stack.toml: adapter.failover: one of"),
    (("listens = [\"http\"]", "listens = [\"ssh\"]"), "stack.toml: services[0].listens: 'ssh'"),
    (("[adapter]", "[adapter]\ncolour = 1"), "stack.toml: adapter.colour: unknown key"),
    (("description = \"a student's\"", ""), "stack.toml: description: must be a non-empty"),
    (("template = \"haproxy.cfg\"", "template = \"nope.cfg\""), "stack.toml: files: no "
     "template 'nope.cfg'"),
])
def test_a_broken_manifest_is_one_line(tmp_path: Path, change: tuple[str, str],
                                       says: str) -> None:
    root = own_stack(tmp_path, MINE.replace(*change), {"haproxy.cfg": "global\n"})
    with pytest.raises(ConfigError) as e:
        st.load(str(root))
    assert str(e.value).startswith(str(root / "stack.toml"))
    assert says in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(("template", "says"), [
    ("bind {{ vip.adress }}\n", "haproxy.cfg: 'dict object' has no attribute 'adress'"),
    ("line\n{% for w in webs %}\n", "haproxy.cfg:2: Unexpected end of template"),
])
def test_a_broken_template_names_itself(tmp_path: Path, template: str, says: str) -> None:
    stack = st.load(str(own_stack(tmp_path, MINE, {"haproxy.cfg": template})))
    with pytest.raises(HalabError, match=says.replace("'", "'")):
        st.render(stack, TOPO, TOPO.directors[0], paths(tmp_path, "dir0"), KEY)


def test_no_such_stack() -> None:
    with pytest.raises(HalabError, match="no stack 'lvs': a stack is one of halab, "):
        st.find("lvs")
