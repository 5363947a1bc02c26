"""A counting semaphore on Redis: at most `limit` holders of a name, across every process.

    streams = Semaphore("sse:" + key_id, limit=20, lease=30)
    if not streams.acquire(holder):
        ...  # full
    try: ...                     # streams.renew(holder) at least every lease/3 seconds
    finally: streams.release(holder)

Each holder has a lease that it renews while it holds its place, so a process that dies
without releasing frees its places `lease` seconds later. The holders are one sorted set
(holder -> lease expiry on Redis's clock), read and changed by one script at a time.
"""

from __future__ import annotations

import redis

from conveyor.core.locks import LuaScript
from conveyor.core.redis_client import get_redis

SEMAPHORE_PREFIX = "conveyor:semaphore:"

# KEYS[1]: the holders. ARGV: limit (0 = renew: take the place whatever the count),
# lease (ms), holder. Drops expired holders, then takes or renews the holder's place if
# it has one or there is room. Returns 1 held, 0 full.
_TAKE = LuaScript(
    """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local limit = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if limit > 0 and not redis.call('ZSCORE', KEYS[1], ARGV[3])
   and redis.call('ZCARD', KEYS[1]) >= limit then
  return 0
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[3])
redis.call('PEXPIRE', KEYS[1], lease)
return 1
"""
)


class Semaphore:
    def __init__(
        self, name: str, *, limit: int, lease: float, client: redis.Redis | None = None
    ) -> None:
        if limit < 1:
            raise ValueError(f"a semaphore needs a limit of at least 1, got {limit}")
        if lease <= 0:
            raise ValueError(f"the lease must be positive, got {lease}")
        self.key = SEMAPHORE_PREFIX + name
        self.limit = limit
        self.lease_ms = max(1, round(lease * 1000))
        self._client = client

    @property
    def client(self) -> redis.Redis:
        return self._client or get_redis()

    def acquire(self, holder: str) -> bool:
        """Take a place for `holder` (True), or find all `limit` places taken (False)."""
        return bool(_TAKE(self.client, [self.key], [self.limit, self.lease_ms, holder]))

    def renew(self, holder: str) -> None:
        """Extend the holder's lease; a lease that ran out (a stalled process) is taken
        back even over the limit, since the holder never stopped holding it."""
        _TAKE(self.client, [self.key], [0, self.lease_ms, holder])

    def release(self, holder: str) -> None:
        self.client.zrem(self.key, holder)

    def holders(self) -> int:
        """Places taken now (expired leases not counted)."""
        seconds, micros = self.client.time()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        return int(self.client.zcount(self.key, now_ms, "+inf"))
