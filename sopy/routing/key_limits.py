"""The per-key decision: whether a user key may make a model request now, and the counts that
decide it. Sans-IO: it reads two clocks it is given and does no I/O and no await, so the HTTP
front calls it inline on the request path, from memory only.

The HTTP front asks it for every model request, in this order, and answers its refusals:
- `check_expiry`: a key past its `expires_at` (Unix seconds, the wall clock) is a 401
  `key_expired` on every authenticated route;
- `allowed_routes`: the model's provider chain (the provider, then its fallbacks) is handed to
  the relay only through this, so no route and no fallback hop reaches a model the key's
  `models` does not name (403 `model_not_allowed`). The name checked is the one the client
  sent, the mapped model name: a provider's own name for it (`upstream_model`, an alias) is the
  admin's business and neither allows nor refuses anything. Every hop of a chain serves that
  same model name, so the one check covers them all. A Responses follow-up
  (`previous_response_id`) names its model too and is checked the same way; the WebSocket
  mode checks the model of every `response.create` it relays (`check_model`);
- `admit`: in order, the `token_budget` (429 `insufficient_quota` once the tokens counted
  since the key's last reset reach it), `max_parallel` (requests in flight), `rpm` and `tpm`
  (429 `rate_limit_exceeded`, with `Retry-After` and OpenAI's `x-ratelimit-*` headers). An
  admitted request holds an `Admission` until it ends (`Admission.finish`), with the tokens it
  used.

Windows are sliding windows of the last 60 s on the monotonic clock: `rpm` keeps the time of
each request admitted (at most `rpm` entries), so an rpm of 5 admits exactly 5 in any minute,
whatever the concurrency (the front runs on one thread and decides without awaiting). `tpm`
keeps each admitted request's tokens: an estimate reserved when it is admitted (the body's
bytes / 4 for the prompt, plus its `max_tokens`, `max_completion_tokens` or
`max_output_tokens`, else `DEFAULT_OUTPUT_ESTIMATE`), replaced by the provider's count
(input plus output tokens) when it ends. A request is admitted while the window holds fewer
tokens than `tpm`, so a burst overshoots by at most one request's estimate. An answer that
reported no usage keeps its estimate if it succeeded and counts nothing if it failed.

Budgets count the input plus output tokens the provider reported since the key's last reset
(`update_user_api_key` with `reset_usage`, or its getting a budget it did not have; a new
key's count starts at its creation). The counts live here, seeded before the front serves from
the usage records (`seed_budgets`, answered by the usage actor), then kept current as requests
end, so they survive a restart (records past `--usage-retention-days` no longer count). A
budget is checked against requests that have ended: those in flight when it is reached still
finish, so a key can end over it by what they use. Changes of limits apply from the next
request: the front builds the policies anew with every configuration snapshot (`policies`),
and a key whose `usage_reset_at` moved starts its count over.

A key without limits has no policy: the front's one `None` check is all it costs.

With `--limits redis://...` the gate leaves `rpm`, `tpm`, `max_parallel` and `token_budget` to
`sopy.routing.redis_limits` (`KeyGate(shared_counts=True)`), which counts them across instances;
an admission then tells its `SharedHold` what the request used.
"""

import collections
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

import attrs

from sopy.errors import InsufficientQuota, KeyExpired, KeyRateLimited, ModelNotAllowed
from sopy.messages import KeyLimits, ProviderRoute, TokenCounts, UserApiKeyRecord

WINDOW_SECONDS = 60.0
BYTES_PER_TOKEN = 4
DEFAULT_OUTPUT_ESTIMATE = 1024
_OUTPUT_LIMIT_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
# The `reason` label of `sopy_limit_refusals_total`.
REFUSAL_REASONS = ("expired", "model", "budget", "parallel", "rpm", "tpm")

Clock = Callable[[], float]


@attrs.frozen
class KeyPolicy:
    """The limits of one key that has some, as the decision reads them."""

    key_id: int
    limits: KeyLimits
    models: frozenset[str] | None

    @classmethod
    def of(cls, key_id: int, limits: KeyLimits) -> "KeyPolicy":
        models = None if limits.models is None else frozenset(limits.models)
        return cls(key_id, limits, models)


def policies(keys: Iterable[UserApiKeyRecord]) -> dict[int, KeyPolicy]:
    """The policy of every key that has a limit; the others have none."""
    return {key.id: KeyPolicy.of(key.id, key.limits) for key in keys if not key.limits.unlimited}


def token_estimate(body: bytes, payload: Mapping[str, object] | None) -> int:
    """The tokens a request is expected to use: its prompt as the body's bytes / 4, and its
    answer as its own output limit, else `DEFAULT_OUTPUT_ESTIMATE`. A form upload (no JSON
    payload: audio, images) reserves the output estimate only, as its bytes are not text."""
    prompt = 0 if payload is None else len(body) // BYTES_PER_TOKEN
    for field in _OUTPUT_LIMIT_FIELDS:
        value = None if payload is None else payload.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return prompt + value
    return prompt + DEFAULT_OUTPUT_ESTIMATE


def total_tokens(tokens: TokenCounts) -> int:
    """Input plus output tokens: cached input and reasoning are parts of those already."""
    return tokens.input_tokens + tokens.output_tokens


class _Window:
    """The entries `[at, amount]` of the last `WINDOW_SECONDS`, and their total."""

    __slots__ = ("entries", "total")

    def __init__(self) -> None:
        self.entries: collections.deque[list[float]] = collections.deque()
        self.total = 0.0

    def expire(self, now: float) -> None:
        oldest = now - WINDOW_SECONDS
        entries = self.entries
        while entries and entries[0][0] <= oldest:
            self.total -= entries.popleft()[1]

    def add(self, now: float, amount: float) -> list[float]:
        entry = [now, amount]
        self.entries.append(entry)
        self.total += amount
        return entry

    def settle(self, entry: list[float], amount: float) -> None:
        """Replace a reservation by what was used, if it is still in the window."""
        if self.entries and self.entries[0][0] <= entry[0]:
            self.total += amount - entry[1]
            entry[1] = amount

    def seconds_until_below(self, limit: float, now: float) -> float:
        """How long until the total drops below `limit`, as entries leave the window."""
        total = self.total
        for at, amount in self.entries:
            if total < limit:
                break
            total -= amount
            waited = at + WINDOW_SECONDS - now
            if total < limit:
                return max(waited, 0.0)
        return 0.0

    def seconds_until_empty(self, now: float) -> float:
        return max(self.entries[-1][0] + WINDOW_SECONDS - now, 0.0) if self.entries else 0.0


class _KeyState:
    """One key's counts."""

    __slots__ = ("in_flight", "requests", "reset_at", "spent", "tokens")

    def __init__(self, reset_at: float) -> None:
        self.requests = _Window()
        self.tokens = _Window()
        self.in_flight = 0
        self.spent = 0
        self.reset_at = reset_at


class SharedHold(Protocol):
    """An admitted request's hold on counts kept elsewhere (`sopy.routing.redis_limits`)."""

    def record(self, used: int) -> None:
        """`used` tokens of one more answer over a held connection."""

    def finish(self, used: int | None, succeeded: bool) -> None:
        """The request ended, having used `used` tokens (None: not reported)."""


class AdmissionHold(Protocol):
    """What the relay does with an admitted request's hold: an `Admission` here, or, in a
    worker process, one held by the primary's gate (`sopy.actors.primary_link`)."""

    def record(self, tokens: TokenCounts) -> None: ...

    def finish(self, tokens: TokenCounts | None, succeeded: bool) -> None: ...


class Admission:
    """An admitted request's hold on its key's counts, until `finish`."""

    __slots__ = ("_clock", "_finished", "_limits", "_reservation", "_state", "shared")

    def __init__(
        self, state: _KeyState, limits: KeyLimits, reservation: list[float] | None, clock: Clock
    ) -> None:
        self._state = state
        self._limits = limits
        self._reservation = reservation
        self._clock = clock
        self._finished = False
        # The hold on the counts kept in the shared limit store, if they are.
        self.shared: SharedHold | None = None

    def record(self, tokens: TokenCounts) -> None:
        """The usage of one more answer over a held connection (the WebSocket mode)."""
        used = total_tokens(tokens)
        if self.shared is not None:
            self.shared.record(used)
        self._state.spent += used
        if self._limits.tpm is not None:
            self._state.tokens.add(self._clock(), used)

    def finish(self, tokens: TokenCounts | None, succeeded: bool) -> None:
        """The request ended, having used `tokens` (None: not reported). Once only."""
        if self._finished:
            return
        self._finished = True
        if self.shared is not None:
            self.shared.finish(None if tokens is None else total_tokens(tokens), succeeded)
        state = self._state
        if self._limits.max_parallel is not None:
            state.in_flight -= 1
        if tokens is not None:
            state.spent += total_tokens(tokens)
        reservation = self._reservation
        if reservation is not None:
            if tokens is not None:
                state.tokens.settle(reservation, total_tokens(tokens))
            elif not succeeded:
                state.tokens.settle(reservation, 0)


class KeyGate:
    """The decision and the counts of every key with limits, in one front."""

    def __init__(
        self,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        *,
        shared_counts: bool = False,
    ) -> None:
        # With shared counts, the limits that count are decided in the shared limit store.
        self._shared_counts = shared_counts
        self._clock = clock
        self._wall_clock = wall_clock
        self._states: dict[int, _KeyState] = {}
        self.refusals: dict[str, float] = dict.fromkeys(REFUSAL_REASONS, 0)

    def refusals_by_reason(self) -> Mapping[str, float]:
        return self.refusals

    def check_expiry(self, policy: KeyPolicy) -> None:
        expires_at = policy.limits.expires_at
        if expires_at is not None and self._wall_clock() >= expires_at:
            self.refusals["expired"] += 1
            raise KeyExpired(
                f"This API key expired at {expires_at} (Unix time). Ask an admin to extend it "
                "(update_user_api_key --expires-at) or to issue a new one."
            )

    def check_model(self, policy: KeyPolicy, model: str) -> None:
        if policy.models is not None and model not in policy.models:
            self.refusals["model"] += 1
            raise ModelNotAllowed(
                f"This API key may not use the model '{model}'. Ask an admin to add it to the "
                "key's models (update_user_api_key --models ...).",
                param="model",
            )

    def allowed_routes(
        self, policy: KeyPolicy, model: str, routes: tuple[ProviderRoute, ...]
    ) -> tuple[ProviderRoute, ...]:
        """`routes` (the chain that serves `model`, as the client named it), if the key may
        use the model: for a key with limits, every route and fallback hop the relay tries
        comes from here."""
        self.check_model(policy, model)
        return routes

    def admit(self, policy: KeyPolicy, estimate: int) -> Admission:
        """Admit one request expected to use `estimate` tokens, or raise the refusal."""
        limits = policy.limits
        if self._shared_counts:
            limits = attrs.evolve(limits, rpm=None, tpm=None, max_parallel=None, token_budget=None)
        state = self._state_of(policy)
        if limits.token_budget is not None and state.spent >= limits.token_budget:
            self.refusals["budget"] += 1
            raise InsufficientQuota(
                f"This API key has used its token budget of {limits.token_budget} tokens "
                f"({state.spent} used since its last reset). Ask an admin to raise it or to "
                "reset its usage (update_user_api_key --reset-usage)."
            )
        if limits.max_parallel is not None and state.in_flight >= limits.max_parallel:
            self.refusals["parallel"] += 1
            raise KeyRateLimited(
                f"This API key has {state.in_flight} requests in flight, its limit "
                f"(max_parallel {limits.max_parallel}); retry when one has finished.",
                retry_after=1,
            )
        now = self._clock()
        if limits.rpm is not None:
            state.requests.expire(now)
            if state.requests.total >= limits.rpm:
                self.refusals["rpm"] += 1
                wait = state.requests.seconds_until_below(limits.rpm, now)
                raise KeyRateLimited(
                    f"Rate limit reached for this API key on requests per minute: limit "
                    f"{limits.rpm}. Retry after {wait:.1f} s.",
                    retry_after=wait,
                    rate_headers=self._rate_headers(limits, state, now),
                )
        if limits.tpm is not None:
            state.tokens.expire(now)
            if state.tokens.total >= limits.tpm:
                self.refusals["tpm"] += 1
                wait = state.tokens.seconds_until_below(limits.tpm, now)
                raise KeyRateLimited(
                    f"Rate limit reached for this API key on tokens per minute: limit "
                    f"{limits.tpm}, {int(state.tokens.total)} used or reserved. Retry after "
                    f"{wait:.1f} s.",
                    retry_after=wait,
                    rate_headers=self._rate_headers(limits, state, now),
                )
        if limits.rpm is not None:
            state.requests.add(now, 1)
        reservation = None if limits.tpm is None else state.tokens.add(now, estimate)
        if limits.max_parallel is not None:
            state.in_flight += 1
        return Admission(state, limits, reservation, self._clock)

    def budget_starts(self, policies: Mapping[int, KeyPolicy]) -> dict[int, float]:
        """For each key with a budget, when its count began: what `seed_budgets` needs."""
        return {
            key_id: policy.limits.usage_reset_at
            for key_id, policy in policies.items()
            if policy.limits.token_budget is not None
        }

    def seed_budgets(self, starts: Mapping[int, float], spent: Mapping[int, int]) -> None:
        """The tokens each key used since its count began (`starts`), as the records say."""
        for key_id, reset_at in starts.items():
            state = self._states.setdefault(key_id, _KeyState(reset_at))
            state.reset_at = reset_at
            state.spent = spent.get(key_id, 0)

    def _state_of(self, policy: KeyPolicy) -> _KeyState:
        reset_at = policy.limits.usage_reset_at
        state = self._states.get(policy.key_id)
        if state is None:
            state = self._states[policy.key_id] = _KeyState(reset_at)
        elif state.reset_at != reset_at:
            state.reset_at, state.spent = reset_at, 0
        return state

    @staticmethod
    def _rate_headers(limits: KeyLimits, state: _KeyState, now: float) -> list[tuple[bytes, bytes]]:
        """OpenAI's `x-ratelimit-*` headers for the limits the key has."""
        headers: list[tuple[bytes, bytes]] = []
        for name, limit, window in (
            (b"requests", limits.rpm, state.requests),
            (b"tokens", limits.tpm, state.tokens),
        ):
            if limit is None:
                continue
            window.expire(now)
            remaining = max(limit - int(window.total), 0)
            headers += [
                (b"x-ratelimit-limit-" + name, str(limit).encode()),
                (b"x-ratelimit-remaining-" + name, str(remaining).encode()),
                (b"x-ratelimit-reset-" + name, duration_text(window.seconds_until_empty(now))),
            ]
        return headers


def duration_text(seconds: float) -> bytes:
    """A duration as OpenAI's `x-ratelimit-reset-*` headers give it: `20ms`, `1.5s`, `6m0s`."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms".encode()
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".")
    return (f"{int(minutes)}m{text}s" if minutes else f"{text}s").encode()


def counted_here(policy: KeyPolicy) -> bool:
    """Whether a key has a limit that a shared limit store counts
    (`sopy.routing.redis_limits.SharedLimits`): rpm, tpm, max_parallel or token_budget."""
    limits = policy.limits
    return (
        limits.rpm is not None
        or limits.tpm is not None
        or limits.max_parallel is not None
        or limits.token_budget is not None
    )
