"""The retry decision, sans-IO: may a failed attempt be made again, and if not, what
the client gets.

A request may be sent again only while the client cannot tell: no byte of a response
came back, its method is idempotent (a server may have acted on it), and its whole body
is still kept (at most ``RETRY_BUFFER`` bytes). A connect error is always retryable: the
server got nothing. Retries are counted (``retries`` in the config); with
``redispatch`` the next attempt excludes the servers already tried.

When no retry is left, the client gets the failure's status (502, or 504 on a server
timeout), 503 when no server could be connected, or, once a response has begun, a
connection cut short (the only way to tell it the response is not whole).

The proxies (``client``, ``proxy_tcp``) call these and do the I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

RETRY_BUFFER = 64 * 1024  # body bytes kept to send again on a retry


class AttemptFailed(Exception):
    """A try on one server failed; ``retryable`` if the client saw nothing yet;
    ``passive``: the server's fault, counted against its health."""

    def __init__(self, reason: str, retryable: bool, passive: bool = True,
                 status: int = 502) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.passive = passive
        self.status = status


class Step(Enum):
    """What follows a failed attempt."""

    RETRY = "retry"  # another attempt (on another server with redispatch)
    CUT = "cut"  # the response had begun: close the client connection
    ANSWER = "answer"  # answer the client with an error status


def kept(body_size: int) -> bool:
    """Whether a body of ``body_size`` bytes so far is still kept for a retry."""
    return body_size <= RETRY_BUFFER


def may_retry(idempotent: bool, replayable: bool, got_bytes: bool, started: bool) -> bool:
    """Whether a request whose attempt failed after it was sent may be sent again:
    nothing of the response arrived, and the request can be replayed whole."""
    return not got_bytes and not started and idempotent and replayable


def servers_fault(reused: bool, got_bytes: bool) -> bool:
    """Whether a server connection lost before the response counts against the server.
    A reused keep-alive connection that closed before any byte came back is the
    keep-alive race (the server closed it as idle), not a fault of the server."""
    return not (reused and not got_bytes)


def excluded(tried: Sequence[str], redispatch: bool) -> Sequence[str]:
    """The servers the next attempt must not go to: those tried, with redispatch."""
    return tried if redispatch else ()


def again(retryable: bool, attempts: int, retries: int) -> bool:
    """Whether a failed attempt is followed by another: ``attempts`` retries were made
    already, ``retries`` are allowed."""
    return retryable and attempts < retries


def next_step(err: AttemptFailed, attempts: int, retries: int, connected: bool,
              started: bool) -> tuple[Step, int]:
    """What follows a failed attempt, and the status to answer with (``Step.ANSWER``).
    ``connected``: the attempt had a server connection (the failure came after the
    connect); ``started``: the client had begun to receive the response."""
    if again(err.retryable, attempts, retries):
        return Step.RETRY, 0
    if started:
        return Step.CUT, 0
    if connected:
        return Step.ANSWER, err.status
    return Step.ANSWER, 503
