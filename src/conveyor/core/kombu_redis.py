"""kombu's Redis transports, keeping one client object per channel.

kombu builds a new `redis.Redis` for every publish, ack and unacked-message record. With
redis-py 8 that costs more than the command itself: the client copies its table of response
callbacks and reads the package's metadata from disk for its driver name. Here a channel
builds one and keeps it, for as long as it keeps the same connection pool (kombu replaces the
pool after a fork, and a new client comes with it). A `redis.Redis` is safe to share between
threads: each command takes a connection from the pool. The connections, and everything kombu
does with them, are unchanged.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis

_CLIENT = "_conveyor_client"


class _KeptClient:
    pool: Any

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            # The consuming connection (BRPOP, pub/sub) is kombu's own business.
            return super()._create_client(asynchronous=True)  # type: ignore[misc]
        pool = self.pool
        client = self.__dict__.get(_CLIENT)
        if client is None or client.connection_pool is not pool:
            client = super()._create_client()  # type: ignore[misc]
            self.__dict__[_CLIENT] = client
        return client


class Channel(_KeptClient, kombu_redis.Channel):
    pass


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(_KeptClient, kombu_redis.SentinelChannel):
    pass


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


def install() -> None:
    """Make these the transports of `redis://`, `rediss://` and `sentinel://` URLs in this
    process. Registered under kombu's own names, so a connection still says `redis://` (the
    worker's banner, Flower's broker page) and behaves as before."""
    TRANSPORT_ALIASES.update(
        redis=f"{__name__}:Transport",
        rediss=f"{__name__}:Transport",
        sentinel=f"{__name__}:SentinelTransport",
    )
