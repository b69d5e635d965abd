"""Provisioning plans per role (pure rendering; nothing is applied)."""

from __future__ import annotations

import itertools
from pathlib import Path

from heartbeat.fsm import Timers
from lab import topology as t
from lab.backend import HostPaths
from lab.errors import HalabError
from provision import director, ssh, web
from provision import host as ph

TOPO = t.load()
KEYS = ph.LabKeys(
    operator=ssh.KeyPair("PRIVATE\n", "ssh-ed25519 OPERATOR halab-operator\n"),
    host_public={h: f"ssh-ed25519 KEY{h} root@{h}\n" for h in TOPO.hosts},
    cluster="0123456789abcdef0123456789abcdef",
    host_private={h: f"PRIVATE KEY OF {h}\n" for h in TOPO.hosts},
)


def paths(host: str) -> HostPaths:
    return HostPaths(Path(f"/r/{host}"), Path(f"/l/{host}"), Path(f"/s/{host}"))


def plan(host: str) -> ph.HostPlan:
    return ph.plan_host(TOPO, TOPO.hosts[host], paths(host), KEYS)


def files(host: str) -> dict[str, ph.File]:
    return {f.path: f for f in plan(host).files}


def test_web_node_runs_nginx_and_sshd() -> None:
    p = plan("web0")
    assert [s.name for s in p.services] == ["sshd", "nginx"]
    nginx = p.services[1]
    assert nginx.listens == (80,) and "daemon off;" in nginx.argv
    f = files("web0")
    assert f["/s/web0/www/index.html"].content == "web0 - It works!\n"
    conf = f["/etc/nginx/nginx.conf"].content
    assert "listen 198.18.0.21:80 default_server;" in conf
    assert "pid /r/web0/nginx.pid;" in conf
    assert f"location = {web.HEALTH_PATH}" in conf
    assert "/l/web0/nginx-access.log" in conf


def test_director_runs_the_balancer_and_heartbeat() -> None:
    p = plan("dir0")
    assert [s.name for s in p.services] == ["sshd", "balancer", "heartbeat"]
    assert p.services[2].ready_path == "/r/dir0/heartbeat.sock"
    assert p.services[1].listens == (TOPO.ports.http, TOPO.ports.admin)
    assert "/etc/nginx/nginx.conf" not in files("dir0")
    assert ("python3", "-m", "balancer", "--check", "-f", "/etc/halab/balancer.toml") in p.commands
    assert ("python3", "-m", "heartbeat", "--check", "-f",
            "/etc/halab/heartbeat.toml") in p.commands
    assert files("dir0")["/etc/halab/authkey"].mode == 0o600


def test_heartbeat_config_from_topology() -> None:
    from heartbeat import config

    c0 = config.loads(files("dir0")["/etc/halab/heartbeat.toml"].content)
    c1 = config.loads(files("dir1")["/etc/halab/heartbeat.toml"].content)
    assert (c0.name, c0.priority, c1.priority) == ("dir0", 150, 100)
    assert c0.nodes == ("dir0", "dir1") and str(c0.vip) == "203.0.113.100/24"
    assert [(lk.name, lk.bind, lk.peers) for lk in c0.links] == [
        ("public", "203.0.113.11", ("203.0.113.12",)),
        ("private", "198.18.0.11", ("198.18.0.12",))]
    assert c1.tracks[0].tcp == ("198.18.0.12", 80)
    assert c0.port == TOPO.ports.heartbeat
    assert c0.timers == Timers()  # the netns lab runs heartbeat's defaults
    # before a graceful takeover: three requests through its own balancer, each on a
    # connection of its own, within the lab's pace
    url = "http://198.18.0.12:80/"
    (warm,) = c1.handover_prepare
    assert warm[0] == "curl" and warm.count(url) == 3 and warm.count("/dev/null") == 3
    pairs = set(itertools.pairwise(warm))
    assert ("-H", "Connection: close") in pairs and ("--max-time", "1") in pairs


def test_heartbeat_timers_follow_the_labs_pace() -> None:
    """Under software emulation (Backend.slowness 5) every timer is five times longer,
    and the rendered file still validates."""
    from heartbeat import config

    slow = ph.plan_host(TOPO, TOPO.hosts["dir0"], paths("dir0"), KEYS, slowness=5.0)
    text = {f.path: f for f in slow.files}["/etc/halab/heartbeat.toml"].content
    d = Timers()
    assert config.loads(text).timers == Timers(keepalive=5 * d.keepalive,
                                               deadtime=5 * d.deadtime,
                                               warntime=5 * d.warntime,
                                               initdead=5 * d.initdead)
    track = next(t for t in config.loads(text).tracks if t.name == "balancer")
    assert (track.interval, track.timeout) == (1.0, 0.5)
    plain = {f.path: f for f in plan("dir0").files}["/etc/halab/heartbeat.toml"].content
    track = next(t for t in config.loads(plain).tracks if t.name == "balancer")
    assert (track.interval, track.timeout) == (0.2, 0.1)


def test_balancer_timeouts_follow_the_labs_pace() -> None:
    """What waits on a host's execution (a connect, a health check's answer) is five
    times longer under software emulation; the check intervals and rise/fall, which set
    how fast a dead server is ejected, stay the defaults."""
    from balancer import config

    def rendered(slowness: float) -> config.Config:
        p = ph.plan_host(TOPO, TOPO.hosts["dir0"], paths("dir0"), KEYS, slowness=slowness)
        return config.loads({f.path: f for f in p.files}["/etc/halab/balancer.toml"].content)

    plain, slow = rendered(1.0), rendered(5.0)
    d, dt = config.HealthConfig(), config.Timeouts()
    assert plain.health == d and plain.timeouts == dt
    assert slow.health.timeout == 5 * d.timeout and slow.timeouts.connect == 5 * dt.connect
    assert (slow.health.inter, slow.health.fastinter, slow.health.downinter,
            slow.health.rise, slow.health.fall) == (d.inter, d.fastinter, d.downinter,
                                                    d.rise, d.fall)
    assert slow.timeouts.server == dt.server


def test_balancer_config_from_topology() -> None:
    from balancer import config

    text = files("dir1")["/etc/halab/balancer.toml"].content
    c = config.loads(text)
    assert c.binds == (("203.0.113.100", 80), ("203.0.113.12", 80), ("198.18.0.12", 80))
    assert c.admin_bind == ("198.18.0.12", 8404)
    assert [(s.name, s.host, s.port) for s in c.servers] == [
        ("web0", "198.18.0.21", 80), ("web1", "198.18.0.22", 80)]
    assert c.health.path == web.HEALTH_PATH and c.admin_socket == "/r/dir1/balancer.sock"


def test_director_sysctls() -> None:
    conf = files("dir0")[ph.SYSCTL_FILE].content
    assert "net.ipv4.ip_nonlocal_bind = 1" in conf
    assert "net.ipv4.ip_forward = 0" in conf
    assert "ip_nonlocal_bind" not in files("web0")[ph.SYSCTL_FILE].content


def test_firewall_is_written_then_applied() -> None:
    p = plan("dir0")
    assert ph.IPTABLES_FILE in files("dir0")
    cmds = list(p.commands)
    assert ("iptables-restore", ph.IPTABLES_FILE) in cmds
    assert ("ip6tables-restore", ph.IP6TABLES_FILE) in cmds
    client = plan("client")
    assert ("iptables-restore", ph.IPTABLES_FILE) not in client.commands
    assert ("ip6tables-restore", ph.IP6TABLES_FILE) in client.commands


def test_hosts_file_resolves_by_shared_network() -> None:
    web0 = files("web0")["/etc/hosts"].content.splitlines()
    assert "198.18.0.11 dir0" in web0
    assert "203.0.113.11 dir0-public" in web0
    assert not any(line.endswith(" vip") for line in web0)  # web nodes are not on public
    client = files("client")["/etc/hosts"].content.splitlines()
    assert "203.0.113.11 dir0" in client
    assert "203.0.113.100 vip" in client
    assert not any(line.endswith(" web0") for line in client)  # not reachable


def test_ssh_keys_and_trust() -> None:
    f = files("dir1")
    assert f["/etc/ssh/authorized_keys/root"].content == KEYS.operator.public
    assert f[ssh.IDENTITY].mode == 0o600
    # the host key is the lab's, made on the controller: known before the host is up
    assert (f[ssh.HOST_KEY].content, f[ssh.HOST_KEY].mode) == ("PRIVATE KEY OF dir1\n", 0o600)
    assert f[ssh.HOST_KEY + ".pub"].content == KEYS.host_public["dir1"]
    known = f["/etc/ssh/ssh_known_hosts"].content.splitlines()
    assert "dir0,dir0-public,203.0.113.11,dir0-private,198.18.0.11 ssh-ed25519 KEYdir0" in known
    assert len(known) == len(TOPO.hosts)
    sshd = f["/etc/ssh/sshd_config"].content
    assert "PasswordAuthentication no" in sshd and "PidFile /r/dir1/sshd.pid" in sshd


def test_every_host_gets_sshd_on_the_topology_port() -> None:
    for name in TOPO.hosts:
        sshd = plan(name).services[0]
        assert sshd.name == "sshd" and sshd.listens == (TOPO.ports.ssh,)


def test_files_are_written_before_commands_run(tmp_path: Path) -> None:
    # apply() writes all files first: a command must never fall back to the
    # machine's own /etc because a host file did not exist yet.
    calls: list[str] = []

    class Recorder:
        control_dir = tmp_path

        def put_files(self, host: str, files: list[tuple[str, str, int]]) -> None:
            calls.extend(f"put {path}" for path, _, _ in files)

        def run(self, host: str, argv: tuple[str, ...]) -> None:
            calls.append(f"run {argv[0]}")

        def enable_at_boot(self, host: str, unit: str, text: str) -> None:
            calls.append(f"boot {unit}")

        def start_service(self, host: str, spec: object) -> None:
            calls.append("start")

    ph.apply(Recorder(), plan("web1"))  # type: ignore[arg-type]
    kinds = [c.split()[0] for c in calls]
    assert kinds == sorted(kinds, key=["put", "run", "boot", "start"].index)
    # the firewall comes back at boot from the very files written above
    assert "boot halab-firewall.service" in calls


def test_each_service_carries_the_fingerprint_of_the_files_it_reads() -> None:
    """Provisioning again with the same files leaves the services running; a file that
    changed restarts what reads it (the lab's pace: the heartbeat's timers and the
    balancer's timeouts, both daemons; sshd's own config: sshd), nothing else."""
    p = plan("dir0")
    by_path = {f.path: f for f in p.files}
    for s in p.services:
        assert s.reads and s.inputs == ph.fingerprint([by_path[r] for r in s.reads
                                                      if r in by_path])
    assert plan("dir0").services == p.services  # rendered again: the same

    def changed(q: ph.HostPlan) -> set[str]:
        return {a.name for a, b in zip(p.services, q.services, strict=True)
                if a.inputs != b.inputs}

    slower = ph.plan_host(TOPO, TOPO.hosts["dir0"], paths("dir0"), KEYS, slowness=3.0)
    assert changed(slower) == {"heartbeat", "balancer"}
    logins = ph.plan_host(TOPO, TOPO.hosts["dir0"], paths("dir0"), KEYS, user_keys=True)
    assert changed(logins) == {"sshd"}
    assert plan("dir1").services[1].inputs != p.services[1].inputs
    web = plan("web0")
    assert {s.name for s in web.services} == {"sshd", "nginx"}
    assert all(s.inputs for s in web.services)


def test_the_director_pair_and_the_web_tier_restart_one_host_at_a_time(tmp_path: Path
                                                                        ) -> None:
    """Each host's services start under its group's lock (on the controller, shared by
    processes that provision at once): the other director, or the other web node,
    waits; the client belongs to no group."""
    import fcntl

    held: dict[str, bool] = {}

    class Recorder:
        control_dir = tmp_path

        def put_files(self, host: str, files: object) -> None: ...
        def run(self, host: str, argv: object) -> None: ...
        def enable_at_boot(self, host: str, unit: str, text: str) -> None: ...

        def start_service(self, host: str, spec: object) -> None:
            group = plan(host).rolling
            if not group:
                held[host] = False
                return
            with open(tmp_path / f"rolling-{group}.lock", "a") as f:
                try:  # what another host of the group would do now
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    held[host] = False
                except BlockingIOError:
                    held[host] = True

    assert {h: plan(h).rolling for h in TOPO.hosts} == {
        "client": "", "dir0": "director", "dir1": "director", "web0": "web", "web1": "web"}
    for h in TOPO.hosts:
        ph.apply(Recorder(), plan(h))  # type: ignore[arg-type]
    assert held == {"client": False, "dir0": True, "dir1": True, "web0": True, "web1": True}


def test_the_boot_unit_restores_the_rendered_firewall_files() -> None:
    unit = (Path(ph.__file__).parent / "units" / ph.FIREWALL_UNIT).read_text()
    assert f"iptables-restore {ph.IPTABLES_FILE}" in unit
    assert f"ip6tables-restore {ph.IP6TABLES_FILE}" in unit
    assert "Before=network-pre.target" in unit


def test_lab_keys_are_made_once_on_the_controller(tmp_path: Path) -> None:
    """Every host's key exists before any host does; a second provisioning run (another
    VM's trigger) finds the same keys."""
    from lab.backends.netns import NetnsBackend

    lab = NetnsBackend(TOPO)
    lab.control_dir = tmp_path / "control"
    first = ph.lab_keys(lab)
    assert set(first.host_public) == set(first.host_private) == set(TOPO.hosts)
    assert first.host_public["web0"].startswith("ssh-ed25519 ")
    assert first.host_public["web0"].strip().endswith("root@web0")
    assert "PRIVATE KEY" in first.host_private["web0"]
    assert ph.lab_keys(lab) == first
    assert (lab.control_dir / "host_keys" / "web0_ed25519").stat().st_mode & 0o777 == 0o600


def test_a_host_that_keeps_its_own_host_key_is_asked_for_it(tmp_path: Path) -> None:
    """Real servers (the ssh backend) keep their SSH identity: the lab reads their keys
    into known_hosts and writes none of its own onto them."""
    from lab.backends.netns import NetnsBackend

    class Keeping(NetnsBackend):
        def own_host_key(self, host: str) -> str | None:
            return f"ssh-ed25519 OWN{host} root@{host}\n" if host != "client" else None

    lab = Keeping(TOPO)
    lab.control_dir = tmp_path / "control"
    keys = ph.lab_keys(lab)
    assert keys.host_public["dir0"] == "ssh-ed25519 OWNdir0 root@dir0\n"
    assert set(keys.host_private) == {"client"}  # made for the one that keeps none
    assert not (lab.control_dir / "host_keys" / "dir0_ed25519").exists()
    f = {x.path: x for x in ph.plan_host(TOPO, TOPO.hosts["dir0"], paths("dir0"), keys).files}
    assert ssh.HOST_KEY not in f and ssh.HOST_KEY + ".pub" not in f
    assert "ssh-ed25519 OWNdir0" in f["/etc/ssh/ssh_known_hosts"].content
    client = {x.path for x in ph.plan_host(TOPO, TOPO.hosts["client"], paths("client"),
                                           keys).files}
    assert ssh.HOST_KEY in client


def test_a_controller_without_a_heartbeat_key_takes_the_one_the_directors_share(
        tmp_path: Path) -> None:
    """Hosts provisioned from another checkout keep their pair's key (a new one would
    leave the first restarted director deaf to the running one); directors that
    disagree, or have none, get a new one; the controller's own key comes first."""
    from lab.backends.netns import NetnsBackend

    running = {"dir0": "k" * 64, "dir1": "k" * 64}

    class Provisioned(NetnsBackend):
        def read_file(self, host: str, path: str) -> bytes:
            if path != director.AUTHKEY or host not in running:
                raise HalabError(f"{host}: no file {path}")
            return running[host].encode() + b"\n"

    def cluster(control: str) -> str:
        lab = Provisioned(TOPO)
        lab.control_dir = tmp_path / control
        return ph.lab_keys(lab).cluster

    assert cluster("other-checkout") == "k" * 64
    running["dir1"] = "j" * 64
    made = cluster("disagree")
    assert made not in ("k" * 64, "j" * 64) and len(made) == 64
    assert cluster("disagree") == made  # kept on the controller from then on
    del running["dir0"]
    assert cluster("one-provisioned") == "j" * 64


def test_hosts_with_their_own_users_keep_their_keys_and_pam() -> None:
    lab_only = ssh.sshd_config(TOPO, TOPO.hosts["dir0"], paths("dir0"))
    assert "AuthorizedKeysFile /etc/ssh/authorized_keys/%u\n" in lab_only
    assert "UsePAM no" in lab_only  # the netns lab: root only, no PAM session
    own = ssh.sshd_config(TOPO, TOPO.hosts["dir0"], paths("dir0"), user_keys=True)
    assert "AuthorizedKeysFile /etc/ssh/authorized_keys/%u .ssh/authorized_keys\n" in own
    # a cloud image's login user has a locked password: sshd without PAM refuses it
    assert "UsePAM yes" in own
