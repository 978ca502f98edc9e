"""Per-key `rpm` and `max_parallel` counted in Redis or Valkey (`--limits redis://...`), so that
they hold across every Sopy instance given the same URL.

The HTTP front asks `SharedLimits.admit` for each model request of a key that has an `rpm` or a
`max_parallel` (a key without either never reaches Redis), after the in-process decision
(`sopy.routing.key_limits`, which then leaves those two limits to this module) has admitted it.
One server-side Lua script decides atomically on the server's clock, in one round trip: the
parallel count below `max_parallel`, and fewer than `rpm` requests in the sliding minute (a
sorted set of admission times, so an rpm of 20 admits exactly 20 in any 60 s however many
instances ask). An admitted request's parallel hold is given back when it ends
(`release`, sent off the request path by `run`); a hold left by an instance that died expires
with the count's key, `PARALLEL_TTL_MS` after the key's last admission.

When Redis cannot be reached, `admit` raises a 503 `limit_store_unavailable`: the front
refuses the request of a key whose `limit_failure` is `closed` (the default: its limits cannot
be enforced) and admits that of a key whose `limit_failure` is `open`, which then counts
against its in-process limits only. Keys without `rpm` or `max_parallel` are served as ever.
"""

import itertools
import logging
import os
from collections.abc import Callable
from typing import Any

import coredis
import coredis.exceptions
import trio

from sopy.errors import KeyRateLimited, LimitStoreUnavailable
from sopy.routing.key_limits import KeyPolicy

log = logging.getLogger(__name__)

# How long a call may take before Redis counts as unreachable for this request.
REDIS_TIMEOUT = 1.0
# A parallel count not touched for this long is dropped (holds of an instance that died).
PARALLEL_TTL_MS = 3_600_000
RELEASE_QUEUE = 10_000

# Returns {0, 0} when admitted, {1, in flight} over max_parallel, {2, µs to wait} over rpm.
_ADMIT = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local rpm = tonumber(ARGV[1])
local max_parallel = tonumber(ARGV[2])
if max_parallel > 0 then
    local in_flight = tonumber(redis.call('GET', KEYS[2]) or '0')
    if in_flight >= max_parallel then
        return {1, in_flight}
    end
end
if rpm > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000000)
    if redis.call('ZCARD', KEYS[1]) >= rpm then
        local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
        return {2, tonumber(oldest[2]) + 60000000 - now}
    end
    redis.call('ZADD', KEYS[1], now, ARGV[3])
    redis.call('PEXPIRE', KEYS[1], 61000)
end
if max_parallel > 0 then
    redis.call('INCR', KEYS[2])
    redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[4]))
end
return {0, 0}
"""
_RELEASE = """
if redis.call('DECR', KEYS[1]) < 0 then
    redis.call('SET', KEYS[1], 0)
end
return 0
"""
_FAILURES = (coredis.exceptions.RedisError, TimeoutError, OSError)


def counted_here(policy: KeyPolicy) -> bool:
    """Whether a key has a limit that `SharedLimits` counts."""
    return policy.limits.rpm is not None or policy.limits.max_parallel is not None


class SharedLimits:
    """The client of one Redis; `run` must be running while the front admits requests."""

    def __init__(self, url: str, refusals: dict[str, float]) -> None:
        # The front's count of refusals by reason (`KeyGate.refusals`), for /metrics.
        self._refusals = refusals
        self._client: coredis.Redis[Any] = coredis.Redis.from_url(
            url, connect_timeout=REDIS_TIMEOUT, stream_timeout=REDIS_TIMEOUT
        )
        self._admit_script = self._client.register_script(_ADMIT)
        self._release_script = self._client.register_script(_RELEASE)
        # Members of the rpm windows must be unique across instances and requests.
        self._instance = os.urandom(6).hex()
        self._serial = itertools.count()
        self._releases_send, self._releases = trio.open_memory_channel[str](RELEASE_QUEUE)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the client open and give back parallel holds as requests end."""
        async with self._client:
            task_status.started()
            async for key in self._releases:
                try:
                    with trio.fail_after(REDIS_TIMEOUT):
                        await self._release_script(keys=[key], args=[])
                except (*_FAILURES, trio.TooSlowError) as exc:
                    log.warning("cannot give back a parallel hold in Redis: %s", exc)

    async def admit(self, policy: KeyPolicy) -> Callable[[], None] | None:
        """Admit one request of a key with `rpm` or `max_parallel`, or raise the refusal;
        returns what gives its parallel hold back when it ends (None: it holds none)."""
        limits = policy.limits
        prefix = f"sopy:key:{policy.key_id}"
        parallel_key = prefix + ":parallel"
        try:
            with trio.fail_after(REDIS_TIMEOUT):
                answer: Any = await self._admit_script(
                    keys=[prefix + ":rpm", parallel_key],
                    args=[
                        limits.rpm or 0,
                        limits.max_parallel or 0,
                        f"{self._instance}:{next(self._serial)}",
                        PARALLEL_TTL_MS,
                    ],
                )
        except (*_FAILURES, trio.TooSlowError) as exc:
            raise LimitStoreUnavailable(
                "This API key's rate limits are kept in Sopy's shared limit store, which cannot "
                "be reached just now, so the request was not admitted; retry in a moment. "
                "(Keys without rpm or max_parallel are not affected.)",
                retry_after=1,
            ) from exc
        verdict, amount = (int(part) for part in answer)
        if verdict == 1:
            self._refusals["parallel"] += 1
            raise KeyRateLimited(
                f"This API key has {amount} requests in flight across all gateway instances, "
                f"its limit (max_parallel {limits.max_parallel}); retry when one has finished.",
                retry_after=1,
            )
        if verdict == 2:
            self._refusals["rpm"] += 1
            wait = max(amount, 0) / 1_000_000
            raise KeyRateLimited(
                f"Rate limit reached for this API key on requests per minute: limit "
                f"{limits.rpm}. Retry after {wait:.1f} s.",
                retry_after=wait,
            )
        if limits.max_parallel is None:
            return None
        return lambda: self._release(parallel_key)

    def _release(self, parallel_key: str) -> None:
        try:
            self._releases_send.send_nowait(parallel_key)
        except trio.WouldBlock:
            log.warning("too many parallel holds waiting to be given back to Redis; one expires")
