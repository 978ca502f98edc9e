"""Specs for the per-key decision (`sopy.routing.key_limits`) alone, on a fake clock: sliding
windows for rpm and tpm, reservations settled with the real usage, parallel holds, budgets
with their resets, expiry and the model allow-list."""

import pytest

from sopy.errors import InsufficientQuota, KeyExpired, KeyRateLimited, ModelNotAllowed
from sopy.messages import KeyLimits, TokenCounts
from sopy.routing.key_limits import (
    DEFAULT_OUTPUT_ESTIMATE,
    KeyGate,
    KeyPolicy,
    duration_text,
    token_estimate,
)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def gate_and_clock() -> tuple[KeyGate, FakeClock]:
    clock = FakeClock()
    return KeyGate(clock=clock, wall_clock=clock), clock


def policy(**limits: object) -> KeyPolicy:
    return KeyPolicy.of(7, KeyLimits(**limits))  # type: ignore[arg-type]


def used(total: int) -> TokenCounts:
    return TokenCounts(input_tokens=total - total // 2, output_tokens=total // 2)


def headers_of(error: KeyRateLimited) -> dict[bytes, bytes]:
    return dict(error.response_headers())


def test_rpm_admits_exactly_its_number_in_any_minute() -> None:
    gate, clock = gate_and_clock()
    five = policy(rpm=5)
    for _ in range(3):
        gate.admit(five, 1)
    clock.now += 30
    for _ in range(2):
        gate.admit(five, 1)

    clock.now += 29.9
    with pytest.raises(KeyRateLimited) as refused:
        gate.admit(five, 1)
    assert refused.value.retry_after == 1  # the first three leave the window 0.1 s later
    headers = headers_of(refused.value)
    assert headers[b"x-ratelimit-limit-requests"] == b"5"
    assert headers[b"x-ratelimit-remaining-requests"] == b"0"
    assert headers[b"x-ratelimit-reset-requests"] == b"30.1s"
    assert b"x-ratelimit-limit-tokens" not in headers

    clock.now += 0.1
    for _ in range(3):
        gate.admit(five, 1)
    with pytest.raises(KeyRateLimited):
        gate.admit(five, 1)
    assert gate.refusals["rpm"] == 2


def test_tpm_reserves_the_estimate_and_overshoots_by_at_most_one_request() -> None:
    gate, clock = gate_and_clock()
    limited = policy(tpm=100)
    held = [gate.admit(limited, 40) for _ in range(3)]  # 0, 40, 80: each finds room
    with pytest.raises(KeyRateLimited) as refused:
        gate.admit(limited, 40)
    headers = headers_of(refused.value)
    assert headers[b"x-ratelimit-limit-tokens"] == b"100"
    assert headers[b"x-ratelimit-remaining-tokens"] == b"0"
    assert headers[b"x-ratelimit-reset-tokens"] == b"1m0s"
    assert refused.value.retry_after == 60

    # Settled with what they really used (10 tokens each), the window has room again.
    for admission in held:
        admission.finish(used(10), succeeded=True)
    gate.admit(limited, 40)
    clock.now += 60
    gate.admit(limited, 40)


def test_an_answer_without_usage_keeps_its_estimate_unless_it_failed() -> None:
    gate, _ = gate_and_clock()
    limited = policy(tpm=100)
    gate.admit(limited, 100).finish(None, succeeded=False)
    kept = gate.admit(limited, 100)  # the failed one's reservation is given back
    kept.finish(None, succeeded=True)
    with pytest.raises(KeyRateLimited):
        gate.admit(limited, 1)


def test_max_parallel_holds_until_a_request_finishes() -> None:
    gate, _ = gate_and_clock()
    two = policy(max_parallel=2)
    first, _second = gate.admit(two, 1), gate.admit(two, 1)
    with pytest.raises(KeyRateLimited) as refused:
        gate.admit(two, 1)
    assert refused.value.code == "rate_limit_exceeded"
    first.finish(None, succeeded=True)
    first.finish(None, succeeded=True)  # once only
    gate.admit(two, 1)
    with pytest.raises(KeyRateLimited):
        gate.admit(two, 1)


def test_a_budget_stops_the_key_until_its_count_starts_over() -> None:
    gate, _ = gate_and_clock()
    budget = policy(token_budget=100, usage_reset_at=10)
    gate.admit(budget, 1).finish(used(60), succeeded=True)
    gate.admit(budget, 1).finish(used(50), succeeded=True)
    with pytest.raises(InsufficientQuota) as refused:
        gate.admit(budget, 1)
    assert (refused.value.status, refused.value.code) == (429, "insufficient_quota")

    reset = policy(token_budget=100, usage_reset_at=20)
    gate.admit(reset, 1)


def test_seeded_budgets_count_from_the_records() -> None:
    gate, _ = gate_and_clock()
    budget = policy(token_budget=100, usage_reset_at=10)
    starts = gate.budget_starts({7: budget, 8: policy(rpm=1)})
    assert starts == {7: 10}
    gate.seed_budgets(starts, {7: 100})
    with pytest.raises(InsufficientQuota):
        gate.admit(budget, 1)


def test_expiry_and_the_allow_list() -> None:
    gate, clock = gate_and_clock()
    expiring = policy(expires_at=1001)
    gate.check_expiry(expiring)
    clock.now = 1001
    with pytest.raises(KeyExpired) as expired:
        gate.check_expiry(expiring)
    assert (expired.value.status, expired.value.code) == (401, "key_expired")

    allowed = policy(models=("gpt-4.1",))
    assert gate.allowed_routes(allowed, "gpt-4.1", ()) == ()
    with pytest.raises(ModelNotAllowed) as refused:
        gate.allowed_routes(allowed, "gpt-4o", ())
    assert (refused.value.status, refused.value.code) == (403, "model_not_allowed")
    assert gate.refusals["model"] == 1 and gate.refusals["expired"] == 1


def test_token_estimate_is_the_prompt_bytes_over_four_plus_the_output_limit() -> None:
    body = b"x" * 400
    assert token_estimate(body, {"max_tokens": 50}) == 150
    assert token_estimate(body, {"max_completion_tokens": 20}) == 120
    assert token_estimate(body, {"max_output_tokens": 30}) == 130
    assert token_estimate(body, {}) == 100 + DEFAULT_OUTPUT_ESTIMATE
    assert token_estimate(body, None) == DEFAULT_OUTPUT_ESTIMATE


def test_durations_read_as_openais_headers_write_them() -> None:
    assert duration_text(0.02) == b"20ms"
    assert duration_text(1.5) == b"1.5s"
    assert duration_text(60) == b"1m0s"
    assert duration_text(90.25) == b"1m30.25s"
