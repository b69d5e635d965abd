"""Each built-in stack's rendered configs pass their own program's checker
(``haproxy -c``, ``keepalived --config-test``, ``nginx -t``: ./bootstrap installs
them), run for each director where its interfaces exist (provision.stack.check); the
checkers judge (a typo is refused); ``halab stack check`` says the same to a user."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lab import topology as t
from provision import stack as st

from .test_cli_command import halab

TOPO = t.load()
STACKS = [s for s in st.builtin() if s != st.HALAB]
# the file each stack's checkers must see (a stack that stops checking one fails here)
CHECKED = {
    "seed": {"/etc/haproxy/haproxy.cfg": "haproxy"},
    "keepalived-haproxy": {"/etc/haproxy/haproxy.cfg": "haproxy",
                           "/etc/keepalived/keepalived.conf": "keepalived"},
    "keepalived-nginx": {"/etc/nginx/nginx.conf": "nginx",
                         "/etc/keepalived/keepalived.conf": "keepalived"},
    "pen": {},
    "ldirectord": {},
}


@pytest.mark.parametrize("name", STACKS)
def test_rendered_configs_pass_their_checkers(name: str, tmp_path: Path) -> None:
    if "nginx" in CHECKED[name].values() and os.geteuid() != 0:
        pytest.skip("nginx -t chowns its temp directories to its worker user: root only")
    done = st.check(st.load(name), TOPO, tmp_path)
    assert {c.host for c in done} == {d.name for d in TOPO.directors}
    for c in done:
        assert c.problem == "", f"{name} on {c.host}: {c.path}: {c.problem}"
        assert c.local.read_text() and "{{" not in c.local.read_text()
    for host in TOPO.directors:
        assert {c.path: c.checker for c in done if c.host == host.name and c.checker} \
            == CHECKED[name]


@pytest.mark.parametrize(("file", "typo"), [
    ("keepalived-haproxy/haproxy.cfg", ("option redispatch", "option redispatchh")),
    ("keepalived-haproxy/keepalived.conf", ("virtual_router_id", "virtual_routr_id")),
    ("keepalived-nginx/nginx.conf", ("worker_connections", "worker_conections")),
])
def test_a_typo_fails_its_checker(tmp_path: Path, file: str, typo: tuple[str, str]) -> None:
    """The checkers judge: a student's copy of a built-in stack with one typo."""
    if "nginx" in file and os.geteuid() != 0:
        pytest.skip("nginx -t chowns its temp directories to its worker user: root only")
    name, template = file.split("/")
    mine = tmp_path / "mine"
    mine.mkdir()
    for f in (st.builtin_root() / name).iterdir():
        text = f.read_text()
        (mine / f.name).write_text(text.replace(*typo) if f.name == template else text)
    done = st.check(st.load(str(mine)), TOPO, tmp_path / "out")
    bad = [c for c in done if c.problem]
    assert {c.host for c in bad} == {d.name for d in TOPO.directors}
    assert all(typo[1].split()[-1] in c.problem for c in bad), bad  # it names the typo


def test_halab_stack_check_as_a_user_runs_it(tmp_path: Path) -> None:
    res = halab("stack", "list")
    assert res.returncode == 0, res.stderr
    assert [line.split()[0] for line in res.stdout.splitlines()] == st.builtin()
    res = halab("stack", "check", "keepalived-haproxy", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert "dir0  /etc/haproxy/haproxy.cfg  haproxy: ok" in res.stdout
    assert (tmp_path / "dir1/etc/keepalived/keepalived.conf").is_file()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "stack.toml").write_text("description = 'x'\n[[files]]\n")
    res = halab("stack", "check", str(broken))
    assert res.returncode == 2 and res.stderr.startswith(
        f"halab: error: {broken / 'stack.toml'}: files[0].path: ")
