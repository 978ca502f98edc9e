"""Several worker processes on one machine (`sopy serve --workers N`, N >= 2): the primary
process and each worker's own supervisor.

`run_primary` is what `sopy serve` runs then: the config actor and its store, the admin socket,
the usage actor and the response affinity store, as in one process (`sopy.supervisor`), and no
HTTP front; instead it opens the public listening socket(s) and the worker links actor
(`sopy.actors.worker_link`) runs N `python -m sopy worker` processes that inherit them. Admin
replies wait until every worker applied the change (`AdminInboxes.applied`). `--metrics-port`
is served here, with the whole server's numbers. On SIGTERM every worker drains, then the
primary stops.

`run_worker` is a worker process: the HTTP front and the upstream pools, fed by its link to the
primary (`sopy.actors.primary_link`) instead of a config actor. It never opens a database. On
SIGTERM (or when the primary is gone) it stops accepting, lets in-flight requests finish within
`--drain-timeout`, sends its last usage records and exits.

Why sharing one listening socket rather than `SO_REUSEPORT`: with one socket there is one accept
queue, so a connection queued while a worker exits, crashes or drains is accepted by another
worker; with `SO_REUSEPORT` each worker has its own queue and the kernel drops the connections
queued on the one that closes. What `SO_REUSEPORT` does better, spreading connections evenly,
the workers do themselves by taking turns (`sopy.runtime.connection_balance`).
"""

import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Mapping
from functools import partial

import orjson
import trio

from sopy.actors.admin_socket import AdminSocket
from sopy.actors.front_responses import send_body, send_error
from sopy.actors.http_front import HttpFront
from sopy.actors.primary_link import PrimaryLink, SharedKeptResponses, SharedResponseAffinity
from sopy.actors.upstream_pool import ProviderPools, open_connections
from sopy.actors.worker_frames import FrameStream, parse_settings
from sopy.actors.worker_link import WorkerLinks
from sopy.errors import ErrorShape, InternalError, InvalidRequest, NotFound, StartupError
from sopy.messages import TokenTotalsQuery, UsageRequest
from sopy.protocol.server import HttpExchange, HttpServer, ServerLimits
from sopy.runtime.admin_requests import AdminInboxes
from sopy.runtime.change_feed import ChangeFeed
from sopy.runtime.connection_balance import SharedConnectionCounts, shared_counts_file
from sopy.runtime.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from sopy.runtime.supervision import supervise
from sopy.runtime.usage_ledger import UsageLedger
from sopy.settings import Settings
from sopy.supervisor import DRAIN_MARGIN, MAX_PENDING_USAGE_RECORDS, RunningSopy, StateActors

log = logging.getLogger(__name__)

# How long a worker waits for the primary to send its settings.
SETTINGS_TIMEOUT = 30.0


async def run_primary(
    settings: Settings,
    shutdown: trio.Event,
    *,
    task_status: trio.TaskStatus[RunningSopy] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the primary and its workers until `shutdown` is set."""
    state = StateActors.of(settings)
    feed, usage, usage_send = state.feed, state.usage, state.usage_inbox
    listeners = await _open_listeners(settings, settings.port, "--port")
    counts = shared_counts_file(settings.workers)
    links = WorkerLinks(
        settings, feed, usage, usage_send, state.affinity, state.kept, listeners, counts
    )
    admin = AdminSocket(
        settings.admin_socket,
        AdminInboxes(state.config_inbox, usage_send, links.wait_applied, links.gather_usage),
        feed,
        usage,
        settings.event_buffer,
    )
    links.metrics.add_gauge(
        "sopy_event_subscribers",
        "Websockets following /admin/events now.",
        lambda: admin.event_subscribers,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(supervise, "config_store", state.config_store.run)
        admin_path = await nursery.start(supervise, "admin_socket", admin.run)
        await nursery.start(supervise, "response_affinity_store", state.affinity_store.run)
        await nursery.start(supervise, "usage_store", state.usage_store.run)
        await nursery.start(supervise, "worker_links", links.run)
        metrics_url = None
        if settings.metrics_port is not None:
            metrics_url = await _serve_metrics_port(nursery, settings, links, shutdown)
            log.info("serving /metrics of every worker on %s", metrics_url)
        http_url = _url(listeners[0])
        log.info("%d workers serving the OpenAI API on %s", settings.workers, http_url)
        task_status.started(RunningSopy(http_url, admin_path, feed, metrics_url, links.pids))
        await shutdown.wait()
        log.info(
            "shutting down: every worker stops accepting; in-flight requests have %.0f s",
            settings.drain_timeout,
        )
        await links.stop()
        nursery.cancel_scope.cancel()


async def _open_listeners(settings: Settings, port: int, flag: str) -> list[trio.SocketListener]:
    try:
        return await trio.open_tcp_listeners(port, host=settings.host)
    except OSError as failure:
        raise StartupError(
            f"cannot listen on {settings.host}:{port}: {failure.strerror or failure}; stop "
            f"whatever uses that port or pass {flag}"
        ) from None


async def _serve_metrics_port(
    nursery: trio.Nursery, settings: Settings, links: WorkerLinks, shutdown: trio.Event
) -> str:
    """`--metrics-port`, served by the primary: GET /metrics of the whole server."""
    listeners = await _open_listeners(settings, settings.metrics_port or 0, "--metrics-port")

    async def serve_metrics(exchange: HttpExchange) -> None:
        rid = os.urandom(8).hex().encode()
        if exchange.raw_path == "/metrics" and exchange.method in ("GET", "HEAD"):
            body = await links.whole_server_metrics()
            await send_body(exchange, 200, body, rid, content_type=METRICS_CONTENT_TYPE)
        else:
            error = NotFound(
                f"This port serves GET /metrics only, not {exchange.method} {exchange.raw_path}."
            )
            await send_error(exchange, error, ErrorShape.OPENAI, rid)

    limits = ServerLimits(settings.header_timeout, settings.drain_timeout, settings.send_timeout)
    server = HttpServer(serve_metrics, limits, _render_error)
    url: str = await nursery.start(
        partial(server.serve, listeners=listeners), settings.host, 0, shutdown.wait
    )
    return url


def _render_error(status: int, message: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The OpenAI-shaped answer to a request the metrics server refused by itself."""
    error = InternalError(message) if status == 500 else InvalidRequest(message)
    return [(b"content-type", b"application/json")], orjson.dumps(error.openai_body())


def _url(listener: trio.SocketListener) -> str:
    host, port = listener.socket.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def run_worker(link_fd: int, listen_fds: list[int], counts_fd: int, slot: int) -> None:
    """Be worker `slot`, on the link, listening sockets and connection counts inherited from
    the primary."""
    link_socket = trio.socket.from_stdlib_socket(socket.socket(fileno=link_fd))
    frames = FrameStream(trio.SocketStream(link_socket))
    with trio.fail_after(SETTINGS_TIMEOUT):
        first = await frames.receive()
    if first is None or first.get("t") != "settings":
        raise StartupError("the primary process closed the link before sending the settings")
    settings = parse_settings(first["settings"])
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s [worker %(process)d]: %(message)s",
    )
    feed = ChangeFeed()
    usage = UsageLedger(MAX_PENDING_USAGE_RECORDS)
    link = PrimaryLink(frames, feed, usage)
    affinity = SharedResponseAffinity(
        settings.response_affinity_max, settings.response_affinity_ttl, frames.send_nowait
    )
    link.affinity = affinity
    kept = link.kept = SharedKeptResponses(
        settings.kept_responses_per_key,
        settings.kept_response_bytes_per_key,
        settings.response_affinity_ttl,
        frames.send_nowait,
    )
    pools = ProviderPools(feed, settings, open_connections)
    # The front's own gate only checks expiry and models here: the primary's gate admits, and
    # counts the budgets, so the front's question for them is answered with nothing.
    budget_send, budget_receive = trio.open_memory_channel[UsageRequest](1)
    front = HttpFront(settings, feed, pools.inbox_for, affinity, kept, usage, budget_send)
    front.primary = link
    front.listeners = [
        trio.SocketListener(trio.socket.from_stdlib_socket(socket.socket(fileno=fd)))
        for fd in listen_fds
    ]
    front.accept_balance = SharedConnectionCounts(counts_fd, slot)
    link.local_metrics = front.metrics.exposition
    front.metrics.add_counter_source(
        "sopy_backend_cooldowns",
        "Backends put to rest after failing, by provider.",
        "provider",
        pools.cooldowns_by_provider,
    )
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_answer_budget_questions, budget_receive)
            await nursery.start(link.run)
            await nursery.start(supervise, "provider_pools", pools.run)
            await nursery.start(supervise, "http_front", front.run)
            async with trio.open_nursery() as waiting:
                waiting.start_soon(_cancel_after, waiting.cancel_scope, link.closed.wait)
                waiting.start_soon(_cancel_after, waiting.cancel_scope, signals.__anext__)
            front.stop_accepting()
            with trio.move_on_after(settings.drain_timeout + DRAIN_MARGIN):
                await front.stopped.wait()
            link.send_usage()
            frames.finish_sending()
            with trio.move_on_after(DRAIN_MARGIN):
                await frames.all_sent.wait()
            nursery.cancel_scope.cancel()


async def _cancel_after(scope: trio.CancelScope, wait: Callable[[], Awaitable[object]]) -> None:
    await wait()
    scope.cancel()


async def _answer_budget_questions(questions: trio.MemoryReceiveChannel[UsageRequest]) -> None:
    async for question in questions:
        if isinstance(question, TokenTotalsQuery):
            empty: Mapping[int, int] = {}
            question.reply_to.send_nowait(empty)
