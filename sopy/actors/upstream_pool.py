"""Upstream pools: the actors that talk to providers.

`UpstreamPool` is one provider's actor. It owns one pooled `httpx.AsyncClient`, takes
`ForwardRequest`s from its inbox, rotates across the provider's backend URLs, injects the
provider credential and relays the upstream response back on the request's own channel, chunk by
chunk as it arrives. The front's client going away cancels the request's scope, which cancels
the upstream exchange and closes its connection.

`UpstreamPools` is the actor that owns every pool: it starts a provider's pool the first time a
request needs it and retires pools whose provider has no backend left in the configuration.
"""

import itertools
import logging

import httpx
import trio

from sopy.change_feed import ChangeFeed
from sopy.errors import NoBackendAvailable, UpstreamError, UpstreamTimeout
from sopy.http_headers import client_response_headers
from sopy.messages import (
    ConfigSnapshot,
    ForwardRequest,
    ResponseChunk,
    ResponseEnd,
    ResponseStart,
    UpstreamEvent,
    UpstreamFailed,
)

log = logging.getLogger(__name__)

POOL_INBOX_SIZE = 1024
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 600.0
MAX_KEEPALIVE_CONNECTIONS = 256


class UpstreamPool:
    def __init__(self, provider: str, inbox: trio.MemoryReceiveChannel[ForwardRequest]) -> None:
        self.provider = provider
        self._inbox = inbox
        self._turn = itertools.count()

    async def run(self) -> None:
        client = httpx.AsyncClient(
            timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT),
            limits=httpx.Limits(
                max_connections=None, max_keepalive_connections=MAX_KEEPALIVE_CONNECTIONS
            ),
            follow_redirects=False,
            trust_env=False,
        )
        async with client, trio.open_nursery() as nursery:
            async for request in self._inbox:
                nursery.start_soon(self._forward, client, request)
        log.info("upstream pool for provider '%s' stopped", self.provider)

    async def _forward(self, client: httpx.AsyncClient, request: ForwardRequest) -> None:
        async with request.reply_to:
            try:
                with request.cancel_scope:
                    await self._exchange(client, request)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                log.debug("request %s: the client went away", request.request_id)

    def _next_backend(self, urls: tuple[str, ...]) -> str:
        return urls[next(self._turn) % len(urls)]

    async def _exchange(self, client: httpx.AsyncClient, request: ForwardRequest) -> None:
        reply = request.reply_to
        backend = self._next_backend(request.route.urls)
        headers = list(request.headers)
        if request.route.credential is not None:
            headers.append((b"authorization", f"Bearer {request.route.credential}".encode()))
        outgoing = client.build_request(
            request.method, backend + request.path, headers=headers, content=request.body
        )
        try:
            response = await client.send(outgoing, stream=True)
        except httpx.TimeoutException:
            await reply.send(UpstreamFailed(UpstreamTimeout(self._timed_out(backend))))
            return
        except httpx.HTTPError as exc:
            await reply.send(UpstreamFailed(UpstreamError(self._unreachable(backend, exc))))
            return
        try:
            await self._relay(response, reply, backend)
        finally:
            with trio.CancelScope(shield=True):
                await response.aclose()

    async def _relay(
        self,
        response: httpx.Response,
        reply: trio.MemorySendChannel[UpstreamEvent],
        backend: str,
    ) -> None:
        await reply.send(
            ResponseStart(response.status_code, client_response_headers(response.headers.raw))
        )
        try:
            async for chunk in response.aiter_raw():
                await reply.send(ResponseChunk(chunk))
        except httpx.HTTPError as exc:
            await reply.send(
                ResponseEnd(
                    error=f"provider '{self.provider}' backend {backend} broke off the "
                    f"response ({type(exc).__name__}); retry the request"
                )
            )
            return
        await reply.send(ResponseEnd())

    def _timed_out(self, backend: str) -> str:
        return (
            f"provider '{self.provider}' backend {backend} did not answer in time; retry, "
            "or check the backend's health"
        )

    def _unreachable(self, backend: str, exc: httpx.HTTPError) -> str:
        return (
            f"provider '{self.provider}' backend {backend} could not be reached "
            f"({type(exc).__name__}); check that it is running and that the URL is right"
        )


class UpstreamPools:
    def __init__(self, feed: ChangeFeed) -> None:
        self._feed = feed
        self._inboxes: dict[str, trio.MemorySendChannel[ForwardRequest]] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                task_status.started()
                await self._follow_config()
            finally:
                self._nursery = None
                self._inboxes.clear()

    def inbox_for(self, provider: str) -> trio.MemorySendChannel[ForwardRequest]:
        """The provider's pool inbox, starting its pool if this is its first request."""
        inbox = self._inboxes.get(provider)
        if inbox is not None:
            return inbox
        if self._nursery is None:
            raise NoBackendAvailable("the upstream pools are restarting; retry in a moment")
        inbox, pool_inbox = trio.open_memory_channel[ForwardRequest](POOL_INBOX_SIZE)
        pool = UpstreamPool(provider, pool_inbox)
        self._nursery.start_soon(pool.run, name=f"upstream pool {provider}")
        self._inboxes[provider] = inbox
        log.info("upstream pool for provider '%s' started", provider)
        return inbox

    async def _follow_config(self) -> None:
        while True:
            changes = self._feed.subscribe()
            async with changes:
                async for changed in changes:
                    self._retire_pools_not_in(changed.snapshot)

    def _retire_pools_not_in(self, snapshot: ConfigSnapshot) -> None:
        """Close the inbox of each pool whose provider lost its last backend; the pool finishes
        what it has in flight, then stops."""
        live = {backend.provider for backend in snapshot.backends}
        for provider in [p for p in self._inboxes if p not in live]:
            self._inboxes.pop(provider).close()
