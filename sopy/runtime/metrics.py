"""The gateway's Prometheus metrics: what `GET /metrics` (on the public port, or on
`--metrics-port`) shows, kept as plain counters the request path bumps without a lock.

`GatewayMetrics` owns every number. The HTTP front calls `record_request` once per model request,
when its access log line is written (`sopy.actors.relay.accounted`); a scrape turns the counts
into prometheus-client metric families through `GatewayMetrics.collect` (a custom collector),
and `exposition` renders them with prometheus-client's own text format. What other actors
already count (backend cooldowns, `/admin/events` subscribers, requests in flight, the config
version) is read from them at scrape time (`add_counter_source`, `add_gauge`; the supervisor
wires those), so it costs the request path nothing. prometheus-client's own
`Counter`/`Histogram` take a lock per observation; the front runs on one trio thread, so plain
dicts of counts are enough, and a scrape (which runs on that thread too) reads them whole.

Times, per request, all on trio's clock:
- total: from the request head parsed to the answer complete (its last byte written);
- upstream: waiting for the provider, from handing the request to its pool to the pool's first
  answer (the response head, or the failure), summed over fallback hops;
- time to first token: for a streamed answer, from the request head to the first body chunk
  relayed to the client;
- overhead (`sopy_overhead_seconds`, and the `x-sopy-overhead-ms` header): the time Sopy itself
  adds before the client gets its answer head: from the request head parsed to the response head
  written, minus the time spent waiting on others meanwhile (the client's request body and the
  provider's first answer). A stream's later chunks are relayed as they arrive and not counted;
  a Responses websocket counts up to its upgrade, not the session; a client that left before
  any answer is counted in the requests but has no overhead to tell. An error the front answers
  itself counts up to the moment it is recorded, just before it is sent.

Labels are bounded: a route is a route table template, a model is a mapped model name (any
other requested name is `-`), a provider a configured name, a status a number. No key, no
credential, no client text; key ids only with `--metrics-per-key`. Tokens by type are counted
where the usage record is made (`record_tokens`); refusals by a key's limits are counted by the
decision that refuses (`sopy.routing.key_limits`) and read at scrape time. Another dimension
is one more `_Counts` and one call where the fact is known.
"""

import bisect
from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from sopy.messages import TokenCounts

UNMAPPED = "-"
TOKEN_TYPES = ("input", "output", "cached_input", "reasoning")
CONTENT_TYPE = CONTENT_TYPE_LATEST.encode()

# Seconds; from well under a millisecond (the overhead) to minutes (long generations).
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
OVERHEAD_BUCKETS: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip

Labels = tuple[str, ...]


class _Counts:
    """A counter by label values."""

    def __init__(self, name: str, documentation: str, label_names: Sequence[str]) -> None:
        self.name, self.documentation, self.label_names = name, documentation, list(label_names)
        self.values: dict[Labels, float] = {}

    def add(self, labels: Labels, amount: float = 1) -> None:
        self.values[labels] = self.values.get(labels, 0) + amount

    def family(self) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.label_names)
        for labels, value in self.values.items():
            family.add_metric(list(labels), value)
        return family


class _Histogram:
    """Bucket counts (not yet cumulative) and the sum, by label values."""

    def __init__(
        self,
        name: str,
        documentation: str,
        label_names: Sequence[str],
        buckets: tuple[float, ...],
    ) -> None:
        self.name, self.documentation, self.label_names = name, documentation, list(label_names)
        self.buckets = buckets
        self.values: dict[Labels, tuple[list[int], list[float]]] = {}

    def observe(self, labels: Labels, seconds: float) -> None:
        entry = self.values.get(labels)
        if entry is None:
            entry = self.values[labels] = ([0] * (len(self.buckets) + 1), [0.0])
        entry[0][bisect.bisect_left(self.buckets, seconds)] += 1
        entry[1][0] += seconds

    def family(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.label_names)
        bounds = [*(repr(bound) for bound in self.buckets), "+Inf"]
        for labels, (counts, total) in self.values.items():
            cumulative, running = [], 0
            for bound, count in zip(bounds, counts, strict=True):
                running += count
                cumulative.append((bound, float(running)))
            family.add_metric(list(labels), cumulative, total[0])
        return family


class GatewayMetrics:
    """Every metric of one gateway process; `gauges` are read at scrape time, never kept."""

    def __init__(self, per_key: bool) -> None:
        self._per_key = per_key
        request_labels = ["route", "model", "provider", "status", *(["key_id"] if per_key else [])]
        self.requests = _Counts(
            "sopy_requests", "Model requests answered, by route, model, provider and status.",
            request_labels,
        )  # fmt: skip
        self.retries = _Counts(
            "sopy_upstream_retries", "Requests resent to another backend, by provider.",
            ["provider"],
        )  # fmt: skip
        self.request_seconds = _Histogram(
            "sopy_request_duration_seconds",
            "Time from the request head to the answer complete, by route.",
            ["route"],
            LATENCY_BUCKETS,
        )
        self.upstream_seconds = _Histogram(
            "sopy_upstream_duration_seconds",
            "Time waiting for the provider's first answer (its response head), by provider.",
            ["provider"],
            LATENCY_BUCKETS,
        )
        self.first_token_seconds = _Histogram(
            "sopy_time_to_first_token_seconds",
            "Streamed answers: time from the request head to the first chunk relayed, "
            "by route and provider.",
            ["route", "provider"],
            LATENCY_BUCKETS,
        )
        self.overhead_seconds = _Histogram(
            "sopy_overhead_seconds",
            "Time Sopy itself adds before the answer head: the time to it minus the time "
            "waiting for the client's body and the provider's first answer, by route.",
            ["route"],
            OVERHEAD_BUCKETS,
        )
        # The four token counts by (model, provider), split by type only when scraped.
        self.tokens: dict[tuple[str, str], list[int]] = {}
        self.gauges: list[tuple[str, str, Callable[[], float]]] = []
        self.counter_sources: list[tuple[str, str, str, Callable[[], Mapping[str, float]]]] = []
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)

    def add_gauge(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """A value read when scraped (in-flight requests, the config version...)."""
        self.gauges.append((name, documentation, read))

    def add_counter_source(
        self,
        name: str,
        documentation: str,
        label_name: str,
        read: Callable[[], Mapping[str, float]],
    ) -> None:
        """A counter whose values by one label are kept elsewhere and read when scraped
        (backend cooldowns, counted where they start)."""
        self.counter_sources.append((name, documentation, label_name, read))

    def record_request(
        self,
        route: str,
        model: str,
        provider: str | None,
        status: int,
        key_id: int | None,
        total: float,
        upstream: float | None,
        first_token: float | None,
        overhead: float | None,
        attempts: int,
    ) -> None:
        """One answered model request; `model` must be a mapped name or `UNMAPPED`."""
        provider_label = provider or UNMAPPED
        labels: Labels = (route, model, provider_label, str(status))
        if self._per_key:
            labels += ("-" if key_id is None else str(key_id),)
        self.requests.add(labels)
        self.request_seconds.observe((route,), total)
        if provider is not None:
            if upstream is not None:
                self.upstream_seconds.observe((provider,), upstream)
            if attempts > 1:
                self.retries.add((provider,), attempts - 1)
            if first_token is not None:
                self.first_token_seconds.observe((route, provider), first_token)
        if overhead is not None:
            self.overhead_seconds.observe((route,), overhead)

    def record_tokens(self, model: str, provider: str, tokens: TokenCounts) -> None:
        """The token counts a provider reported for one answer, where its usage record is made;
        `model` must be a mapped name or `UNMAPPED`."""
        counts = self.tokens.get((model, provider))
        if counts is None:
            counts = self.tokens[model, provider] = [0, 0, 0, 0]
        counts[0] += tokens.input_tokens
        counts[1] += tokens.output_tokens
        counts[2] += tokens.cached_input_tokens
        counts[3] += tokens.reasoning_tokens

    def _token_family(self) -> Metric:
        family = CounterMetricFamily(
            "sopy_tokens",
            "Tokens the providers reported, by type (input, output, cached_input, reasoning; "
            "cached input is part of input, reasoning part of output), model and provider.",
            labels=["type", "model", "provider"],
        )
        for (model, provider), counts in self.tokens.items():
            for token_type, count in zip(TOKEN_TYPES, counts, strict=True):
                family.add_metric([token_type, model, provider], count)
        return family

    def collect(self) -> Iterator[Metric]:
        yield self.requests.family()
        yield self._token_family()
        yield self.retries.family()
        yield self.request_seconds.family()
        yield self.upstream_seconds.family()
        yield self.first_token_seconds.family()
        yield self.overhead_seconds.family()
        for name, documentation, label_name, read_counts in self.counter_sources:
            family = CounterMetricFamily(name, documentation, labels=[label_name])
            for label, count in read_counts().items():
                family.add_metric([label], count)
            yield family
        for name, documentation, read in self.gauges:
            yield GaugeMetricFamily(name, documentation, value=read())

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return generate_latest(self._registry)
