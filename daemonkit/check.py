"""The TCP check both daemons make: connect within a timeout, optionally send a request
and read the first line of the answer. Reasons are short phrases for the logs."""

from __future__ import annotations

import asyncio
import errno
from dataclasses import dataclass

TIMED_OUT = "check timeout"  # no connection, or no answer, within the timeout
OUT_OF_FDS = "out of file descriptors"  # the checker's own fault, not the server's
CONNECTED = "tcp connect ok"
ANSWERED = "answered"  # connected, the request sent, and something came back


def out_of_fds(exc: BaseException) -> bool:
    """The process (EMFILE) or the system (ENFILE) has no file descriptor left: a connect
    or a check that fails so says nothing about the server."""
    return isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE)


@dataclass(frozen=True)
class Outcome:
    ok: bool  # connected (and, with a request, an answer came back)
    reason: str  # CONNECTED, ANSWERED, TIMED_OUT, OUT_OF_FDS, "connection refused", an errno's
    first_line: bytes = b""  # of the answer to the request


async def tcp_check(host: str, port: int, timeout: float,
                    request: bytes | None = None) -> Outcome:
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                if request is None:
                    return Outcome(True, CONNECTED)
                writer.write(request)
                line = await reader.readline()
            finally:
                writer.close()
    except TimeoutError:
        return Outcome(False, TIMED_OUT)
    except ConnectionRefusedError:
        return Outcome(False, "connection refused")
    except OSError as e:
        return Outcome(False, OUT_OF_FDS if out_of_fds(e) else e.strerror or type(e).__name__)
    except ValueError:  # a first line over the stream's limit: no status line to read
        return Outcome(True, ANSWERED, b"")
    return Outcome(True, ANSWERED, line)
