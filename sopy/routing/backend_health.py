"""Backend choice and health for one provider's upstream pool.

`BackendPicker` keeps, per configured backend URL, the requests in flight, the consecutive
failed requests and the rest it is taking. It picks a backend by least in-flight requests per
unit of weight (default) or by smooth weighted round-robin, never one that is resting.

Two kinds of rest, told apart because clients are answered differently:
- a cooldown, earned by failures: a backend whose requests fail `failures_to_trip` times in a row
  cools down for a period that doubles with each relapse; when it is over, exactly one request
  is let through as a probe, and only its success makes the backend healthy again. A 5xx's
  `Retry-After` extends that rest.
- a rate limit: a 429 is not a failure (the backend is up, it is just busy); its `Retry-After`
  holds the backend off for that long without counting toward a cooldown.
No rest lasts longer than `longest_cooldown`, whatever a backend asks for.

The pool's exchange records outcomes here; the pool tells it, on every configuration change,
which URLs its provider still has, so the state of a removed backend does not outlive it.
"""

import itertools
from collections.abc import Callable, Collection, Sequence

import attrs
import trio

LEAST_IN_FLIGHT = "least_in_flight"
ROUND_ROBIN = "round_robin"


@attrs.frozen
class CooldownPolicy:
    failures_to_trip: int = 3
    first_cooldown: float = 1.0
    longest_cooldown: float = 60.0


@attrs.define
class _BackendState:
    next_cooldown: float
    in_flight: int = 0
    failures: int = 0
    resting_until: float = 0.0
    rate_limited_until: float = 0.0
    tripped: bool = False
    probing: bool = False
    removed: bool = False
    round_robin_credit: int = 0


class BackendPicker:
    def __init__(
        self,
        strategy: str,
        policy: CooldownPolicy,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._strategy = strategy
        self._policy = policy
        self._clock = clock
        # Cooldowns started since this picker was made: a counter for the metrics.
        self.cooldowns_started = 0
        self._states: dict[str, _BackendState] = {}
        self._never_picked = _BackendState(policy.first_cooldown)
        self._tie_breaker = itertools.count()

    def pick(
        self, urls: Sequence[str], weights: Sequence[int], exclude: Collection[str] = ()
    ) -> str | None:
        """Choose a usable backend not in `exclude` and count it in flight; None if none is."""
        now = self._clock()
        candidates = [
            (url, weight)
            for url, weight in zip(urls, weights, strict=True)
            if url not in exclude and self._usable(self._peek(url), now)
        ]
        if not candidates:
            return None
        if self._strategy == ROUND_ROBIN:
            url = self._weighted_round_robin(candidates)
        else:
            url = self._least_in_flight(candidates)
        state = self._state(url)
        state.in_flight += 1
        state.probing = state.tripped
        return url

    def record_success(self, url: str) -> None:
        state = self._states.get(url)
        if state is None:
            return
        state.failures = 0
        state.tripped = state.probing = False
        state.next_cooldown = self._policy.first_cooldown

    def record_failure(
        self, url: str, retry_after: float | None = None, *, again: bool = False
    ) -> None:
        """A failed attempt; `again` when the same request already failed on `url`, which then
        does not count once more toward a cooldown (a failed probe still does)."""
        state = self._states.get(url)
        if state is None:
            return
        now = self._clock()
        if not again:
            state.failures += 1
        if state.probing or state.failures >= self._policy.failures_to_trip:
            state.resting_until = max(state.resting_until, now + state.next_cooldown)
            state.next_cooldown = min(state.next_cooldown * 2, self._policy.longest_cooldown)
            state.tripped = True
            state.probing = False
            self.cooldowns_started += 1
        if retry_after is not None:
            state.resting_until = max(state.resting_until, now + self._capped(retry_after))

    def record_rate_limit(self, url: str, retry_after: float | None) -> None:
        """A 429: no failure, but the backend is held off for its `Retry-After`, if it gave one."""
        state = self._states.get(url)
        if state is not None and retry_after is not None:
            until = self._clock() + self._capped(retry_after)
            state.rate_limited_until = max(state.rate_limited_until, until)

    def release(self, url: str) -> None:
        """The request on `url` is over; a probe that ended without a verdict may be retried."""
        state = self._states.get(url)
        if state is None:
            return
        state.in_flight -= 1
        state.probing = False
        if state.removed and not state.in_flight:
            del self._states[url]

    def keep_only(self, urls: Collection[str]) -> None:
        """Forget every backend not in `urls` (removed from the configuration), once its last
        request in flight is over."""
        for url, state in list(self._states.items()):
            state.removed = url not in urls
            if state.removed and not state.in_flight:
                del self._states[url]

    def seconds_until_usable(self, urls: Sequence[str]) -> float | None:
        """How long until some backend of `urls` can be picked again (None: one never will
        on its own, because a probe is already out, or `urls` is empty)."""
        now = self._clock()
        waits = [
            max(state.resting_until - now, state.rate_limited_until - now, 0.0)
            for state in map(self._peek, urls)
            if not state.probing
        ]
        return min(waits, default=None)

    def all_rate_limited(self, urls: Sequence[str]) -> bool:
        """Whether every backend of `urls` is held off by a rate limit."""
        now = self._clock()
        return all(self._peek(url).rate_limited_until > now for url in urls)

    def describe_unavailable(self, urls: Sequence[str]) -> str:
        now = self._clock()
        parts = []
        for url in urls:
            state = self._peek(url)
            if state.rate_limited_until > now:
                parts.append(f"{url} (rate limited {state.rate_limited_until - now:.1f} s more)")
            elif state.resting_until > now:
                parts.append(f"{url} (resting {state.resting_until - now:.1f} s more)")
            elif state.probing:
                parts.append(f"{url} (being probed)")
        return ", ".join(parts)

    def in_flight(self, url: str) -> int:
        return self._peek(url).in_flight

    def _peek(self, url: str) -> _BackendState:
        """The state of `url` for reading: a backend never picked yet has a fresh one."""
        return self._states.get(url) or self._never_picked

    def _state(self, url: str) -> _BackendState:
        state = self._states.get(url)
        if state is None:
            state = self._states[url] = _BackendState(self._policy.first_cooldown)
        return state

    def _capped(self, retry_after: float) -> float:
        return min(retry_after, self._policy.longest_cooldown)

    def _usable(self, state: _BackendState, now: float) -> bool:
        return state.resting_until <= now and state.rate_limited_until <= now and not state.probing

    def _least_in_flight(self, candidates: list[tuple[str, int]]) -> str:
        # Rotating the starting point spreads ties evenly instead of always favouring the first.
        start = next(self._tie_breaker) % len(candidates)
        rotated = candidates[start:] + candidates[:start]
        url, _ = min(rotated, key=lambda c: (self._peek(c[0]).in_flight + 1) / c[1])
        return url

    def _weighted_round_robin(self, candidates: list[tuple[str, int]]) -> str:
        """nginx's smooth weighted round-robin: weights 5,1,1 give a,a,b,a,c,a,a rather than
        a,a,a,a,a,b,c."""
        total = sum(weight for _, weight in candidates)
        for url, weight in candidates:
            self._state(url).round_robin_credit += weight
        url, _ = max(candidates, key=lambda c: self._state(c[0]).round_robin_credit)
        self._state(url).round_robin_credit -= total
        return url
