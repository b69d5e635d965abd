"""What runs on a director: halab's balancer (and, with issue 4, heartbeat).

The balancer config is rendered from the topology: it listens on the VIP
(before owning it: ``ip_nonlocal_bind``) and on the director's own addresses,
serves its admin page on the private address, and spreads requests over the
web nodes' private addresses, health-checking nginx's ``/healthz``.
"""

from __future__ import annotations

from lab.backend import HostPaths, ServiceSpec
from lab.topology import Host, Topology
from provision import web

BALANCER_CONFIG = "/etc/halab/balancer.toml"


def balancer_socket(paths: HostPaths) -> str:
    return f"{paths.run}/balancer.sock"


def balancer_toml(topo: Topology, host: Host, paths: HostPaths) -> str:
    http = topo.ports.http
    binds = [f"{topo.vip.address}:{http}"] + [f"{i.address}:{http}" for i in host.interfaces]
    servers = "\n".join(
        f'[[servers]]\nname = "{w.name}"\naddress = "{w.address("private")}:{http}"\n'
        for w in topo.webs)
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

[health]
check = "http"
path = "{web.HEALTH_PATH}"

[admin]
bind = "{host.address("private")}:{topo.ports.admin}"

{servers}"""


def balancer_service(topo: Topology, python: str) -> ServiceSpec:
    return ServiceSpec(
        name="balancer",
        argv=(python, "-m", "balancer", "-f", BALANCER_CONFIG),
        listens=(topo.ports.http, topo.ports.admin),
        unit="halab-balancer.service",
    )
