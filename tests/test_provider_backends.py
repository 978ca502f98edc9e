"""Backends grouped by provider: one grouping behind `list_backends`, the `/admin/events`
snapshot and the route table, so the three always agree."""

import trio

from sopy.messages import Backend, ProviderBackends
from sopy.provider_backends import group_by_provider
from sopy.routing.route_table import RouteTable
from tests.admin_connection import open_events
from tests.conftest import SopyUnderTest
from tests.test_admin_events import next_message

# Added interleaved, so grouping has to gather each provider's backends in the order added.
ADDED = [
    Backend("openai", "http://o1/v1", 2),
    Backend("azure", "http://a1/v1", 1),
    Backend("openai", "http://o2/v1", 3),
    Backend("anthropic", "http://n1/v1", 5),
    Backend("azure", "http://a2/v1", 4),
]
GROUPED = (
    ProviderBackends("anthropic", ("http://n1/v1",), (5,)),
    ProviderBackends("azure", ("http://a1/v1", "http://a2/v1"), (1, 4)),
    ProviderBackends("openai", ("http://o1/v1", "http://o2/v1"), (2, 3)),
)


def test_providers_in_name_order_each_with_its_backends_in_the_order_added() -> None:
    assert group_by_provider(ADDED) == GROUPED
    assert group_by_provider([]) == ()


async def test_list_backends_the_event_snapshot_and_the_route_table_agree(
    sopy: SopyUnderTest, nursery: trio.Nursery
) -> None:
    async with await sopy.admin() as admin:
        for backend in ADDED:
            await admin.ok(
                "add_backend", provider=backend.provider, url=backend.url, weight=backend.weight
            )
        for group in GROUPED:
            await admin.ok(
                "add_model_mapping",
                model_name=f"model-of-{group.provider}",
                provider=group.provider,
            )
        listed = await admin.ok("list_backends")
    subscriber = await open_events(nursery, sopy.settings.admin_socket)
    snapshot_message = await next_message(subscriber)
    assert sopy.running is not None
    snapshot = (await sopy.running.feed.wait_published()).snapshot

    assert listed == [
        {"provider": g.provider, "urls": list(g.urls), "weights": list(g.weights)} for g in GROUPED
    ]
    assert snapshot_message["snapshot"]["backends"] == [
        {"provider": g.provider, "urls": list(g.urls)} for g in GROUPED
    ]
    chains = RouteTable.from_snapshot(snapshot).chains
    assert {c[0].provider: (c[0].urls, c[0].weights) for c in chains.values()} == {
        g.provider: (g.urls, g.weights) for g in GROUPED
    }
