"""The whole server's `/metrics` with worker processes: the expositions of every process (each
worker's `GatewayMetrics`, and the primary's own), summed sample by sample.

Counters and histograms add up across processes (a histogram's buckets, count and sum alike),
and so do gauges that count something now (requests in flight, `/admin/events` subscribers);
`MAX_GAUGES` are states rather than amounts (the config version being served), and show the
highest. Parsing and rendering are prometheus-client's own; the primary calls this when a
worker is scraped (`sopy.actors.worker_link`), never on the request path.
"""

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

MAX_GAUGES = frozenset({"sopy_config_version"})

_SampleKey = tuple[str, tuple[tuple[str, str], ...]]


class _Merged:
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def merged_exposition(texts: Iterable[str]) -> bytes:
    """One exposition with every family of `texts`, its samples summed across them."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[_SampleKey, float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            samples = values[family.name]
            highest = family.name in MAX_GAUGES
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                known = samples.get(key)
                if known is None:
                    samples[key] = sample.value
                else:
                    samples[key] = max(known, sample.value) if highest else known + sample.value
    for name, family in families.items():
        family.samples = [
            Sample(sample_name, dict(labels), value)
            for (sample_name, labels), value in values[name].items()
        ]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(list(families.values())))
    return generate_latest(registry)
