"""API keys: the check itself, timing-safe, and the throttle on clients that keep offering wrong ones."""

from __future__ import annotations

import collections
import logging
import secrets
import threading
import time

from service.errors import TooManyAuthFailuresError, UnauthorizedError

log = logging.getLogger(__name__)

#: Keys shorter than this are warned about at start: a short key falls to a fuzzer in minutes.
MIN_KEY_LENGTH = 16
#: Client addresses whose failures are remembered at once; the least recently failing are forgotten.
MAX_TRACKED_CLIENTS = 10_000


def warn_about_keys(keys: list[str]) -> None:
    """Log a warning for each configured key shorter than ``MIN_KEY_LENGTH`` (never the key itself)."""
    short = [i for i, key in enumerate(keys, start=1) if len(key) < MIN_KEY_LENGTH]
    if short:
        log.warning(
            "API key(s) number %s of SER_API_KEYS are shorter than %d characters: a short key can be guessed; "
            "use long random ones (python -c 'import secrets; print(secrets.token_urlsafe(32))')",
            ", ".join(map(str, short)),
            MIN_KEY_LENGTH,
        )


def key_matches(offered: str | None, keys: list[str]) -> bool:
    """True when ``offered`` is one of ``keys``; compared with every key in constant time."""
    data = (offered or "").encode()
    matched = False
    for candidate in keys:
        matched |= secrets.compare_digest(data, candidate.encode())
    return matched


class AuthThrottle:
    """Counts failed API keys per client address and refuses an address that sent too many.

    An address gets ``max_failures`` failures per ``lockout_s``-second period; past that, every request it
    sends gets 429 until the period ends. The table holds at most ``max_clients`` addresses (the least
    recently failing are dropped first), so a flood of addresses cannot grow it without bound.
    """

    def __init__(self, max_failures: int, lockout_s: float, max_clients: int = MAX_TRACKED_CLIENTS) -> None:
        self.max_failures = max_failures
        self.lockout_s = lockout_s
        self.max_clients = max_clients
        self._failures: collections.OrderedDict[str, tuple[int, float]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._failures)

    def check(self, client: str) -> None:
        """Raise ``TooManyAuthFailuresError`` when ``client`` is locked out."""
        with self._lock:
            entry = self._failures.get(client)
            if entry is None:
                return
            count, since = entry
            left = since + self.lockout_s - time.monotonic()
            if left <= 0:
                del self._failures[client]
                return
        if count >= self.max_failures:
            raise TooManyAuthFailuresError(
                f"too many requests with a wrong or missing API key from this address; retry in {left:.0f} s",
                retry_after_s=left,
            )

    def failed(self, client: str) -> None:
        """Count one failure of ``client``; the first one of a period starts the period."""
        now = time.monotonic()
        with self._lock:
            count, since = self._failures.pop(client, (0, now))
            if since + self.lockout_s <= now:
                count, since = 0, now
            self._failures[client] = (count + 1, since)
            while len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)
        if count + 1 == self.max_failures:
            log.warning("client %s sent %d wrong API keys; refusing it for a while", client, count + 1)


def authorize(
    offered: str | None,
    keys: list[str],
    client: str,
    throttle: AuthThrottle,
    where: str = "the X-API-Key header",
) -> None:
    """Pass when no keys are configured or ``offered`` is one of them (``where``: how a client sends
    one, for the error message).

    Raises:
        TooManyAuthFailuresError: ``client`` is locked out (checked first, whatever it offers).
        UnauthorizedError: no key, or a wrong one (counted against ``client``).
    """
    if not keys:
        return
    throttle.check(client)
    if key_matches(offered, keys):
        return
    throttle.failed(client)
    raise UnauthorizedError(
        f"a valid API key is required in {where}" if offered else f"no API key was sent in {where}"
    )
