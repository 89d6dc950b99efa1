"""Rate limits: moving windows in Redis (the `limits` package, async), per principal and per client address.

Each request is counted twice, in one Redis round trip: against its principal (limits by tier, customer or
internal, stricter on money routes) and against its client address. Requests with a bad or no token count
against their address only, so token guessing is limited too. A request that moves many transfers (a linked
batch, a bulk request) is then charged its other transfers against its principal's money limit (``charge``):
principal limits count money movements, address limits count requests.

The round trip is a pipeline of the `limits` package's own moving-window script (``acquire_moving_window``) on
its own keys, sent through its own client over a bounded connection pool: the data in Redis is exactly what
``limits`` reads and writes. Checks of concurrent requests are coalesced: everything queued during one turn of
the event loop goes out in one pipeline (group commit, for Redis). Measured under load, two separate script calls
per request (each through redis-py's per-call argument inspection, each on its own connection) were the most
expensive part of a request.

When Redis fails, the limiter switches to an in-process moving window with the same limits (ADR 0005): it
logs a warning, counts the switch in a metric, and retries Redis every few seconds in the background. The API
stays up and protected; only the sharing of counters between API processes is lost meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Literal

import limits
import redis.asyncio
import redis.exceptions
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

from commands.api.auth import Principal
from commands.api.errors import ApiError
from commands.api.limits import REDIS_CONNECTIONS_MAX, REDIS_RETRY_INTERVAL_S, REDIS_TIMEOUT_S
from commands.api.metrics import ApiMetrics
from commands.api.settings import ApiSettings, rate_limit_scope

log = logging.getLogger(__name__)

Tier = Literal["customer", "internal", "address"]


@dataclass(frozen=True, slots=True)
class _Check:
    scope: str
    item: limits.RateLimitItem
    identifiers: tuple[str, ...]
    cost: int = 1


def _tier(principal: Principal) -> Tier:
    return "customer" if principal.is_customer else "internal"


class RateLimiter:
    """Counts requests in Redis, or in process while Redis is unreachable."""

    def __init__(self, settings: ApiSettings, metrics: ApiMetrics) -> None:
        tiers: tuple[Tier, ...] = ("customer", "internal", "address")
        self.items = {
            (tier, money): limits.parse(getattr(settings, rate_limit_scope(tier, money)))
            for tier in tiers for money in (False, True)
        }
        self.metrics = metrics
        # Nothing connects here: redis-py connects on first use. A blocking pool bounds the connections; waiting
        # longer than the timeout for one counts as a Redis failure (and falls back).
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            settings.redis_url, max_connections=REDIS_CONNECTIONS_MAX, timeout=REDIS_TIMEOUT_S,
            socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S,
        )
        self.redis = RedisStorage("async+" + settings.redis_url, implementation="redispy",
                                  key_prefix=settings.api_rate_limit_key_prefix, connection_pool=pool)  # type: ignore[arg-type]
        self._client = self.redis.bridge.get_connection()
        self._acquire_script = self.redis.bridge.lua_acquire_moving_window
        self._pending: list[tuple[str, int, int, int, asyncio.Future[bool]]] = []
        self._flush_scheduled = False
        self._flushes: set[asyncio.Task[None]] = set()
        self.memory = MemoryStorage()
        self._redis_limiter = MovingWindowRateLimiter(self.redis)
        self._memory_limiter = MovingWindowRateLimiter(self.memory)
        self.degraded = False
        self._retry_task: asyncio.Task[None] | None = None

    @property
    def backend(self) -> str:
        return "memory-fallback" if self.degraded else "redis"

    async def start(self) -> None:
        """Finds out whether Redis answers; if not, starts degraded (the API still starts)."""
        if not await self._redis_ok():
            self._degrade("Redis did not answer at start")

    async def close(self) -> None:
        if self._retry_task is not None:
            self._retry_task.cancel()
            try:
                await self._retry_task
            except asyncio.CancelledError:
                pass
        try:
            await self._client.aclose()
        except Exception as exc:  # closing a broken connection may fail; nothing to keep
            log.debug("closing the rate-limit Redis client: %r", exc)

    async def check(self, principal: Principal | None, address: str, *, money: bool) -> None:
        """Counts one request; raises ``ApiError(API_RATE_LIMITED)`` with Retry-After when over a limit."""
        checks = [_Check("address", self.items[("address", money)], ("a", "money" if money else "all", address))]
        if principal is not None:
            tier = _tier(principal)
            checks.append(_Check(tier, self.items[(tier, money)], ("p", "money" if money else "all", principal.sub)))
        await self._enforce(checks)

    async def charge(self, principal: Principal, cost: int) -> None:
        """Counts ``cost`` more money movements against the principal (the rest of a request of many transfers,
        after ``check`` counted its first). All or nothing: a refusal counts none of them."""
        if cost <= 0:
            return
        tier = _tier(principal)
        await self._enforce([_Check(tier, self.items[(tier, True)], ("p", "money", principal.sub), cost)])

    async def _enforce(self, checks: list[_Check]) -> None:
        allowed = await self._hit(checks)
        for check, ok in zip(checks, allowed, strict=True):
            if not ok:
                self.metrics.rate_limited.labels(check.scope).inc()
                raise await self._refusal(check)

    async def _hit(self, checks: list[_Check]) -> list[bool]:
        if not self.degraded:
            try:
                return await self._redis_hit(checks)
            except Exception as exc:  # any storage failure: fall back rather than fail the request
                self._degrade(f"Redis failed: {exc!r}")
        return [await self._memory_limiter.hit(c.item, *c.identifiers, cost=c.cost) for c in checks]

    async def _redis_hit(self, checks: list[_Check]) -> list[bool]:
        """``MovingWindowRateLimiter.hit`` for every check, coalesced with the checks of concurrent requests."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[bool]] = []
        for c in checks:
            future: asyncio.Future[bool] = loop.create_future()
            key = self.redis.bridge.prefixed_key(c.item.key_for(*c.identifiers))
            self._pending.append((key, c.item.amount, c.item.get_expiry(), c.cost, future))
            futures.append(future)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush_soon)
        results: list[bool] = []
        failure: Exception | None = None
        for future in futures:  # await every one, so no failed future is left unretrieved
            try:
                results.append(await future)
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            raise failure
        return results

    def _flush_soon(self) -> None:
        batch, self._pending, self._flush_scheduled = self._pending, [], False
        task = asyncio.get_running_loop().create_task(self._flush(batch))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush(self, batch: list[tuple[str, int, int, int, asyncio.Future[bool]]]) -> None:
        """One pipeline for every check queued during one turn of the event loop (see the module doc)."""
        try:
            results = await self._pipeline(batch)
        except Exception as exc:
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (*_, future), acquired in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(bool(acquired))

    async def _pipeline(self, batch: list[tuple[str, int, int, int, asyncio.Future[bool]]]) -> list[object]:
        for attempt in (1, 2):
            now = time.time()
            pipeline = self._client.pipeline(transaction=False)
            for key, amount, expiry, cost, _ in batch:
                pipeline.execute_command("EVALSHA", self._acquire_script.sha, 1, key, now, amount, expiry, cost)
            try:
                return list(await pipeline.execute())
            except redis.exceptions.NoScriptError:
                if attempt == 2:
                    raise
                await self._client.script_load(self._acquire_script.script)  # a restarted Redis forgot it
        raise AssertionError("unreachable")

    async def _refusal(self, check: _Check) -> ApiError:
        now = time.time()
        window_s = check.item.get_expiry()
        reset_at = now + window_s
        remaining = 0
        limiter = self._memory_limiter if self.degraded else self._redis_limiter
        try:
            stats = await limiter.get_window_stats(check.item, *check.identifiers)
            # A request of many transfers may be refused with some of the window left, just not enough of it.
            reset_at, remaining = stats.reset_time, max(0, min(stats.remaining, check.cost - 1))
        except Exception as exc:  # the headers are advice: the worst case (a full window) is still right
            log.debug("rate-limit window stats unavailable: %r", exc)
        retry_after_s = max(1, math.ceil(reset_at - now))
        headers = {
            "Retry-After": str(retry_after_s),
            "RateLimit-Limit": str(check.item.amount),
            "RateLimit-Remaining": str(remaining),
            "RateLimit-Reset": str(retry_after_s),
            "RateLimit-Policy": f"{check.item.amount};w={window_s}",
        }
        who = "this client address" if check.scope == "address" else "this principal"
        what = f" by this request's {check.cost + 1} transfers" if check.cost > 1 else ""
        return ApiError("API_RATE_LIMITED", f"rate limit of {check.item} exceeded for {who}{what}; retry later",
                        headers=headers)

    def _degrade(self, reason: str) -> None:
        if self.degraded:
            return
        self.degraded = True
        self.metrics.rate_limit_fallbacks.inc()
        self.metrics.rate_limit_degraded.set(1)
        log.warning("rate limits fall back to in-process counting (%s); retrying Redis every %.0f s",
                    reason, REDIS_RETRY_INTERVAL_S)
        if self._retry_task is None or self._retry_task.done():
            self._retry_task = asyncio.get_running_loop().create_task(self._retry_redis())

    async def _redis_ok(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self.redis.check(), timeout=2 * REDIS_TIMEOUT_S))
        except Exception:
            return False

    async def _retry_redis(self) -> None:
        while self.degraded:
            await asyncio.sleep(REDIS_RETRY_INTERVAL_S)
            if await self._redis_ok():
                self.degraded = False
                self.metrics.rate_limit_degraded.set(0)
                log.warning("rate limits are counted in Redis again")
