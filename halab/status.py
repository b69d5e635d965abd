"""What the lab looks like right now, gathered through any backend."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

from harness.traffic import vip_state
from lab.backend import Backend
from lab.errors import HalabError
from lab.topology import Host, Role


def _live_addresses(backend: Backend, host: str) -> bytes | None:
    """``ip -j -4 addr show`` on the host (None if unreachable)."""
    try:
        return backend.run(host, ["ip", "-j", "-4", "addr", "show"], timeout=5).stdout
    except HalabError:
        return None


def _addresses(ip_addr_json: bytes) -> dict[str, list[str]]:
    """Interface -> its IPv4 addresses (CIDR)."""
    return {link["ifname"]: [f"{a['local']}/{a['prefixlen']}"
                             for a in link.get("addr_info", [])]
            for link in json.loads(ip_addr_json or b"[]")}


def _backend_health(backend: Backend, host: Host) -> list[dict[str, Any]] | None:
    """The web nodes as this director's balancer sees them (its /stats.json)."""
    topo = backend.topology
    url = f"http://{host.address('private')}:{topo.ports.admin}/stats.json"
    try:
        res = backend.run(host.name, ["curl", "-sf", "--max-time", "1", url], check=False,
                          timeout=5)
        servers = json.loads(res.stdout)["servers"] if res.ok else None
    except (HalabError, ValueError, KeyError):
        return None
    return [{"name": s["name"], "state": s["state"], "active": s["active"],
             "requests": s["requests"]} for s in servers] if servers is not None else None


def gather(backend: Backend) -> dict[str, Any]:
    topo = backend.topology
    up = backend.is_up()
    hosts = []
    vip_holders, vip_silent = [], []
    for host in backend.hosts():
        raw = _live_addresses(backend, host.name) if up else None
        live = _addresses(raw) if raw is not None else None
        ifaces = []
        for iface in host.interfaces:
            present = live is not None and iface.cidr in live.get(iface.name, [])
            ifaces.append({"name": iface.name, "network": iface.network.name,
                           "address": iface.cidr, "present": present})
        where = vip_state(raw, str(topo.vip.address)) if raw is not None else None
        if where == "announced":
            vip_holders.append(host.name)
        elif where == "silent":  # a drain after a handover (on lo), or a cut link
            vip_silent.append(host.name)
        services = [
            {"name": s.name, "running": s.running, "pid": s.pid, "detail": s.detail}
            for s in (backend.services(host.name) if up else [])
        ]
        entry: dict[str, Any] = {
            "name": host.name,
            "role": host.role.value,
            "up": live is not None,
            "interfaces": ifaces,
            "services": services,
        }
        if host.role is Role.DIRECTOR and any(
                s["name"] == "balancer" and s["running"] for s in services):
            entry["backends"] = _backend_health(backend, host)
        hosts.append(entry)
    return {
        "lab": topo.lab,
        "backend": backend.kind,
        "topology": str(topo.source),
        "up": up,
        "vip": {"address": str(topo.vip.address), "holders": vip_holders,
                "silent": vip_silent},
        "hosts": hosts,
    }


def render(status: dict[str, Any], console: Console) -> None:
    state = "[green]up[/]" if status["up"] else "[red]down[/]"
    holders = ", ".join(status["vip"]["holders"]) or "nobody"
    if status["vip"]["silent"]:
        holders += f" (silent on {', '.join(status['vip']['silent'])}: not announced)"
    table = Table(
        title=f"lab {status['lab']} ({status['backend']}): {state}    "
              f"VIP {status['vip']['address']} on {holders}",
        title_justify="left",
    )
    for col in ("host", "role", "interfaces", "services"):
        table.add_column(col)
    for h in status["hosts"]:
        ifaces = "\n".join(
            f"{i['name']} {i['address']} {i['network']}"
            + ("" if i["present"] else " [red](absent)[/]")
            for i in h["interfaces"]
        )
        services = "\n".join(
            f"{s['name']} " + (f"[green]running[/] pid {s['pid']}" if s["running"]
                               else f"[red]{s['detail']}[/]")
            for s in h["services"]
        ) or "-"
        if h.get("backends") is not None:
            services += "\n" + ", ".join(
                f"{b['name']} "
                + ("[green]UP[/]" if b["state"] == "UP" else f"[red]{b['state']}[/]")
                for b in h["backends"])
        table.add_row(h["name"], h["role"], ifaces, services)
    console.print(table)
