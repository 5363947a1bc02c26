"""API keys recently checked by this API process, so a client's requests do not each look
their key up in the database and hash it against the stored one.

An entry lives CONVEYOR_API_KEY_CACHE_SECONDS: a key revoked (`conveyor keys revoke`) is
refused by every API process within that time. Entries are keyed by the SHA-256 of the
presented key, never by the key itself; a wrong key is never cached.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from datetime import datetime

# A bound on memory whatever the number of keys: past it, the cache starts again empty.
MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class CheckedKey:
    id: str
    owner: str
    is_admin: bool
    last_used_at: datetime | None


class KeyCache:
    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, CheckedKey]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _digest(plaintext: str) -> str:
        return hashlib.sha256(plaintext.encode()).hexdigest()

    def get(self, plaintext: str, ttl: float) -> CheckedKey | None:
        if ttl <= 0:
            return None
        digest = self._digest(plaintext)
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return None
            if time.monotonic() - entry[0] >= ttl:
                del self._entries[digest]
                return None
            return entry[1]

    def put(self, plaintext: str, key: CheckedKey, ttl: float) -> None:
        if ttl <= 0:
            return
        digest = self._digest(plaintext)
        with self._lock:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[digest] = (time.monotonic(), key)


checked_keys = KeyCache()
