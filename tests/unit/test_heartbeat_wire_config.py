"""Heartbeat wire format (round trips, fuzzing) and config errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemonkit.errors import ConfigError, DaemonError
from heartbeat import config, wire
from heartbeat.control import budget_ms
from heartbeat.daemon import main
from heartbeat.identity import read_key
from heartbeat.vip import garp_frames

KEY = b"k" * 32

heartbeats = st.builds(
    wire.Heartbeat,
    node=st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=32),
    state=st.sampled_from(list(wire.State)),
    priority=st.integers(0, 255),
    cluster=st.integers(0, 2**32 - 1),
    generation=st.integers(0, 2**32 - 1),
    seq=st.integers(0, 2**64 - 1),
    flags=st.integers(0, 7),
    sent_ms=st.integers(0, 2**64 - 1),
)


@given(heartbeats)
def test_round_trip(hb: wire.Heartbeat) -> None:
    assert wire.decode(wire.encode(hb, KEY), KEY, hb.cluster) == hb


@given(heartbeats, st.integers(0, 200), st.integers(0, 255))
def test_any_flipped_byte_is_rejected(hb: wire.Heartbeat, pos: int, xor: int) -> None:
    data = bytearray(wire.encode(hb, KEY))
    pos %= len(data)
    if xor == 0:
        return
    data[pos] ^= xor
    with pytest.raises(wire.WireError):
        wire.decode(bytes(data), KEY, hb.cluster)


@given(st.binary(max_size=200))
def test_fuzzed_bytes_never_crash(junk: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.decode(junk, KEY, 1)


def test_reasons() -> None:
    hb = wire.Heartbeat("dir1", wire.State.MASTER, 100, 1, 1, 1)
    good = wire.encode(hb, KEY)
    cases = {
        "truncated": good[:20],
        "oversized": good + b"x" * 200,
        "bad_magic": b"XX" + good[2:],
        "bad_mac": wire.encode(hb, b"other key" * 4),
    }
    for reason, data in cases.items():
        with pytest.raises(wire.WireError) as exc:
            wire.decode(data, KEY, 1)
        assert exc.value.reason == reason
    with pytest.raises(wire.WireError) as exc:
        wire.decode(good, KEY, 2)
    assert exc.value.reason == "wrong_cluster"


def test_garp_frames_carry_the_vip_as_sender() -> None:
    mac = bytes.fromhex("0200cb00710b")
    ip = bytes([203, 0, 113, 100])
    req, rep = garp_frames(mac, ip)
    assert req[:6] == b"\xff" * 6 and req[6:12] == mac and req[12:14] == b"\x08\x06"
    assert req[20:22] == b"\x00\x01" and rep[20:22] == b"\x00\x02"  # request, reply
    assert req[22:28] == mac and req[28:32] == ip and req[38:42] == ip


def test_key_file_permissions(tmp_path: Path) -> None:
    key = tmp_path / "authkey"
    key.write_text("0123456789abcdef0123456789abcdef\n")
    os.chmod(key, 0o644)
    with pytest.raises(DaemonError, match="must not be accessible by group or others"):
        read_key(str(key))
    os.chmod(key, 0o600)
    assert read_key(str(key)) == b"0123456789abcdef0123456789abcdef"
    short = tmp_path / "short"
    short.write_text("abc")
    os.chmod(short, 0o600)
    with pytest.raises(DaemonError, match="at least 16 bytes"):
        read_key(str(short))


CFG = """
[node]
name = "dir0"
priority = 150
[cluster]
nodes = ["dir0", "dir1"]
key_file = "{key}"
[vip]
address = "203.0.113.100/24"
[[links]]
name = "private"
bind = "198.18.0.11"
peers = ["198.18.0.12"]
[[track]]
name = "balancer"
tcp = "198.18.0.11:80"
"""


def test_ping_node_is_a_ping_command() -> None:
    c = config.loads(CFG.format(key="/k").replace('tcp = "198.18.0.11:80"',
                                                  'ping = "203.0.113.10"'))
    assert c.tracks[0].command == ("ping", "-n", "-q", "-c", "1", "-W", "1", "203.0.113.10")
    assert c.tracks[0].timeout >= 1.0


def test_handover_prepare_commands() -> None:
    assert config.loads(CFG.format(key="/k")).handover_prepare == ()
    c = config.loads(CFG.format(key="/k").replace(
        "[vip]", '[vip]\nhandover_prepare = [["curl", "-s", "http://x/"], ["true"]]'))
    assert c.handover_prepare == (("curl", "-s", "http://x/"), ("true",))


def test_config_defaults_and_budget() -> None:
    c = config.loads(CFG.format(key="/k"))
    assert (c.timers.keepalive, c.timers.deadtime) == (0.05, 0.2)
    assert c.peers == ["dir1"] and c.peer_address("dir1", "private") == "198.18.0.12"
    assert budget_ms(c)["total"] == 200 + 5 + 5 + 1


@pytest.mark.parametrize(("change", "key", "reason"), [
    (("priority = 150", "priority = 0"), "node.priority", "never master"),
    (('nodes = ["dir0", "dir1"]', 'nodes = ["dir1", "dir2"]'), "cluster.nodes",
     "does not list this node"),
    (('nodes = ["dir0", "dir1"]', 'nodes = ["dir0"]'), "cluster.nodes", "two or more"),
    (('address = "203.0.113.100/24"', 'address = "203.0.113.100"'), "vip.address",
     "prefix length"),
    (('peers = ["198.18.0.12"]', 'peers = ["peer"]'), "links[0].peers", "not an IPv4"),
    (("[vip]", "[timers]\nkeepalive = 100\ndeadtime = 150\n[vip]"), "timers.deadtime",
     "twice keepalive"),
    (('tcp = "198.18.0.11:80"', 'tcp = "198.18.0.11:80"\ncommand = ["true"]'),
     "track[0].tcp", "exactly one"),
    (("[vip]", '[vip]\nhandover_link = "dmz"'), "vip.handover_link", "not one of the links"),
    (('tcp = "198.18.0.11:80"', 'ping = "gateway"'), "track[0].ping", "not an IPv4"),
    (('tcp = "198.18.0.11:80"', 'ping = "203.0.113.1"\ncommand = ["true"]'), "track[0].tcp",
     "exactly one"),
    (("[vip]", "[vip]\ncolour = 1"), "vip.colour", "unknown key"),
    (("[vip]", '[vip]\nhandover_prepare = "curl"'), "vip.handover_prepare",
     "a list of commands"),
    (("[vip]", '[vip]\nhandover_prepare = ["curl", "-s"]'), "vip.handover_prepare",
     "must be a command"),
    (("[vip]", "[vip]\nhandover_prepare = [[]]"), "vip.handover_prepare", "must be a command"),
])
def test_config_errors(change: tuple[str, str], key: str, reason: str) -> None:
    text = CFG.format(key="/k").replace(*change)
    with pytest.raises(ConfigError) as exc:
        config.loads(text, "hb.toml")
    assert exc.value.key == key and reason in exc.value.reason, str(exc.value)
    assert "\n" not in str(exc.value)


def test_check_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "authkey"
    key.write_text("0123456789abcdef0123456789abcdef")
    os.chmod(key, 0o600)
    cfg = tmp_path / "hb.toml"
    cfg.write_text(CFG.format(key=key))
    assert main(["-f", str(cfg), "--check"]) == 0
    assert "failover budget 211 ms" in capsys.readouterr().out
    os.chmod(key, 0o640)
    assert main(["-f", str(cfg), "--check"]) == 1
    assert "chmod 600" in capsys.readouterr().err
