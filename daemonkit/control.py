"""A daemon's unix control socket: one command a line, one answer each, as HAProxy's
runtime API. The client sends its lines, shuts its side down and reads until the
daemon closes. The server and both clients (a command-line tool's, and a daemon's
own, asyncio, when it asks another of its processes) are here, once.

The socket is made mode 0600 (only root, or the daemon's user, may steer it), a
stale one of an earlier run is replaced, and it is removed on close.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tomllib
from collections.abc import Awaitable, Callable

from daemonkit.log import EventLog

Handler = Callable[[str], Awaitable[str]]
LINE_LIMIT = 64 * 1024  # a longer line is not a command: the connection is closed


async def serve(path: str, handler: Handler, log: EventLog,
                failed: Callable[[Exception], str]) -> asyncio.AbstractServer:
    """Answer each line of each connection with ``await handler(line)``; an exception
    in it is logged (``control_command_failed``) and answered with ``failed(e)``: a bug
    must still answer, never look like a silent success."""
    if os.path.exists(path):
        os.unlink(path)  # a stale socket of a previous run
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                text = line.decode(errors="replace")
                try:
                    answer = await handler(text)
                except Exception as e:
                    log.error("control_command_failed", command=text.strip(), reason=repr(e))
                    answer = failed(e)
                writer.write(answer.encode())
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass  # ValueError: a line over the limit
        finally:
            writer.close()

    old = os.umask(0o077)  # no moment when another user may connect
    try:
        server = await asyncio.start_unix_server(connection, path, limit=LINE_LIMIT)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return server


def close(server: asyncio.AbstractServer, path: str) -> None:
    server.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def request(path: str, command: str, timeout: float = 5.0) -> str:
    """Send one command and return the whole answer (blocking: for command-line tools)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(command.strip().encode() + b"\n")
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
    return b"".join(chunks).decode(errors="replace")


async def arequest(path: str, command: str, timeout: float = 2.0) -> str:
    """:func:`request` from inside an event loop."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_unix_connection(path)
        try:
            writer.write(command.strip().encode() + b"\n")
            writer.write_eof()
            return (await reader.read()).decode(errors="replace")
        finally:
            writer.close()


def socket_in_config(config: str, table: str, key: str, default: str) -> str:
    """The control socket a daemon's config names (``[table] key``): how its command-line
    tool finds it without ``-s``, on any host, wherever provisioning put it. ``default``
    when the config does not exist or names none; OSError or ValueError (with the file's
    name) when it cannot be read."""
    try:
        with open(config, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return default
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{config}: not TOML: {e}") from None
    value = data.get(table, {}).get(key) if isinstance(data.get(table), dict) else None
    return value if isinstance(value, str) and value else default
