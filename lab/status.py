"""What the lab looks like right now, gathered through any backend."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

from lab.backend import Backend
from lab.errors import HalabError


def _live_addresses(backend: Backend, host: str) -> dict[str, list[str]] | None:
    """Interface -> IPv4 addresses as the host reports them (None if unreachable)."""
    try:
        out = backend.run(host, ["ip", "-j", "-4", "addr", "show"], timeout=5).stdout
    except HalabError:
        return None
    result: dict[str, list[str]] = {}
    for link in json.loads(out or b"[]"):
        result[link["ifname"]] = [
            f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])
        ]
    return result


def gather(backend: Backend) -> dict[str, Any]:
    topo = backend.topology
    up = backend.is_up()
    hosts = []
    vip_holders = []
    for host in backend.hosts():
        live = _live_addresses(backend, host.name) if up else None
        ifaces = []
        for iface in host.interfaces:
            present = live is not None and iface.cidr in live.get(iface.name, [])
            ifaces.append({"name": iface.name, "network": iface.network.name,
                           "address": iface.cidr, "present": present})
        if live and any(a.split("/")[0] == str(topo.vip.address)
                        for addrs in live.values() for a in addrs):
            vip_holders.append(host.name)
        services = [
            {"name": s.name, "running": s.running, "pid": s.pid, "detail": s.detail}
            for s in (backend.services(host.name) if up else [])
        ]
        hosts.append({
            "name": host.name,
            "role": host.role.value,
            "up": live is not None,
            "interfaces": ifaces,
            "services": services,
        })
    return {
        "lab": topo.lab,
        "backend": backend.kind,
        "topology": str(topo.source),
        "up": up,
        "vip": {"address": str(topo.vip.address), "holders": vip_holders},
        "hosts": hosts,
    }


def render(status: dict[str, Any], console: Console) -> None:
    state = "[green]up[/]" if status["up"] else "[red]down[/]"
    holders = ", ".join(status["vip"]["holders"]) or "nobody"
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
        table.add_row(h["name"], h["role"], ifaces, services)
    console.print(table)
