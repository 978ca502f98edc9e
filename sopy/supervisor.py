"""The supervisor: one trio nursery that starts every actor under `supervise` (restart with
backoff), and stops them all when asked.

Actors are started in dependency order: the config actor publishes its snapshot, the
response affinity store loads the remembered response ids, and the usage actor opens its file,
before anything that serves requests starts (the HTTP front then asks it for the keys' token
budget counts before it listens). Stopping drains first: the HTTP front stops
accepting and lets in-flight requests and streams finish for up to `drain_timeout`, then
everything is cancelled (the usage actor writing its last records as it stops).
"""

import logging
from functools import partial
from pathlib import Path

import attrs
import trio

from sopy.actors.admin_socket import AdminSocket
from sopy.actors.config_store import ConfigStore
from sopy.actors.http_front import HttpFront
from sopy.actors.response_affinity_store import ResponseAffinityStore, affinity_database_path
from sopy.actors.upstream_pool import OpenTransport, ProviderPools, open_connections
from sopy.actors.usage_store import UsageDatabase, UsageStore, usage_database_path
from sopy.messages import ConfigRequest, UsageRequest
from sopy.routing.kept_responses import KeptResponses
from sopy.routing.response_affinity import ResponseAffinity
from sopy.runtime.admin_requests import AdminInboxes
from sopy.runtime.change_feed import ChangeFeed
from sopy.runtime.supervision import supervise
from sopy.runtime.usage_ledger import UsageLedger
from sopy.settings import Settings

log = logging.getLogger(__name__)

CONFIG_INBOX_SIZE = 256
USAGE_INBOX_SIZE = 16
# Unwritten usage records kept while the usage file refuses writes (about 100 MB).
MAX_PENDING_USAGE_RECORDS = 200_000
DRAIN_MARGIN = 1.0


@attrs.frozen
class RunningSopy:
    """What a started Sopy tells its caller: where to reach it and how to follow changes."""

    http_url: str
    admin_socket: Path
    feed: ChangeFeed
    # The `--metrics-port` server's URL; None when /metrics is on the public port.
    metrics_url: str | None = None
    # With `--workers` 2 or more (`sopy.workers`): the worker processes' PIDs.
    worker_pids: tuple[int, ...] = ()


@attrs.frozen
class StateActors:
    """The actors that own Sopy's state, and the maps and inboxes the serving side shares with
    them: the same in one process (`run_sopy`) and in the primary of `--workers`
    (`sopy.workers.run_primary`), so both keep the same state in the same stores."""

    feed: ChangeFeed
    config_inbox: trio.MemorySendChannel[ConfigRequest]
    config_store: ConfigStore
    affinity: ResponseAffinity
    kept: KeptResponses
    affinity_store: ResponseAffinityStore
    usage: UsageLedger
    usage_inbox: trio.MemorySendChannel[UsageRequest]
    usage_store: UsageStore

    @classmethod
    def of(cls, settings: Settings) -> "StateActors":
        feed = ChangeFeed()
        config_send, config_receive = trio.open_memory_channel[ConfigRequest](CONFIG_INBOX_SIZE)
        affinity = ResponseAffinity(settings.response_affinity_max, settings.response_affinity_ttl)
        kept = KeptResponses(
            settings.kept_responses_per_key,
            settings.kept_response_bytes_per_key,
            settings.response_affinity_ttl,
        )
        usage = UsageLedger(MAX_PENDING_USAGE_RECORDS)
        usage_send, usage_receive = trio.open_memory_channel[UsageRequest](USAGE_INBOX_SIZE)
        store_url = settings.store
        return cls(
            feed,
            config_send,
            ConfigStore(settings, config_receive, feed),
            affinity,
            kept,
            ResponseAffinityStore(affinity_database_path(settings.db_path), affinity, kept),
            usage,
            usage_send,
            UsageStore(
                usage_database_path(settings.db_path),
                usage,
                usage_receive,
                settings.usage_retention_days,
                None if store_url is None else partial(_postgres_usage, store_url),
            ),
        )


async def run_sopy(
    settings: Settings,
    shutdown: trio.Event,
    *,
    open_transport: OpenTransport = open_connections,
    task_status: trio.TaskStatus[RunningSopy] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run every actor until `shutdown` is set. `open_transport` makes each upstream pool's
    transport (tests pass one that injects faults)."""
    state = StateActors.of(settings)
    feed, affinity, kept, usage = state.feed, state.affinity, state.kept, state.usage
    pools = ProviderPools(feed, settings, open_transport)
    front = HttpFront(settings, feed, pools.inbox_for, affinity, kept, usage, state.usage_inbox)
    admin = AdminSocket(
        settings.admin_socket,
        AdminInboxes(state.config_inbox, state.usage_inbox),
        feed,
        usage,
        settings.event_buffer,
    )
    front.metrics.add_counter_source(
        "sopy_backend_cooldowns",
        "Backends put to rest after failing, by provider.",
        "provider",
        pools.cooldowns_by_provider,
    )
    front.metrics.add_gauge(
        "sopy_event_subscribers",
        "Websockets following /admin/events now.",
        lambda: admin.event_subscribers,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(supervise, "config_store", state.config_store.run)
        admin_path = await nursery.start(supervise, "admin_socket", admin.run)
        await nursery.start(supervise, "provider_pools", pools.run)
        await nursery.start(supervise, "response_affinity_store", state.affinity_store.run)
        await nursery.start(supervise, "usage_store", state.usage_store.run)
        http_url = await nursery.start(supervise, "http_front", front.run)
        task_status.started(RunningSopy(http_url, admin_path, feed, front.metrics_url))
        await shutdown.wait()
        log.info(
            "shutting down: no new requests; in-flight ones have %.0f s to finish",
            settings.drain_timeout,
        )
        front.stop_accepting()
        with trio.move_on_after(settings.drain_timeout + DRAIN_MARGIN):
            await front.stopped.wait()
        nursery.cancel_scope.cancel()


def _postgres_usage(url: str) -> UsageDatabase:
    """The usage records in PostgreSQL (`--store`); its client is loaded only then."""
    from sopy.config.postgres_usage import PostgresUsage

    return PostgresUsage(url)
