"""The web tier: real nginx serving the seed's page and a cheap health URL.

Each web node serves ``<name> - It works!`` at ``/`` (the seed's page, so
the curl loop through the directors shows who answered) and ``ok`` at
``/healthz`` without logging it. Pid, logs, temp files and the document root
are per host, so several nginx instances coexist on one machine.
"""

from __future__ import annotations

from lab.backend import HostPaths, ServiceSpec
from lab.topology import Host, Topology

HEALTH_PATH = "/healthz"
NGINX_CONF = "/etc/nginx/nginx.conf"


def page(host: Host) -> str:
    return f"{host.name} - It works!\n"


def docroot(paths: HostPaths) -> str:
    return f"{paths.state}/www"


def nginx_conf(topo: Topology, host: Host, paths: HostPaths) -> str:
    addr = host.address("private")
    tmp = f"{paths.state}/nginx"
    return f"""\
# halab: nginx for {host.name}, rendered from lab/topology.yaml
user www-data;
worker_processes 1;
pid {paths.run}/nginx.pid;
error_log {paths.log}/nginx-error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    types {{
        text/html html;
        text/plain txt;
    }}
    default_type text/plain;
    access_log {paths.log}/nginx-access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65s;
    keepalive_requests 100000;
    server_tokens off;

    server {{
        listen {addr}:{topo.ports.http} default_server;
        server_name {host.name};
        root {docroot(paths)};
        index index.html;

        location = {HEALTH_PATH} {{
            access_log off;
            return 200 "ok\\n";
        }}
        location / {{
            try_files $uri $uri/ =404;
        }}
    }}
}}
"""


def nginx_service(topo: Topology) -> ServiceSpec:
    return ServiceSpec(
        name="nginx",
        argv=("nginx", "-e", "stderr", "-g", "daemon off;", "-c", NGINX_CONF),
        listens=(topo.ports.http,),
        # no unit: the distribution's nginx.service runs nginx its own way (pidfile,
        # daemon mode); a VM gets a unit rendered from the argv above
        unit=None,
        reads=(NGINX_CONF,),
    )
