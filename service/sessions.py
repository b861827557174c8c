"""Client sessions: the running feature statistics of each ``session_id``, in a bounded store.

A client that sends one speaker's (or one recording's) utterances under one ``session_id`` gets them
normalised with that session's statistics once it holds enough of them (``shared.session``). The store
keeps, per session, nothing but those statistics (per feature a count, a sum and a sum of squares) and
two timestamps: no audio, no embedding, no prediction.

It is bounded three ways, all settings:

- count: at most ``max_sessions`` sessions (``SER_SESSION_MAX``);
- memory: at most ``memory_mb`` MiB of statistics arrays (``SER_SESSION_MEMORY_MB``), which caps the
  count further for large embeddings (a session of 1024-d embeddings holds 24 KiB; each session also
  costs about 1 KiB of Python objects);
- time: a session unused for ``ttl_s`` seconds (``SER_SESSION_TTL_S``) is dropped.

Sessions are keyed by their owner (a digest of the client's API key, where keys are configured) and id,
so one client cannot read, extend or delete another's; without API keys, ids are shared by every client,
which should then use ids nobody can guess (a UUID). A new session in a full store evicts the least
recently used one. Every eviction is logged and counted
(``ser_session_evictions_total{reason}``: ``capacity`` or ``expired``); ``ser_sessions`` is the number held.
The store is used from the event loop only, so it needs no lock.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from service.errors import InvalidSessionIdError
from shared.session import SessionStats

log = logging.getLogger(__name__)

#: What a ``session_id`` may be: 1-64 characters, letters, digits and ``. _ : -``, starting alphanumeric.
SESSION_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}"
SESSION_ID_MAX_LENGTH = 64
_SESSION_ID = re.compile(SESSION_ID_PATTERN)


def check_session_id(value: str) -> str:
    """Return ``value`` when it is an acceptable session id.

    Raises:
        InvalidSessionIdError: too long, empty, or characters outside the accepted set.
    """
    if len(value) > SESSION_ID_MAX_LENGTH:
        raise InvalidSessionIdError(
            f"session_id is {len(value)} characters long; at most {SESSION_ID_MAX_LENGTH} are accepted"
        )
    if not _SESSION_ID.fullmatch(value):
        raise InvalidSessionIdError(
            f"session_id {value[:SESSION_ID_MAX_LENGTH]!r} is malformed: use 1-{SESSION_ID_MAX_LENGTH} "
            "letters, digits, '.', '_', ':' or '-', starting with a letter or digit"
        )
    return value


@dataclass
class _Entry:
    stats: SessionStats
    created: float
    used: float


class SessionStore:
    """Running statistics per session id, bounded in count, memory and idle time.

    Args:
        dim: the embedding size (every session's statistics have it).
        max_sessions, memory_mb, ttl_s: the bounds (see the module doc).
        on_evict: called with the reason (``capacity`` or ``expired``) for each eviction.
        clock: seconds, monotonic (tests pass their own).
    """

    def __init__(
        self,
        dim: int,
        *,
        max_sessions: int,
        memory_mb: float,
        ttl_s: float,
        on_evict: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dim = dim
        self.ttl_s = ttl_s
        self.session_bytes = SessionStats.empty(dim).nbytes
        self.capacity = max(1, min(max_sessions, int(memory_mb * 1024 * 1024) // self.session_bytes))
        self._on_evict = on_evict or (lambda reason: None)
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._entries

    @property
    def nbytes(self) -> int:
        """Memory held by the statistics."""
        return len(self._entries) * self.session_bytes

    def add(self, session_id: str, features: np.ndarray) -> SessionStats:
        """Add utterances' features ``[n, d]`` to the session (created if new); returns a copy of its
        statistics, which include them."""
        now = self._clock()
        self.expire(now)
        entry = self._entries.get(session_id)
        if entry is None:
            while len(self._entries) >= self.capacity:
                oldest, _ = self._entries.popitem(last=False)
                log.warning(
                    "session store full (%d sessions): evicted the least recently used session %s",
                    self.capacity,
                    oldest,
                )
                self._on_evict("capacity")
            entry = self._entries[session_id] = _Entry(SessionStats.empty(self.dim), now, now)
        entry.stats.add(features)
        entry.used = now
        self._entries.move_to_end(session_id)
        return entry.stats.copy()

    def get(self, session_id: str) -> SessionStats | None:
        """A copy of the session's statistics, or None when it is unknown or expired."""
        self.expire()
        entry = self._entries.get(session_id)
        return None if entry is None else entry.stats.copy()

    def delete(self, session_id: str) -> bool:
        """Forget a session; returns whether it existed (an expired one does not)."""
        self.expire()
        return self._entries.pop(session_id, None) is not None

    def expire(self, now: float | None = None) -> int:
        """Drop the sessions idle for longer than ``ttl_s``; returns how many."""
        now = self._clock() if now is None else now
        dropped = 0
        while self._entries:
            session_id, entry = next(iter(self._entries.items()))
            if now - entry.used <= self.ttl_s:
                break
            del self._entries[session_id]
            log.info("session %s expired after %.0f s unused", session_id, now - entry.used)
            self._on_evict("expired")
            dropped += 1
        return dropped
