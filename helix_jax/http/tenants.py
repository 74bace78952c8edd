"""API keys of the HTTP front end, and each key's share of the coordinator's queue.

Owns: `Tenants`: which configured key a request carries (401 when keys are configured and
none matches), and how many sequences each key has waiting: sent to the coordinator and
without a first token yet (queued there, or prefilling). The coordinator shares its queue
per ZeroMQ connection, and a front end is one connection, so fairness between HTTP users is
kept here: a key already at its share (`queue_share` sequences; default half the
coordinator's queue) gets 429 `queue_full` with Retry-After, while other keys still get in.
Without configured keys every request belongs to one tenant, "anonymous". Sits at the front
of the front end's data flow: routes -> **tenants** (admit) -> backend; the backend's runs
tell it when a sequence stops waiting.

Keys are compared in constant time, each against every configured key; a tenant is named by
the key's position ("key-1", "key-2", ...), never by the key, in errors and metrics.
"""

from __future__ import annotations

import collections
import hmac
from typing import Callable, Sequence

from helix_jax.errors import ConfigError
from helix_jax.http.errors import APIError, queue_full, unauthorized

ANONYMOUS = "anonymous"


def parse_api_keys(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """The keys of `--api-key` / HELIX_API_KEY: one key, or several separated by commas."""
    if value is None:
        return ()
    parts = value.split(",") if isinstance(value, str) else [p for v in value for p in v.split(",")]
    keys = tuple(p.strip() for p in parts if p.strip())
    if isinstance(value, str) and value.strip() and not keys:
        raise ConfigError("--api-key holds no key")
    if len(set(keys)) != len(keys):
        raise ConfigError("--api-key lists the same key twice")
    return keys


class Tenants:
    """The configured keys and the sequences each one has waiting (the app's event loop only)."""

    def __init__(
        self, api_keys: str | Sequence[str] | None = None, queue_share: int | None = None, on_refused: Callable[[str], None] | None = None
    ) -> None:
        if queue_share is not None and queue_share < 1:
            raise ConfigError(f"--key-queue-share must be >= 1, got {queue_share}")
        self._keys = [(key.encode(), f"key-{i + 1}") for i, key in enumerate(parse_api_keys(api_keys))]
        self.queue_share = queue_share  # None: half the coordinator's queue (`set_queue_limit`)
        self.waiting: collections.Counter[str] = collections.Counter()
        self._on_refused = on_refused  # the metrics' counter of 429s per key

    @property
    def names(self) -> list[str]:
        return [name for _, name in self._keys] or [ANONYMOUS]

    def set_queue_limit(self, queue_limit: int) -> None:
        """The coordinator's queue limit is known: the default share is half of it."""
        if self.queue_share is None:
            self.queue_share = max(1, queue_limit // 2)

    def identify(self, authorization: str) -> str:
        """The tenant of an `Authorization` header; 401 if keys are configured and none matches."""
        if not self._keys:
            return ANONYMOUS
        given = authorization[7:].strip().encode() if authorization.startswith("Bearer ") else b""
        match = None
        for key, name in self._keys:  # every key is compared, so the time says nothing of which
            if hmac.compare_digest(given, key) and match is None:
                match = name
        if match is None:
            raise unauthorized()
        return match

    def admit(self, tenant: str, sequences: int) -> None:
        """Count `sequences` as waiting for `tenant`, or 429 if that passes its share (a tenant
        with nothing waiting is always let in, whatever its `n`)."""
        share, waiting = self.queue_share, self.waiting[tenant]
        if share is not None and waiting and waiting + sequences > share:
            if self._on_refused is not None:
                self._on_refused(tenant)
            raise _share_full(tenant, waiting, share)
        self.waiting[tenant] += sequences

    def started(self, tenant: str) -> None:
        """One of `tenant`'s sequences has its first token (or ended): it no longer waits."""
        self.waiting[tenant] -= 1


def _share_full(tenant: str, waiting: int, share: int) -> APIError:
    who = "requests without an API key have" if tenant == ANONYMOUS else f"API key {tenant} has"
    return queue_full(f"{who} already {waiting} sequences waiting, the share of the queue one key may hold ({share}); retry later")
