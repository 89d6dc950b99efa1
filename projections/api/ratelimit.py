"""Rate limits per caller, in Redis (a fixed window, shared by every query API process).

Redis is not on the path of correctness: when it is slow or down the limiter lets requests through (fails open)
and logs it, because refusing every read of balances is worse than serving them unthrottled for a while.
"""

from __future__ import annotations

import logging
import time

import redis

from projections.limits import RATE_LIMIT_REDIS_TIMEOUT_S

log = logging.getLogger("razao.query.ratelimit")
#: While Redis is failing, the limiter tries it again only this often.
REDIS_RETRY_INTERVAL_S = 5.0


class RateLimiter:
    def __init__(self, redis_url: str, requests_max: int, window_s: int, prefix: str = "razao-query") -> None:
        assert requests_max > 0 and window_s > 0
        self.requests_max, self.window_s, self.prefix = requests_max, window_s, prefix
        self._redis = redis.Redis.from_url(redis_url, socket_timeout=RATE_LIMIT_REDIS_TIMEOUT_S,
                                           socket_connect_timeout=RATE_LIMIT_REDIS_TIMEOUT_S)
        self._down_until = 0.0

    def hit(self, subject: str) -> int | None:
        """Counts a request; returns None when allowed, else the seconds until the window resets."""
        now = time.time()
        if now < self._down_until:
            return None
        window = int(now // self.window_s)
        key = f"{self.prefix}:{subject}:{window}"
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.incr(key)
            pipe.expire(key, self.window_s + 1)
            count = int(pipe.execute()[0])
        except redis.RedisError as exc:
            self._down_until = now + REDIS_RETRY_INTERVAL_S
            log.warning("rate limiter cannot reach Redis (%s); not limiting for %.0fs", exc, REDIS_RETRY_INTERVAL_S)
            return None
        if count > self.requests_max:
            return max(1, int((window + 1) * self.window_s - now))
        return None

    def close(self) -> None:
        self._redis.close()
