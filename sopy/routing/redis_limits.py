"""Per-key `rpm`, `tpm`, `max_parallel` and `token_budget` counted in Redis or Valkey
(`--limits redis://...`), so that they hold across every Sopy instance given the same URL.

The HTTP front asks `SharedLimits.admit` for each model request of a key that has one of those
limits (a key without them never reaches Redis), after the in-process decision
(`sopy.routing.key_limits`, which then leaves those limits to this module) has admitted it.
One server-side Lua script decides atomically on the server's clock, in one round trip, in the
order of the in-process decision: the budget's count below `token_budget`, the parallel count
below `max_parallel`, fewer than `rpm` requests in the sliding minute (a sorted set of
admission times: an rpm of 20 admits exactly 20 in any 60 s however many instances ask), and
fewer than `tpm` tokens in the minute (per-second sums, so the minute slides by whole seconds),
where it reserves the request's estimate. When the request ends, its `SharedHold` sends what
it used, off the request path (`run`): the parallel hold back, the reservation replaced by the
tokens used, those added to the budget's count. A parallel hold left by an instance that died
expires with the count, `PARALLEL_TTL_MS` after the key's last admission.

The budget's count is kept per count start (`usage_reset_at`), so a reset starts a new one; the
front seeds it from the usage records when it starts (`seed_budgets`), unless Redis has it.

When Redis cannot be reached, `admit` raises a 503 `limit_store_unavailable`: the front
refuses the request of a key whose `limit_failure` is `closed` (the default: its limits cannot
be enforced) and admits that of a key whose `limit_failure` is `open`, unlimited by these
counts meanwhile. Keys without such limits are served as ever.
"""

import itertools
import logging
import os
from collections.abc import Mapping
from typing import Any

import attrs
import coredis
import coredis.exceptions
import trio

from sopy.errors import InsufficientQuota, KeyRateLimited, LimitStoreUnavailable
from sopy.routing.key_limits import KeyPolicy

log = logging.getLogger(__name__)

# How long a call may take before Redis counts as unreachable for this request.
REDIS_TIMEOUT = 1.0
# A parallel count not touched for this long is dropped (holds of an instance that died).
PARALLEL_TTL_MS = 3_600_000
SETTLEMENT_QUEUE = 10_000

# KEYS: rpm window, parallel count, tpm seconds, budget count.
# ARGV: rpm, max_parallel, unique member, parallel ttl, tpm, estimate, token_budget (0: none).
# Returns {0, second reserved in} when admitted; else {1, in flight} over max_parallel,
# {2, µs to wait} over rpm, {3, spent} over the budget, {4, tokens, µs to wait} over tpm.
_ADMIT = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local second = tonumber(now_parts[1])
local rpm, max_parallel = tonumber(ARGV[1]), tonumber(ARGV[2])
local tpm, estimate, budget = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
if budget > 0 then
    local spent = tonumber(redis.call('GET', KEYS[4]) or '0')
    if spent >= budget then
        return {3, spent}
    end
end
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
end
if tpm > 0 then
    local fields = redis.call('HGETALL', KEYS[3])
    local total, oldest = 0, second
    for i = 1, #fields, 2 do
        local at = tonumber(fields[i])
        if at <= second - 60 then
            redis.call('HDEL', KEYS[3], fields[i])
        else
            total = total + tonumber(fields[i + 1])
            if at < oldest then oldest = at end
        end
    end
    if total >= tpm then
        return {4, total, (oldest + 60) * 1000000 - now}
    end
end
if rpm > 0 then
    redis.call('ZADD', KEYS[1], now, ARGV[3])
    redis.call('PEXPIRE', KEYS[1], 61000)
end
if tpm > 0 then
    redis.call('HINCRBY', KEYS[3], second, estimate)
    redis.call('PEXPIRE', KEYS[3], 61000)
end
if max_parallel > 0 then
    redis.call('INCR', KEYS[2])
    redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[4]))
end
return {0, second}
"""
# KEYS: parallel count, tpm seconds, budget count (each may be unused).
# ARGV: give back a parallel hold (1/0), the second the estimate was reserved in (0: add to
# the current second), tokens to add there, tokens to add to the budget's count.
_SETTLE = """
if ARGV[1] == '1' and redis.call('DECR', KEYS[1]) < 0 then
    redis.call('SET', KEYS[1], 0)
end
local tokens = tonumber(ARGV[3])
if tokens ~= 0 then
    local second = ARGV[2]
    if second == '0' then
        second = redis.call('TIME')[1]
        redis.call('HINCRBY', KEYS[2], second, tokens)
        redis.call('PEXPIRE', KEYS[2], 61000)
    elseif redis.call('HEXISTS', KEYS[2], second) == 1 then
        redis.call('HINCRBY', KEYS[2], second, tokens)
    end
end
local spent = tonumber(ARGV[4])
if spent > 0 then
    redis.call('INCRBY', KEYS[3], spent)
end
return 0
"""
_FAILURES = (coredis.exceptions.RedisError, TimeoutError, OSError, trio.TooSlowError)


@attrs.frozen
class _KeyNames:
    rpm: str
    parallel: str
    tokens: str
    spent: str

    @classmethod
    def of(cls, policy: KeyPolicy) -> "_KeyNames":
        prefix = f"sopy:key:{policy.key_id}"
        spent = _spent_name(policy.key_id, policy.limits.usage_reset_at)
        return cls(f"{prefix}:rpm", f"{prefix}:parallel", f"{prefix}:tpm", spent)


def _spent_name(key_id: int, reset_at: float) -> str:
    """A budget's count: a reset starts a new one, so its name holds when it began."""
    return f"sopy:key:{key_id}:spent:{reset_at!r}"


@attrs.frozen
class _Settlement:
    """What one request's end (or one answer over a held connection) changes in Redis."""

    keys: _KeyNames
    release: bool
    second: int
    tokens: int
    spent: int


class SharedLimits:
    """The client of one Redis; `run` must be running while the front admits requests."""

    def __init__(self, url: str, refusals: dict[str, float]) -> None:
        # The front's count of refusals by reason (`KeyGate.refusals`), for /metrics.
        self._refusals = refusals
        self._client: coredis.Redis[Any] = coredis.Redis.from_url(
            url, connect_timeout=REDIS_TIMEOUT, stream_timeout=REDIS_TIMEOUT
        )
        self._admit_script = self._client.register_script(_ADMIT)
        self._settle_script = self._client.register_script(_SETTLE)
        # Members of the rpm windows must be unique across instances and requests.
        self._instance = os.urandom(6).hex()
        self._serial = itertools.count()
        self._settlements_send, self._settlements = trio.open_memory_channel[_Settlement](
            SETTLEMENT_QUEUE
        )
        # Settlements queued and sent so far: an admission first waits for those queued
        # before it, so a client's next request never finds its last one still holding.
        self._queued = 0
        self._sent = 0
        self._progress = trio.Condition()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the client open and settle requests as they end."""
        async with self._client:
            task_status.started()
            async for settlement in self._settlements:
                keys = settlement.keys
                try:
                    with trio.fail_after(REDIS_TIMEOUT):
                        await self._settle_script(
                            keys=[keys.parallel, keys.tokens, keys.spent],
                            args=[
                                int(settlement.release),
                                settlement.second,
                                settlement.tokens,
                                settlement.spent,
                            ],
                        )
                except _FAILURES as exc:
                    log.warning("cannot record a request's end in the limit store: %s", exc)
                async with self._progress:
                    self._sent += 1
                    self._progress.notify_all()

    async def seed_budgets(self, starts: Mapping[int, float], spent: Mapping[int, int]) -> None:
        """Each budget's count from the usage records, where Redis has none (a new or emptied
        Redis); a count Redis has is the exact one and stays."""
        try:
            with trio.fail_after(REDIS_TIMEOUT * 5):
                for key_id, reset_at in starts.items():
                    name = f"sopy:key:{key_id}:spent:{reset_at!r}"
                    await self._client.set(
                        name, spent.get(key_id, 0), condition=coredis.PureToken.NX
                    )
        except _FAILURES as exc:
            log.warning("cannot seed the keys' budget counts in the limit store: %s", exc)

    async def admit(self, policy: KeyPolicy, estimate: int) -> "SharedAdmission":
        """Admit one request of a key with shared limits, expected to use `estimate` tokens,
        or raise the refusal; the result is told what the request used."""
        limits = policy.limits
        keys = _KeyNames.of(policy)
        try:
            with trio.fail_after(REDIS_TIMEOUT):
                if self._sent < self._queued:
                    await self._sent_up_to(self._queued)
                answer: Any = await self._admit_script(
                    keys=[keys.rpm, keys.parallel, keys.tokens, keys.spent],
                    args=[
                        limits.rpm or 0,
                        limits.max_parallel or 0,
                        f"{self._instance}:{next(self._serial)}",
                        PARALLEL_TTL_MS,
                        limits.tpm or 0,
                        estimate,
                        limits.token_budget or 0,
                    ],
                )
        except _FAILURES as exc:
            raise LimitStoreUnavailable(
                "This API key's limits are kept in Sopy's shared limit store, which cannot be "
                "reached just now, so the request was not admitted; retry in a moment. (Keys "
                "without limits are not affected.)",
                retry_after=1,
            ) from exc
        verdict, *amounts = (int(part) for part in answer)
        if verdict != 0:
            raise self._refusal(policy, verdict, amounts)
        return SharedAdmission(
            self,
            keys,
            parallel=limits.max_parallel is not None,
            second=amounts[0],
            reserved=estimate if limits.tpm is not None else None,
        )

    async def _sent_up_to(self, queued: int) -> None:
        async with self._progress:
            while self._sent < queued:
                await self._progress.wait()

    def _refusal(
        self, policy: KeyPolicy, verdict: int, amounts: list[int]
    ) -> InsufficientQuota | KeyRateLimited:
        limits = policy.limits
        if verdict == 3:
            self._refusals["budget"] += 1
            return InsufficientQuota(
                f"This API key has used its token budget of {limits.token_budget} tokens "
                f"({amounts[0]} used since its last reset). Ask an admin to raise it or to "
                "reset its usage (update_user_api_key --reset-usage)."
            )
        if verdict == 1:
            self._refusals["parallel"] += 1
            return KeyRateLimited(
                f"This API key has {amounts[0]} requests in flight across all gateway "
                f"instances, its limit (max_parallel {limits.max_parallel}); retry when one "
                "has finished.",
                retry_after=1,
            )
        if verdict == 2:
            self._refusals["rpm"] += 1
            wait = max(amounts[0], 0) / 1_000_000
            return KeyRateLimited(
                f"Rate limit reached for this API key on requests per minute: limit "
                f"{limits.rpm}. Retry after {wait:.1f} s.",
                retry_after=wait,
            )
        self._refusals["tpm"] += 1
        wait = max(amounts[1], 0) / 1_000_000
        return KeyRateLimited(
            f"Rate limit reached for this API key on tokens per minute: limit {limits.tpm}, "
            f"{amounts[0]} used or reserved. Retry after {wait:.1f} s.",
            retry_after=wait,
        )

    def settle(self, settlement: _Settlement) -> None:
        try:
            self._settlements_send.send_nowait(settlement)
            self._queued += 1
        except trio.WouldBlock:
            log.warning("too many request ends waiting to be recorded in the limit store")


class SharedAdmission:
    """An admitted request's hold on the shared counts (`sopy.routing.key_limits.SharedHold`)."""

    __slots__ = ("_keys", "_limits", "_parallel", "_reserved", "_second")

    def __init__(
        self,
        limits: SharedLimits,
        keys: _KeyNames,
        *,
        parallel: bool,
        second: int,
        reserved: int | None,
    ) -> None:
        self._limits = limits
        self._keys = keys
        # Whether it holds one of the key's parallel requests.
        self._parallel = parallel
        # The tokens reserved for it in the tpm window's `second` (None: the key has no tpm).
        self._second = second
        self._reserved = reserved

    def record(self, used: int) -> None:
        tokens = 0 if self._reserved is None else used
        self._limits.settle(_Settlement(self._keys, False, 0, tokens, used))

    def finish(self, used: int | None, succeeded: bool) -> None:
        correction = 0
        if self._reserved is not None:
            if used is not None:
                correction = used - self._reserved
            elif not succeeded:
                # An answer that reported no usage keeps its estimate only if it succeeded.
                correction = -self._reserved
        self._limits.settle(
            _Settlement(self._keys, self._parallel, self._second, correction, used or 0)
        )
