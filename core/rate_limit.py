"""A per-key token bucket in Redis: how many requests a key may make per minute.

Each key has a bucket of ``per_minute`` tokens that refills continuously (``per_minute``
tokens a minute); a request takes one token, or is refused with the seconds until one is
back. One Lua script reads, refills and takes atomically, on Redis' own clock, so any
number of API processes share one limit per key and their clocks do not matter.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import redis

log = logging.getLogger(__name__)

BUCKET_PREFIX = "bulkscore:ratelimit:"
# Seconds: a Redis that does not answer must not hold a request for long; the request is
# let through instead (see :meth:`RateLimiter.take`).
REDIS_TIMEOUT_S = 0.5

# KEYS[1]: the bucket; ARGV[1]: capacity (tokens); ARGV[2]: refill rate (tokens per ms).
# Returns {1, 0} when a token was taken, {0, ms until one is back} otherwise.
TAKE_SCRIPT = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = capacity
  at = now
end
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
local allowed = 0
local wait_ms = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait_ms = math.ceil((1 - tokens) / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate) + 1000)
return {allowed, wait_ms}
"""


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a request may go on; if not, after how many whole seconds to retry."""

    allowed: bool
    retry_after_s: int = 0


class RateLimiter:
    """Token buckets of ``per_minute`` requests per key in the Redis at ``url``."""

    def __init__(self, url: str, per_minute: int) -> None:
        self.per_minute = per_minute
        self._client = redis.Redis.from_url(
            url,
            socket_connect_timeout=REDIS_TIMEOUT_S,
            socket_timeout=REDIS_TIMEOUT_S,
            retry_on_timeout=False,
        )
        self._take = self._client.register_script(TAKE_SCRIPT)

    def take(self, bucket: str) -> Decision:
        """Take a token from ``bucket``.

        A Redis that cannot be reached lets the request through (logged): the limit
        protects the service from one key's flood, and must not turn a Redis outage into
        refused requests that would otherwise succeed.
        """
        try:
            allowed, wait_ms = self._take(
                keys=[BUCKET_PREFIX + bucket],
                args=[self.per_minute, self.per_minute / 60_000],
            )
        except redis.RedisError as exc:
            log.warning("rate limit not applied: Redis cannot be reached (%s)", exc)
            return Decision(allowed=True)
        if int(allowed):
            return Decision(allowed=True)
        return Decision(allowed=False, retry_after_s=max(1, math.ceil(int(wait_ms) / 1000)))

    def close(self) -> None:
        self._client.close()
