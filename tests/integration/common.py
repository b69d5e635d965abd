"""What several checks ask of the lab: URLs, pages, the daemons' runtime APIs."""

from __future__ import annotations

import json
import sys
import time

from balancer import config as balancer_config
from balancer.config import HealthConfig
from harness.poll import wait_until
from lab.backend import Backend
from lab.errors import HalabError
from lab.topology import Topology
from provision.director import BALANCER_CONFIG, balancer_socket, heartbeat_socket


def halab_argv(lab: Backend, *args: str) -> list[str]:
    """The ``halab`` command a user types for this lab (its kind and topology given)."""
    return [sys.executable, "-m", "halab", "--lab", lab.kind, "--topology",
            str(lab.topology.source), *args]


def health(lab: Backend, director: str) -> HealthConfig:
    """The health checks of the director's balancer, as provision/ rendered them (its
    timeouts follow the lab's pace): bounds are the configuration's own."""
    return balancer_config.loads(lab.read_file(director, BALANCER_CONFIG).decode(),
                                 BALANCER_CONFIG).health


def rejoin_budget(lab: Backend, director: str) -> float:
    """Time to come back: a DOWN server is checked every downinter (at the lab's pace)
    and needs rise good checks, each at most its timeout."""
    h = health(lab, director)
    return (h.downinter + h.rise * h.fastinter + 1.0) * lab.slowness + h.rise * h.timeout


def page(name: str) -> str:
    """What web node ``name`` serves at /."""
    return f"{name} - It works!"


def wait_serving(lab: Backend, timeout: float) -> float:
    """Seconds until the client gets a page through the VIP (the lab serves)."""
    client, url = lab.topology.clients[0].name, vip_url(lab.topology)
    t0 = time.monotonic()
    wait_until(lambda: lab.run(client, ["curl", "-sf", "--max-time", "1", url],
                               check=False).ok, timeout, f"{client} served through {url}")
    return time.monotonic() - t0


def vip_url(topo: Topology) -> str:
    return f"http://{topo.vip.address}:{topo.ports.http}/"


def other(topo: Topology, director: str) -> str:
    return next(d.name for d in topo.directors if d.name != director)


# --- the balancer: runtime API (balancerctl) and stats endpoint ---------------------


def ctl(lab: Backend, director: str, command: str) -> str:
    sock = balancer_socket(lab.paths(director))
    return lab.run(director, [lab.python, "-m", "balancer.ctl", "-s", sock,
                              *command.split()]).text


def servers(lab: Backend, director: str) -> dict[str, dict[str, object]]:
    snap = json.loads(ctl(lab, director, "show stat json"))
    return {s["name"]: s for s in snap["servers"]}


def wait_state(lab: Backend, director: str, server: str, state: str, timeout: float) -> None:
    wait_until(lambda: servers(lab, director)[server]["state"] == state or None, timeout,
               f"{server} {state} on {director}'s balancer")


def stats_url(topo: Topology, director: str) -> str:
    return f"http://{topo.hosts[director].address('private')}:{topo.ports.admin}/stats.json"


# --- the heartbeat: hbctl ---------------------------------------------------------------


def hbctl(lab: Backend, director: str, command: str = "status") -> list[str]:
    """The argv of an ``hbctl`` command to the director's heartbeat (JSON answer)."""
    return ["hbctl", "-s", heartbeat_socket(lab.paths(director)), command, "--json"]


def hb(lab: Backend, director: str, command: str = "status") -> object:
    return json.loads(lab.run(director, hbctl(lab, director, command)).text)


def hb_state(lab: Backend, director: str) -> str:
    """The director's heartbeat state ("" while its daemon does not answer)."""
    try:
        st = hb(lab, director)
    except HalabError:
        return ""
    assert isinstance(st, dict)
    return str(st["state"])
