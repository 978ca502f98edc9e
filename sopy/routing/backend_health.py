"""Backend choice and health for one provider's upstream pool.

`BackendPicker` keeps, per backend URL, the requests in flight, the consecutive failures and the
cooldown state. It picks a backend by least in-flight requests per unit of weight (default) or by
smooth weighted round-robin, never one that is cooling down. A backend that fails
`failures_to_trip` times in a row cools down for a period that doubles with each relapse; when
the period is over, exactly one request is let through as a probe, and only its success makes
the backend healthy again. A `Retry-After` from a backend holds it off for that long.
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
    tripped: bool = False
    probing: bool = False
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
        self._states: dict[str, _BackendState] = {}
        self._tie_breaker = itertools.count()

    def pick(
        self, urls: Sequence[str], weights: Sequence[int], exclude: Collection[str] = ()
    ) -> str | None:
        """Choose a usable backend not in `exclude` and count it in flight; None if none is."""
        now = self._clock()
        candidates = [
            (url, weight)
            for url, weight in zip(urls, weights, strict=True)
            if url not in exclude and self._usable(self._state(url), now)
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
        state = self._state(url)
        state.failures = 0
        state.tripped = state.probing = False
        state.next_cooldown = self._policy.first_cooldown

    def record_failure(self, url: str, retry_after: float | None = None) -> None:
        state = self._state(url)
        now = self._clock()
        state.failures += 1
        if state.probing or state.failures >= self._policy.failures_to_trip:
            state.resting_until = now + state.next_cooldown
            state.next_cooldown = min(state.next_cooldown * 2, self._policy.longest_cooldown)
            state.tripped = True
            state.probing = False
        if retry_after is not None:
            state.resting_until = max(state.resting_until, now + retry_after)

    def release(self, url: str) -> None:
        """The request on `url` is over; a probe that ended without a verdict may be retried."""
        state = self._state(url)
        state.in_flight -= 1
        state.probing = False

    def seconds_until_usable(self, urls: Sequence[str]) -> float | None:
        """How long until some backend of `urls` can be picked again (None: one never will
        on its own, because a probe is already out)."""
        now = self._clock()
        waits = [
            max(state.resting_until - now, 0.0)
            for state in map(self._state, urls)
            if not state.probing
        ]
        return min(waits, default=None)

    def describe_unavailable(self, urls: Sequence[str]) -> str:
        now = self._clock()
        parts = []
        for url in urls:
            state = self._state(url)
            if state.resting_until > now:
                parts.append(f"{url} (resting {state.resting_until - now:.1f} s more)")
            elif state.probing:
                parts.append(f"{url} (being probed)")
        return ", ".join(parts)

    def in_flight(self, url: str) -> int:
        return self._state(url).in_flight

    def _state(self, url: str) -> _BackendState:
        state = self._states.get(url)
        if state is None:
            state = self._states[url] = _BackendState(self._policy.first_cooldown)
        return state

    def _usable(self, state: _BackendState, now: float) -> bool:
        return state.resting_until <= now and not state.probing

    def _least_in_flight(self, candidates: list[tuple[str, int]]) -> str:
        # Rotating the starting point spreads ties evenly instead of always favouring the first.
        start = next(self._tie_breaker) % len(candidates)
        rotated = candidates[start:] + candidates[:start]
        url, _ = min(rotated, key=lambda c: (self._state(c[0]).in_flight + 1) / c[1])
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
