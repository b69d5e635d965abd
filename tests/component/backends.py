"""Real HTTP/1.1 servers on loopback for the balancer's tests, and a running balancer.

``Backend`` is a threaded HTTP/1.1 server (keep-alive, chunked both ways):

    GET  /            -> "<name>\\n"
    GET  /healthz     -> "ok\\n"
    GET  /headers     -> the request headers as received, one per line
    GET  /chunked     -> a chunked response: "<name>-1,", "<name>-2,", "<name>-3"
    GET  /close       -> a body delimited by closing the connection
    GET  /slow?ms=N   -> "<name>\\n" after N ms
    GET  /status/N    -> status N
    POST /echo        -> the request body (Content-Length or chunked)
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from harness.poll import wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        name = self.server.name
        self.server.hits += 1
        path, _, query = self.path.partition("?")
        if path == "/":
            self._send(200, f"{name}\n".encode())
        elif path == "/healthz":
            self._send(200, b"ok\n")
        elif path == "/headers":
            self._send(200, "".join(f"{k}: {v}\n" for k, v in self.headers.items()).encode())
        elif path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in (1, 2, 3):
                part = f"{name}-{i}{',' if i < 3 else ''}".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/close":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(f"{name} until close\n".encode())
            self.close_connection = True
        elif path == "/slow":
            time.sleep(int(query.split("=")[1]) / 1000)
            self._send(200, f"{name}\n".encode())
        elif path.startswith("/status/"):
            self._send(int(path.rsplit("/", 1)[1]), b"status\n")
        else:
            self._send(404, b"not found\n")

    def do_POST(self) -> None:
        self.server.hits += 1
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            body = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._send(200, body, {"X-Backend": self.server.name})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # a burst of connections is not refused (the default is 5)

    def __init__(self, addr: tuple[str, int], name: str) -> None:
        super().__init__(addr, _Handler)
        self.name = name
        self.hits = 0
        self.conns: set[socket.socket] = set()

    def process_request(self, request: Any, client_address: Any) -> None:
        self.conns.add(request)
        super().process_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client (the balancer) that went away mid-response is part of the tests

    def shutdown_request(self, request: Any) -> None:
        self.conns.discard(request)
        super().shutdown_request(request)


class Backend:
    def __init__(self, name: str, port: int | None = None) -> None:
        self.name = name
        self.port = port or free_port()
        self.server: _Server | None = None

    def start(self) -> Backend:
        self.server = _Server(("127.0.0.1", self.port), self.name)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening and drop every connection (a server that is gone)."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            for conn in list(self.server.conns):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            self.server = None

    @property
    def hits(self) -> int:
        return self.server.hits if self.server else 0


def config_text(port: int, backends: list[Backend], extra: str = "", admin_port: int = 0,
                socket_path: str = "", server_extra: dict[str, str] | None = None,
                access_log: bool = True) -> str:
    out = [f'[frontend]\nbind = "127.0.0.1:{port}"\n',
           f'[global]\naccess_log = {str(access_log).lower()}\n']
    if socket_path:
        out.append(f'admin_socket = "{socket_path}"\n')
    if admin_port:
        out.append(f'[admin]\nbind = "127.0.0.1:{admin_port}"\n')
    out.append(extra)
    for b in backends:
        out.append(f'[[servers]]\nname = "{b.name}"\naddress = "127.0.0.1:{b.port}"\n'
                   + (server_extra or {}).get(b.name, ""))
    return "\n".join(out)


class Running:
    """A balancer daemon process on loopback."""

    def __init__(self, tmp: Path, text: str, port: int, nofile: int | None = None) -> None:
        self.path = tmp / f"lb-{port}.toml"
        self.path.write_text(text)
        self.port = port
        self.log = tmp / f"lb-{port}.log"
        self.nofile = nofile  # the daemon's RLIMIT_NOFILE, soft and hard (None: ours)
        self.proc: subprocess.Popen[bytes] | None = None

    def _limits(self) -> None:
        if self.nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def start(self) -> Running:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "balancer", "-f", str(self.path)],
                stdout=subprocess.DEVNULL, stderr=log,
                preexec_fn=self._limits if self.nofile is not None else None)
        def listening() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            except OSError:
                return False
            return True

        wait_until(listening, 10, f"the balancer listening on {self.port}")
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@contextlib.contextmanager
def running(tmp: Path, backends: list[Backend], nofile: int | None = None,
            **kw: Any) -> Iterator[Running]:
    port = free_port()
    r = Running(tmp, config_text(port, backends, **kw), port, nofile).start()
    try:
        yield r
    finally:
        r.stop()


def raw(port: int, data: bytes, timeout: float = 3.0, shut: bool = True) -> bytes:
    """Send bytes, read until the balancer closes (or timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        if shut:
            # a balancer that answered and closed at once (maxconn) may have reset the
            # connection already: what it sent is still there to read
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_WR)
        chunks = []
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while c := s.recv(65536):
                chunks.append(c)
    return b"".join(chunks)


class Garbage:
    """A server that answers anything with bytes that are not HTTP."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = int(self.sock.getsockname()[1])
        self.name = "garbage"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.recv(65536)
                conn.sendall(b"NOT HTTP AT ALL\r\n\r\n")

    def stop(self) -> None:
        self.sock.close()
