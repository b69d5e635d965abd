"""This node's identity on the wire: the cluster key its heartbeats are signed with, and
the generation of this start (above every earlier one, so no peer takes our heartbeats
for replays)."""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

from daemonkit.errors import DaemonError

MAX_GENERATION = 2**32 - 1  # the wire's 4-byte unsigned generation field


def read_key(path: str) -> bytes:
    """The cluster key; refused if group or others may read it (as heartbeat's authkeys)."""
    try:
        st = os.stat(path)
        data = Path(path).read_bytes().strip()
    except OSError as e:
        raise DaemonError(f"{path}: cannot read the key file: {e.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise DaemonError(f"{path}: the key file must not be accessible by group or others "
                         f"(mode {stat.S_IMODE(st.st_mode):04o}; chmod 600)")
    if len(data) < 16:
        raise DaemonError(f"{path}: the key must be at least 16 bytes")
    return data


def next_generation(path: str, clock: Callable[[], float] = time.time) -> int:
    """This start's generation, above every one this node used before: a peer drops
    heartbeats of a generation older than the newest it saw, as replays.

    ``max(stored + 1, the wall clock in whole seconds)``, written back to ``path``:

    * the file (synced: a power loss must not leave it empty) is the first defence:
      ``stored + 1`` grows even when the clock was stepped back;
    * the clock is the second, for a file lost (a director reinstalled, /var/lib
      wiped) or unreadable (empty, corrupt, out of range): an earlier start took a
      generation no higher than the clock then (unless starts came faster than one a
      second), and the clock has gone on since.

    What neither covers: the file lost *and* the clock not past the last generation
    (stepped back, or the last start less than a second ago, or as many seconds ago
    as starts faster than one a second put the file ahead of the clock). Such a start
    may take an old generation, and its peer drops its heartbeats as replays
    (``event_replay``): for its whole run if lower than the last, until as many were
    sent as before if the same. Seconds since the epoch fit the 4-byte unsigned wire field
    until 2106 (then its largest value, always).
    """
    p = Path(path)
    try:
        stored = int(p.read_text().strip())
    except (OSError, ValueError):  # missing, unreadable, empty, not a number
        stored = -1
    if not 0 <= stored <= MAX_GENERATION:
        stored = -1  # not a generation the wire could have carried: as if missing
    gen = min(max(stored + 1, int(clock())), MAX_GENERATION)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write(f"{gen}\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(p)
    with contextlib.suppress(OSError):  # the rename itself, durable too
        fd = os.open(p.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return gen
