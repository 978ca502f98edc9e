"""Backend choice and health, on a clock the test controls."""

import collections

from sopy.routing.backend_health import LEAST_IN_FLIGHT, ROUND_ROBIN, BackendPicker, CooldownPolicy

URLS = ("http://a", "http://b", "http://c")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def picker(strategy: str = LEAST_IN_FLIGHT, trip: int = 2) -> tuple[BackendPicker, Clock]:
    clock = Clock()
    policy = CooldownPolicy(failures_to_trip=trip, first_cooldown=1.0, longest_cooldown=4.0)
    return BackendPicker(strategy, policy, clock), clock


def test_least_in_flight_spreads_load_by_weight() -> None:
    chooser, _ = picker()
    chosen = [chooser.pick(URLS, (2, 1, 1)) for _ in range(8)]
    counts = collections.Counter(chosen)
    assert counts == {"http://a": 4, "http://b": 2, "http://c": 2}


def test_least_in_flight_prefers_the_idle_backend() -> None:
    chooser, _ = picker()
    busy = chooser.pick(URLS[:2], (1, 1))
    assert busy is not None
    other = chooser.pick(URLS[:2], (1, 1))
    assert other is not None and other != busy
    chooser.release(other)
    assert chooser.pick(URLS[:2], (1, 1)) == other


def test_round_robin_is_smooth_and_weighted() -> None:
    chooser, _ = picker(ROUND_ROBIN)
    chosen = []
    for _ in range(7):
        url = chooser.pick(URLS, (5, 1, 1))
        assert url is not None
        chooser.release(url)
        chosen.append(url[-1])
    assert "".join(chosen) == "aabacaa"


def test_exclude_skips_backends_already_tried() -> None:
    chooser, _ = picker()
    assert chooser.pick(URLS, (1, 1, 1), exclude=("http://a", "http://b")) == "http://c"
    assert chooser.pick(URLS, (1, 1, 1), exclude=URLS) is None


def test_consecutive_failures_trip_a_cooldown_that_doubles_and_is_probed() -> None:
    chooser, clock = picker(trip=2)
    for _ in range(2):
        assert chooser.pick(URLS[:1], (1,)) == "http://a"
        chooser.record_failure("http://a")
        chooser.release("http://a")
    assert chooser.pick(URLS[:1], (1,)) is None
    assert chooser.describe_unavailable(URLS[:1]) == "http://a (resting 1.0 s more)"
    assert chooser.seconds_until_usable(URLS[:1]) == 1.0

    clock.now += 1.0
    probe = chooser.pick(URLS[:1], (1,))
    assert probe == "http://a"
    assert chooser.pick(URLS[:1], (1,)) is None, "only one probe at a time"
    chooser.record_failure("http://a")
    chooser.release("http://a")
    clock.now += 1.5
    assert chooser.pick(URLS[:1], (1,)) is None, "the second cooldown is twice as long"

    clock.now += 0.5
    assert chooser.pick(URLS[:1], (1,)) == "http://a"
    chooser.record_success("http://a")
    chooser.release("http://a")
    assert chooser.pick(URLS[:1], (1,)) == "http://a"
    chooser.record_failure("http://a")
    chooser.release("http://a")
    assert chooser.pick(URLS[:1], (1,)) == "http://a", "success reset the failure count"


def test_a_success_between_failures_keeps_the_backend_in() -> None:
    chooser, _ = picker(trip=2)
    for record in ("failure", "success", "failure"):
        url = chooser.pick(URLS[:1], (1,))
        assert url == "http://a"
        getattr(chooser, f"record_{record}")(url)
        chooser.release(url)
    assert chooser.pick(URLS[:1], (1,)) == "http://a"


def test_retry_after_holds_a_backend_off_without_tripping_it() -> None:
    chooser, clock = picker(trip=5)
    url = chooser.pick(URLS[:2], (1, 1), exclude=("http://b",))
    assert url == "http://a"
    chooser.record_failure(url, retry_after=3.0)
    chooser.release(url)
    assert chooser.pick(URLS[:2], (1, 1)) == "http://b"
    clock.now += 3.0
    assert chooser.pick(URLS[:2], (1, 1), exclude=("http://b",)) == "http://a"


def test_a_rate_limit_holds_a_backend_off_without_counting_as_a_failure() -> None:
    chooser, clock = picker(trip=1)
    assert chooser.pick(URLS[:1], (1,)) == "http://a"
    chooser.record_rate_limit("http://a", 2.0)
    chooser.release("http://a")
    assert chooser.pick(URLS[:1], (1,)) is None
    assert chooser.all_rate_limited(URLS[:1])
    assert chooser.describe_unavailable(URLS[:1]) == "http://a (rate limited 2.0 s more)"

    clock.now += 2.0
    assert chooser.pick(URLS[:1], (1,)) == "http://a", "with trip=1, a failure would rest it"
    chooser.record_rate_limit("http://a", None)
    chooser.release("http://a")
    assert chooser.pick(URLS[:1], (1,)) == "http://a", "no Retry-After, no rest"


def test_a_retry_after_rests_a_backend_at_most_the_longest_cooldown() -> None:
    chooser, clock = picker(trip=5)
    for url in URLS[:2]:
        assert chooser.pick(URLS[:2], (1, 1), exclude=[u for u in URLS if u != url]) == url
    chooser.record_rate_limit("http://a", float("inf"))
    chooser.record_failure("http://b", retry_after=1e30)
    for url in URLS[:2]:
        chooser.release(url)
    assert chooser.seconds_until_usable(URLS[:2]) == 4.0

    clock.now += 4.0
    assert chooser.pick(URLS[:2], (1, 1), exclude=("http://b",)) == "http://a"
    assert chooser.pick(URLS[:2], (1, 1), exclude=("http://a",)) == "http://b"


def test_a_requests_repeated_failures_count_once_but_a_failed_probe_rests_again() -> None:
    chooser, clock = picker(trip=2)
    assert chooser.pick(URLS[:1], (1,)) == "http://a"
    chooser.record_failure("http://a")
    for _ in range(3):
        chooser.record_failure("http://a", again=True)
    chooser.release("http://a")
    assert chooser.pick(URLS[:1], (1,)) == "http://a", "one request, one failure"
    chooser.record_failure("http://a")
    chooser.release("http://a")
    assert chooser.pick(URLS[:1], (1,)) is None, "a second request's failure trips it"

    clock.now += 1.0
    assert chooser.pick(URLS[:1], (1,)) == "http://a"
    chooser.record_failure("http://a", again=True)
    chooser.release("http://a")
    assert chooser.pick(URLS[:1], (1,)) is None, "the probe failed: resting again"


def test_a_removed_backend_is_forgotten_once_its_requests_are_over() -> None:
    chooser, _ = picker(trip=1)
    for url in URLS[:2]:
        assert chooser.pick(URLS[:2], (1, 1), exclude=[u for u in URLS if u != url]) == url
        chooser.record_failure(url)
    chooser.release("http://a")

    chooser.keep_only({"http://c"})
    chooser.release("http://b")
    chooser.record_failure("http://b")  # a late verdict on a forgotten backend changes nothing

    assert chooser.pick(URLS[:2], (1, 1), exclude=("http://b",)) == "http://a"
    assert chooser.pick(URLS[:2], (1, 1), exclude=("http://a",)) == "http://b"
    assert chooser.in_flight("http://b") == 1


def test_a_backend_removed_and_added_again_while_busy_keeps_its_count() -> None:
    chooser, _ = picker()
    assert chooser.pick(URLS[:1], (1,)) == "http://a"
    chooser.keep_only(set())
    chooser.keep_only({"http://a"})
    assert chooser.in_flight("http://a") == 1
    chooser.release("http://a")
    assert chooser.in_flight("http://a") == 0
