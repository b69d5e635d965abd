"""Balancer config: defaults, and one-line errors naming file, key and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from balancer import config
from balancer.daemon import main as daemon_main
from balancer.health import HealthParams
from balancer.runtime import FD_HEADROOM, effective_maxconn, fd_reserve
from daemonkit.errors import ConfigError

MINIMAL = """
[frontend]
bind = "127.0.0.1:8080"
[[servers]]
name = "web0"
address = "127.0.0.1:8081"
"""


def test_minimal_config_gets_halab_defaults() -> None:
    c = config.loads(MINIMAL)
    assert c.binds == (("127.0.0.1", 8080),)
    assert c.mode == "http" and c.algorithm == "roundrobin"
    assert c.retries == 3 and c.redispatch and c.error_limit == 2
    assert c.timeouts.connect == 0.2
    h = c.health
    assert (h.check, h.path, h.inter, h.fastinter, h.rise, h.fall, h.timeout) == (
        "http", "/healthz", 0.2, 0.1, 2, 2, 0.15)
    assert c.servers[0].weight == 1 and not c.servers[0].backup


def test_durations_take_a_unit_or_are_milliseconds() -> None:
    c = config.loads(MINIMAL + '[timeouts]\nconnect = "300ms"\nclient = "2s"\n'
                     'server = "1.5s"\nqueue = "1m"\ndrain = 250\n'
                     '[health]\ninter = "2s"\n')
    t = c.timeouts
    assert (t.connect, t.client, t.server, t.queue, t.drain) == (0.3, 2.0, 1.5, 60.0, 0.25)
    assert c.health.inter == 2.0


def test_health_params_are_the_health_sections_timing() -> None:
    c = config.loads(MINIMAL.replace("[[servers]]", """
[health]
inter = 300
fastinter = 50
downinter = 700
rise = 4
fall = 5
[[servers]]"""))
    assert c.health.params() == HealthParams(inter=0.3, fastinter=0.05, downinter=0.7,
                                             rise=4, fall=5)


def test_full_config() -> None:
    c = config.loads(MINIMAL.replace('[[servers]]', """
[global]
maxconn = 100
admin_socket = "/run/x.sock"
access_log = true
[backend]
algorithm = "leastconn"
retries = 1
[timeouts]
connect = 300
queue = 0
[health]
check = "tcp"
fall = 3
[admin]
bind = "127.0.0.1:8404"
[[servers]]""") + """
[[servers]]
name = "web1"
address = "127.0.0.1:8082"
weight = 5
backup = true
slowstart = 2000
""")
    assert c.maxconn == 100 and c.admin_socket == "/run/x.sock" and c.access_log
    assert c.algorithm == "leastconn" and c.retries == 1
    assert c.timeouts.connect == 0.3 and c.timeouts.queue == 0
    assert c.health.check == "tcp" and c.health.fall == 3
    assert c.admin_bind == ("127.0.0.1", 8404)
    assert c.servers[1].weight == 5 and c.servers[1].backup and c.servers[1].slowstart == 2.0


ERRORS = [
    ("", "frontend", "missing"),
    (MINIMAL.replace('bind = "127.0.0.1:8080"', 'bind = "localhost:80"'), "frontend.bind",
     "IPv4-address:port"),
    (MINIMAL.replace('bind = "127.0.0.1:8080"', 'bind = "127.0.0.1:0"'), "frontend.bind",
     "port must be"),
    (MINIMAL.replace('bind = "127.0.0.1:8080"', 'bind = []'), "frontend.bind", "non-empty"),
    (MINIMAL + '[frontend.x]\n', "frontend.x", "unknown key"),
    (MINIMAL.replace("[frontend]", '[frontend]\nmode = "udp"'), "frontend.mode", "one of"),
    (MINIMAL + '[backend]\nalgorithm = "random"\n', "backend.algorithm", "one of"),
    (MINIMAL + '[backend]\nretries = -1\n', "backend.retries", "at least 0"),
    (MINIMAL + '[timeouts]\nconnect = "2 sec"\n', "timeouts.connect",
     "'2 sec' is not a duration: write milliseconds (200) or a number with its unit "
     "(200ms, 2s, 1m)"),
    (MINIMAL + '[timeouts]\nconnect = 2.5\n', "timeouts.connect", "is not a duration"),
    (MINIMAL + '[health]\ninter = "5ms"\n', "health.inter", "5ms must be at least 10 ms"),
    (MINIMAL + '[timeouts]\nconnect = 0\n', "timeouts.connect", "at least 1"),
    (MINIMAL + '[health]\npath = "healthz"\n', "health.path", "must start with /"),
    (MINIMAL + '[health]\nrise = 0\n', "health.rise", "at least 1"),
    (MINIMAL + '[global]\naccess_log = "yes"\n', "global.access_log", "true or false"),
    (MINIMAL + '[[servers]]\nname = "web0"\naddress = "127.0.0.1:9"\n', "servers[1].name",
     "used by another server"),
    (MINIMAL + '[[servers]]\nname = "web1"\naddress = "127.0.0.1:8081"\n',
     "servers[1].address", "used by another server"),
    (MINIMAL + '[[servers]]\nname = "web 1"\naddress = "127.0.0.1:9"\n', "servers[1].name",
     "must be 1-32"),
    (MINIMAL.replace('name = "web0"', 'name = "web0"\nweight = 300'), "servers[0].weight",
     "at most 256"),
    (MINIMAL.replace('name = "web0"', 'name = "web0"\nport = 80'), "servers[0].port",
     "unknown key"),
    ('[frontend]\nbind = "127.0.0.1:80"\n', "servers", "at least one"),
    (MINIMAL + '[admin]\nbind = "127.0.0.1:8080"\n', "admin.bind", "also a frontend bind"),
    (MINIMAL + '[global]\nworkers = 2\n', "global.workers", "needs global.admin_socket"),
    (MINIMAL + '[global]\nworkers = 0\n', "global.workers", "at least 1"),
    ("frontend = [", "", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "key", "reason"), ERRORS)
def test_errors(text: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as exc:
        config.loads(text, "lb.toml")
    assert exc.value.key == key, str(exc.value)
    assert reason in exc.value.reason, str(exc.value)
    assert "\n" not in str(exc.value) and str(exc.value).startswith("lb.toml: ")


def test_check_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text(MINIMAL)
    assert daemon_main(["-f", str(good), "--check"]) == 0
    assert "ok: mode http, 1 binds, 1 servers" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text(MINIMAL + "[health]\nfall = 0\n")
    assert daemon_main(["-f", str(bad), "--check"]) == 1
    assert capsys.readouterr().err == (
        f"halab-balancer: {bad}: health.fall: 0 must be at least 1\n")
    assert daemon_main(["-f", str(tmp_path / "none.toml"), "--check"]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_the_fd_limit_lowers_maxconn_and_keeps_a_reserve() -> None:
    """Each client connection may need a server socket too: 2 descriptors; the reserve
    (headroom, a check per server, the keep-alive pools) stays free."""
    two = config.loads(MINIMAL + '[[servers]]\nname = "web1"\naddress = "127.0.0.1:8082"\n'
                       + "[backend]\npool_size = 4\n")
    assert fd_reserve(two) == FD_HEADROOM + 2 + 2 * 4
    assert effective_maxconn(two, None) == two.maxconn == 20000  # no limit
    assert effective_maxconn(two, 1 << 20) == 20000  # the limit allows more
    assert effective_maxconn(two, 1000) == (1000 - FD_HEADROOM - 10) // 2
    assert effective_maxconn(two, 10) == 1  # never 0: one is taken, the rest get 503
    tcp = config.loads(MINIMAL.replace('[frontend]\n', '[frontend]\nmode = "tcp"\n')
                       + "[backend]\npool_size = 4\n[global]\nmaxconn = 100\n")
    assert fd_reserve(tcp) == FD_HEADROOM + 1  # no pools in TCP mode
    assert effective_maxconn(tcp, 1000) == 100
