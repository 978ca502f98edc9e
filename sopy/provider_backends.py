"""Grouping backends by provider: the one place that turns a flat list of `Backend`s into each
provider's `ProviderBackends`.

The config store answers `list_backends` with it (`sopy.config.database`), the route table
builds each provider's route from it (`sopy.routing.route_table`), and the `/admin/events`
snapshot shows it (`sopy.admin.event_views`), so all three always agree.
"""

from collections.abc import Iterable

from sopy.messages import Backend, ProviderBackends


def group_by_provider(backends: Iterable[Backend]) -> tuple[ProviderBackends, ...]:
    """Providers in name order; each provider's URLs and weights in the order given (the
    order the backends were added)."""
    grouped: dict[str, list[Backend]] = {}
    for backend in backends:
        grouped.setdefault(backend.provider, []).append(backend)
    return tuple(
        ProviderBackends(provider, tuple(b.url for b in group), tuple(b.weight for b in group))
        for provider, group in sorted(grouped.items())
    )
