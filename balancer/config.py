"""The balancer's TOML configuration: typed, validated, with one-line errors.

Every key, with its default or a typical value and what it does, is in
``examples/balancer.toml`` (the tests run ``--check`` on it); provision/ renders one
per director from lab/topology.yaml.

The defaults are halab's: fast ejection (a refusing backend is DOWN within
0.5 s, a blackholed one within 1 s) with retries and redispatch so that a
client never sees the failure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from balancer.health import HealthParams
from daemonkit.config import Reader
from daemonkit.errors import ConfigError

MODES = ("http", "tcp")
ALGORITHMS = ("roundrobin", "leastconn", "source")
CHECKS = ("http", "tcp", "none")
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


@dataclass(frozen=True)
class ServerConfig:
    name: str
    host: str
    port: int
    weight: int = 1
    maxconn: int = 0
    backup: bool = False
    slowstart: float = 0.0


@dataclass(frozen=True)
class HealthConfig:
    check: str = "http"
    path: str = "/healthz"
    expect_status: int = 200
    inter: float = 0.2
    fastinter: float = 0.1
    downinter: float = 0.5
    rise: int = 2
    fall: int = 2
    timeout: float = 0.15

    def params(self) -> HealthParams:
        """The state machine's part (``balancer.health``)."""
        return HealthParams(inter=self.inter, fastinter=self.fastinter,
                            downinter=self.downinter, rise=self.rise, fall=self.fall)


@dataclass(frozen=True)
class Timeouts:
    connect: float = 0.2
    client: float = 30.0
    client_header: float = 5.0
    server: float = 30.0
    queue: float = 2.0
    drain: float = 10.0


@dataclass(frozen=True)
class Config:
    binds: tuple[tuple[str, int], ...]
    servers: tuple[ServerConfig, ...]
    mode: str = "http"
    maxconn: int = 20000
    workers: int = 1
    admin_socket: str | None = None
    admin_bind: tuple[str, int] | None = None
    access_log: bool = False
    max_header_size: int = 16384
    max_url_size: int = 8192
    algorithm: str = "roundrobin"
    retries: int = 3
    redispatch: bool = True
    error_limit: int = 2
    pool_size: int = 64
    timeouts: Timeouts = field(default_factory=Timeouts)
    health: HealthConfig = field(default_factory=HealthConfig)
    source: str = "<config>"


def load(path: str | Path) -> Config:
    return parse(Reader.load(path))


def loads(text: str, path: str = "<config>") -> Config:
    return parse(Reader.loads(text, path))


def parse(r: Reader) -> Config:
    d = Config(binds=(), servers=())
    g = r.table("global")
    maxconn = g.integer("maxconn", d.maxconn, lo=1, hi=1_000_000)
    workers = g.integer("workers", d.workers, lo=1, hi=64)
    admin_socket = g.text("admin_socket", "") if g.has("admin_socket") else None
    access_log = g.flag("access_log", d.access_log)
    if workers > 1 and admin_socket is None:
        raise g.fail("workers", "more than one worker needs global.admin_socket "
                     "(the workers share their state through it)")
    g.done()

    fe = r.table("frontend", required=True)
    binds = tuple(fe.endpoints("bind"))
    mode = fe.text("mode", d.mode, choices=MODES)
    max_header = fe.integer("max_header_size", d.max_header_size, lo=1024, hi=1 << 20)
    max_url = fe.integer("max_url_size", d.max_url_size, lo=64, hi=1 << 20)
    fe.done()

    be = r.table("backend")
    algorithm = be.text("algorithm", d.algorithm, choices=ALGORITHMS)
    retries = be.integer("retries", d.retries, lo=0, hi=100)
    redispatch = be.flag("redispatch", d.redispatch)
    error_limit = be.integer("error_limit", d.error_limit, lo=0, hi=1000)
    pool_size = be.integer("pool_size", d.pool_size, lo=0, hi=10_000)
    be.done()

    t = r.table("timeouts")
    dt = Timeouts()
    timeouts = Timeouts(
        connect=t.ms("connect", int(dt.connect * 1000)),
        client=t.ms("client", int(dt.client * 1000)),
        client_header=t.ms("client_header", int(dt.client_header * 1000)),
        server=t.ms("server", int(dt.server * 1000)),
        queue=t.ms("queue", int(dt.queue * 1000), lo=0),
        drain=t.ms("drain", int(dt.drain * 1000), lo=0),
    )
    t.done()

    h = r.table("health")
    dh = HealthConfig()
    check = h.text("check", dh.check, choices=CHECKS)
    path = h.text("path", dh.path)
    if not path.startswith("/"):
        raise h.fail("path", f"{path!r} must start with /")
    health = HealthConfig(
        check=check,
        path=path,
        expect_status=h.integer("expect_status", dh.expect_status, lo=100, hi=599),
        inter=h.ms("inter", int(dh.inter * 1000), lo=10),
        fastinter=h.ms("fastinter", int(dh.fastinter * 1000), lo=10),
        downinter=h.ms("downinter", int(dh.downinter * 1000), lo=10),
        rise=h.integer("rise", dh.rise, lo=1, hi=100),
        fall=h.integer("fall", dh.fall, lo=1, hi=100),
        timeout=h.ms("timeout", int(dh.timeout * 1000), lo=1),
    )
    h.done()

    a = r.table("admin")
    admin_bind = a.endpoint("bind") if a.has("bind") else None
    a.done()

    servers = []
    names: set[str] = set()
    addrs: set[tuple[str, int]] = set()
    for s in r.tables("servers"):
        name = s.text("name")
        if not NAME.match(name):
            raise s.fail("name", f"{name!r} must be 1-32 of [A-Za-z0-9_.-]")
        if name in names:
            raise s.fail("name", f"{name!r} is used by another server")
        host, port = s.endpoint("address")
        if (host, port) in addrs:
            raise s.fail("address", f"{host}:{port} is used by another server")
        names.add(name)
        addrs.add((host, port))
        servers.append(ServerConfig(
            name=name, host=host, port=port,
            weight=s.integer("weight", 1, lo=0, hi=256),
            maxconn=s.integer("maxconn", 0, lo=0, hi=1_000_000),
            backup=s.flag("backup", False),
            slowstart=s.ms("slowstart", 0, lo=0),
        ))
        s.done()
    if not servers:
        raise r.fail("servers", "at least one [[servers]] entry is needed")
    r.done()
    if admin_bind is not None and admin_bind in binds:
        raise ConfigError(r.path, "admin.bind", f"{admin_bind[0]}:{admin_bind[1]} is also a "
                          "frontend bind")
    return Config(
        binds=binds, servers=tuple(servers), mode=mode, maxconn=maxconn, workers=workers,
        admin_socket=admin_socket, admin_bind=admin_bind, access_log=access_log,
        max_header_size=max_header, max_url_size=max_url, algorithm=algorithm,
        retries=retries, redispatch=redispatch, error_limit=error_limit, pool_size=pool_size,
        timeouts=timeouts, health=health, source=r.path,
    )
