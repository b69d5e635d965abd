"""The heartbeat wire format: compact, versioned, authenticated with HMAC-SHA256.

Layout (network byte order), 44 bytes + name + 32 bytes of MAC::

    magic   2  b"HB"
    version 1  1
    type    1  0 = heartbeat
    state   1  see State
    prio    1  priority 0-255
    flags   2  FLAG_* bits
    cluster 4  cluster id: packets of another cluster are dropped
    gen     4  generation, unsigned: grows on every start of a node (persisted, and
               at least the wall clock in seconds: identity.next_generation)
    seq     8  sequence number within a generation
    sent    8  sender's wall clock, ms (for timelines only, never for decisions)
    nlen    1  length of the node name (1-32)
    pad     11 zero
    name    nlen bytes, ASCII
    mac     32 HMAC-SHA256 over everything before it, with the cluster key

A receiver takes (gen, seq) as one number that only grows: anything not above the
newest seen on a link is a replay, so a node's generation must never go back, even
when its state file is lost (see ``identity.next_generation`` for the one case left).

``decode`` raises :class:`WireError` with a short reason for anything
malformed, truncated, oversized, of another version or cluster, or with a
bad MAC; the daemon counts these by reason and drops the packet.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass
from enum import IntEnum

MAGIC = b"HB"
VERSION = 1
HEADER = struct.Struct("!2sBBBBHIIQQB11x")
MAC_LEN = 32
MAX_NAME = 32
MAX_LEN = HEADER.size + MAX_NAME + MAC_LEN

FLAG_STANDBY = 1 << 0  # the master asks a peer to take over (hb_standby, SIGTERM)
FLAG_TAKEOVER = 1 << 1  # this master took over on request: it wins a two-master conflict
FLAG_LEAVING = 1 << 2  # shutting down: take over now, do not wait for deadtime


class State(IntEnum):
    INIT = 0
    BACKUP = 1
    MASTER = 2
    FAULT = 3
    STOPPED = 4


class WireError(ValueError):
    """A packet that is dropped; ``reason`` names the counter it goes to."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Heartbeat:
    node: str
    state: State
    priority: int
    cluster: int
    generation: int
    seq: int
    flags: int = 0
    sent_ms: int = 0


def encode(hb: Heartbeat, key: bytes) -> bytes:
    name = hb.node.encode("ascii")
    if not 1 <= len(name) <= MAX_NAME:
        raise ValueError("node name must be 1-32 ASCII characters")
    body = HEADER.pack(MAGIC, VERSION, 0, int(hb.state), hb.priority, hb.flags, hb.cluster,
                       hb.generation, hb.seq, hb.sent_ms, len(name)) + name
    return body + hmac.new(key, body, hashlib.sha256).digest()


def decode(data: bytes, key: bytes, cluster: int) -> Heartbeat:
    if len(data) > MAX_LEN:
        raise WireError("oversized")
    if len(data) < HEADER.size + 1 + MAC_LEN:
        raise WireError("truncated")
    magic, version, mtype, state, prio, flags, clus, gen, seq, sent, nlen = HEADER.unpack_from(
        data)
    if magic != MAGIC:
        raise WireError("bad_magic")
    if version != VERSION or mtype != 0:
        raise WireError("bad_version")
    if len(data) != HEADER.size + nlen + MAC_LEN or not 1 <= nlen <= MAX_NAME:
        raise WireError("truncated")
    body, mac = data[:-MAC_LEN], data[-MAC_LEN:]
    if not hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()):
        raise WireError("bad_mac")
    if clus != cluster:
        raise WireError("wrong_cluster")
    try:
        st = State(state)
        node = body[HEADER.size:].decode("ascii")
    except (ValueError, UnicodeDecodeError):
        raise WireError("malformed") from None
    return Heartbeat(node=node, state=st, priority=prio, cluster=clus, generation=gen, seq=seq,
                     flags=flags, sent_ms=sent)
