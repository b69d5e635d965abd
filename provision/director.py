"""What runs on a director: halab's balancer and heartbeat daemons.

The balancer config is rendered from the topology: it listens on the VIP
(before owning it: ``ip_nonlocal_bind``) and on the director's own addresses,
serves its admin page on the private address, and spreads requests over the
web nodes' private addresses, health-checking nginx's ``/healthz``.
"""

from __future__ import annotations

from balancer import config as bal_config
from heartbeat import config as hb_config
from heartbeat.fsm import Timers
from lab.backend import HostPaths, ServiceSpec
from lab.topology import Host, Topology
from provision import units, web

BALANCER_CONFIG = "/etc/halab/balancer.toml"
HEARTBEAT_CONFIG = "/etc/halab/heartbeat.toml"
AUTHKEY = "/etc/halab/authkey"


def paced_ms(default: float, slowness: float) -> int:
    """A default time (seconds) at the lab's pace (Backend.slowness), in the whole
    milliseconds the daemons' configs hold."""
    return round(default * slowness * 1000)


def balancer_socket(paths: HostPaths) -> str:
    return f"{paths.run}/balancer.sock"


def balancer_toml(topo: Topology, host: Host, paths: HostPaths, slowness: float = 1.0) -> str:
    """``slowness``: the lab's pace (Backend.slowness). What waits on a host's execution
    follows it: the connect timeout and the health check's timeout (under software
    emulation a check's 150 ms timed out on nodes that served); the check intervals and
    ``rise``/``fall`` stay, so ejection keeps the pace its configuration promises."""
    http = topo.ports.http
    binds = [f"{topo.vip.address}:{http}"] + [f"{i.address}:{http}" for i in host.interfaces]
    servers = "\n".join(
        f'[[servers]]\nname = "{w.name}"\naddress = "{w.address("private")}:{http}"\n'
        for w in topo.webs)
    pace = "" if slowness == 1 else f"\n# timeouts: the defaults x{slowness:g}, for this lab's pace"
    return f"""\
# halab balancer on {host.name}, rendered from lab/topology.yaml.
# Validate with: halab-balancer --check -f {BALANCER_CONFIG}

[global]
admin_socket = "{balancer_socket(paths)}"
access_log = true

[frontend]
bind = [{", ".join(f'"{b}"' for b in binds)}]
mode = "http"

[backend]
algorithm = "roundrobin"
{pace}
[timeouts]  # milliseconds
connect = {paced_ms(bal_config.Timeouts().connect, slowness)}

[health]
check = "http"
path = "{web.HEALTH_PATH}"
timeout = {paced_ms(bal_config.HealthConfig().timeout, slowness)}

[admin]
bind = "{host.address("private")}:{topo.ports.admin}"

{servers}"""


def balancer_service(topo: Topology, python: str) -> ServiceSpec:
    return ServiceSpec(
        name="balancer",
        argv=(python, "-m", "balancer", "-f", BALANCER_CONFIG),
        listens=(topo.ports.http, topo.ports.admin),
        unit="halab-balancer.service",
        unit_text=units.text("halab-balancer.service"),
        reads=(BALANCER_CONFIG,),
    )


def heartbeat_socket(paths: HostPaths) -> str:
    return f"{paths.run}/heartbeat.sock"


def priority(topo: Topology, host: Host) -> int:
    """The first director listed is the preferred master (150, then 100, 50, ...)."""
    order = [d.name for d in topo.directors].index(host.name)
    return max(150 - 50 * order, 1)


def heartbeat_timers(slowness: float = 1.0) -> Timers:
    """The heartbeat daemon's timers for a lab running ``slowness`` times slower than
    the netns lab (Backend.slowness): its defaults, stretched by that factor. Under
    software emulation a VM's tick, its `ip addr` and its scheduling take several times
    longer; timers kept at the defaults there would see late heartbeats as a dead peer."""
    d = Timers()

    def ms(t: float) -> float:  # what the config holds: whole milliseconds
        return paced_ms(t, slowness) / 1000

    return Timers(keepalive=ms(d.keepalive), deadtime=ms(d.deadtime),
                  warntime=ms(d.warntime), initdead=ms(d.initdead))


WARMUP_REQUESTS = 3  # measured under TCG: 294-528 ms, then 113-167, then 59-127 (steady ~50)


def warmup_argv(topo: Topology, host: Host, slowness: float = 1.0) -> list[str]:
    """curl through the director's own balancer (its private address), a new
    connection each time, any answer (all servers down gives a 503, and warms too)."""
    url = f"http://{host.address('private')}:{topo.ports.http}/"
    outs = [a for _ in range(WARMUP_REQUESTS) for a in ("-o", "/dev/null")]
    return ["curl", "-s", *outs, "-H", "Connection: close",
            "--max-time", f"{slowness:g}", *[url] * WARMUP_REQUESTS]


def heartbeat_toml(topo: Topology, host: Host, paths: HostPaths, slowness: float = 1.0) -> str:
    nodes = ", ".join(f'"{d.name}"' for d in topo.directors)
    links = []
    for iface in host.interfaces:  # every network the directors share: redundant links
        peers = [p.address(iface.network.name) for p in topo.peers(host)
                 if p.interface(iface.network.name) is not None]
        if peers:
            links.append(f'[[links]]\nname = "{iface.network.name}"\nbind = "{iface.address}"\n'
                         f"peers = [{', '.join(f'{chr(34)}{a}{chr(34)}' for a in peers)}]\n")
    vip = f"{topo.vip.address}/{topo.vip.network.subnet.prefixlen}"
    t = heartbeat_timers(slowness)
    # the track's check too: at its defaults a connect under emulation timed out and
    # gave the VIP away with the balancer running
    track_pace = ("" if slowness == 1 else
                  f"interval = {round(hb_config.TRACK_INTERVAL_MS * slowness)}\n"
                  f"timeout = {round(hb_config.TRACK_TIMEOUT_MS * slowness)}\n")
    pace = "" if slowness == 1 else f"; the defaults x{slowness:g}, for this lab's pace"
    warmup = ", ".join(f'"{a}"' for a in warmup_argv(topo, host, slowness))
    ms = "\n".join(f"{k} = {round(getattr(t, k) * 1000)}"
                   for k in ("keepalive", "deadtime", "warntime", "initdead"))
    return f"""\
# halab heartbeat on {host.name}, rendered from lab/topology.yaml.
# Validate with: halab-heartbeat --check -f {HEARTBEAT_CONFIG}

[node]
name = "{host.name}"
priority = {priority(topo, host)}

[cluster]
id = 1
nodes = [{nodes}]
key_file = "{AUTHKEY}"
port = {topo.ports.heartbeat}
state_file = "{paths.state}/heartbeat.state"
control_socket = "{heartbeat_socket(paths)}"

[timers]  # milliseconds{pace}
{ms}

[vip]
address = "{vip}"
# before a graceful takeover, three requests through this director's own balancer:
# a balancer that has not served since it started answers its first requests slowly
# under emulation (0.3-0.5 s, now and then over a second), and the old master keeps
# serving while these run
handover_prepare = [[{warmup}]]

# the balancer on this director must answer, or it gives the VIP away
[[track]]
name = "balancer"
tcp = "{host.address("private")}:{topo.ports.http}"
{track_pace}
{chr(10).join(links)}"""


def heartbeat_service(paths: HostPaths, python: str) -> ServiceSpec:
    return ServiceSpec(
        name="heartbeat",
        argv=(python, "-m", "heartbeat", "-f", HEARTBEAT_CONFIG),
        ready_path=heartbeat_socket(paths),
        unit="halab-heartbeat.service",
        unit_text=units.text("halab-heartbeat.service"),
        reads=(HEARTBEAT_CONFIG, AUTHKEY),
    )
