"""Upstream pools: the actors that talk to providers.

`UpstreamPool` is one provider's actor. It owns its keep-alive connections (`sopy.protocol.client`)
and a `BackendPicker`, takes `ForwardRequest`s from its inbox and runs each as an `_Exchange`:
pick a healthy backend, decide which headers the backend sees and inject the provider credential
(`sopy.routing.forwarded_headers`), and retry connect failures, header timeouts, 429 and 5xx on
another backend while nothing has reached the client (see `sopy.routing.retry_policy`). The
answer goes back on the request's own channel as `ResponseStart`, `ResponseChunk`s and
`ResponseEnd`, or as one `UpstreamFailed`. Event streams are relayed chunk by chunk as they
arrive; other bodies are read whole first, so one that breaks off is retried like any other
failure instead of reaching the client truncated. Connect, first-byte, idle-between-chunks and
total timeouts all apply. The pool keeps each exchange's cancel scope by request id: a
`CancelForward` from the front (its client went away) cancels it, which closes the upstream
connection; so does the front closing the reply channel, at the next event sent on it.

`ProviderPools` owns every pool: it starts a provider's pool, supervised on its own, the first
time a request needs it, and retires pools whose provider has no backend left.
"""

import logging

import attrs
import trio

from sopy.errors import NoBackendAvailable, SopyError, UpstreamError, UpstreamTimeout
from sopy.messages import (
    CancelForward,
    ConfigSnapshot,
    ForwardRequest,
    PoolMessage,
    ResponseChunk,
    ResponseEnd,
    ResponseStart,
    UpstreamFailed,
)
from sopy.protocol.client import (
    UpstreamBrokeOff,
    UpstreamConnectError,
    UpstreamConnections,
    UpstreamConnectTimeout,
    UpstreamRequestRefused,
    UpstreamResponse,
)
from sopy.routing.backend_health import BackendPicker, CooldownPolicy
from sopy.routing.forwarded_headers import is_event_stream, upstream_request_headers
from sopy.routing.retry_policy import (
    MAX_RETRY_AFTER_WAIT,
    backoff_delay,
    is_retryable_status,
    retry_after_seconds,
)
from sopy.runtime.change_feed import ChangeFeed
from sopy.runtime.channel_send import deliver
from sopy.runtime.supervision import supervise
from sopy.settings import Settings

log = logging.getLogger(__name__)

POOL_INBOX_SIZE = 1024
MAX_KEEPALIVE_CONNECTIONS = 256


class UpstreamPool:
    def __init__(
        self,
        provider: str,
        inbox: trio.MemoryReceiveChannel[PoolMessage],
        settings: Settings,
    ) -> None:
        self.provider = provider
        self.settings = settings
        self.picker = BackendPicker(
            settings.balance, CooldownPolicy(settings.cooldown_after, settings.cooldown)
        )
        self._inbox = inbox
        self._exchanges: dict[str, trio.CancelScope] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        client = UpstreamConnections(
            self.settings.connect_timeout,
            MAX_KEEPALIVE_CONNECTIONS,
            idle_timeout=self.settings.upstream_idle_timeout,
        )
        # In-flight requests finish after the inbox closes; the housekeeping stops at once.
        async with (
            client,
            trio.open_nursery() as requests,
            trio.open_nursery() as housekeeping,
        ):
            housekeeping.start_soon(client.close_unused)
            task_status.started()
            async for message in self._inbox:
                if isinstance(message, CancelForward):
                    scope = self._exchanges.get(message.request_id)
                    if scope is not None:
                        scope.cancel()
                    continue
                # Registered before the task starts, so a CancelForward right behind finds it.
                scope = self._exchanges[message.request_id] = trio.CancelScope()
                requests.start_soon(self._forward, client, message, scope)
            housekeeping.cancel_scope.cancel()
        log.info("upstream pool for provider '%s' stopped", self.provider)

    async def _forward(
        self, client: UpstreamConnections, request: ForwardRequest, scope: trio.CancelScope
    ) -> None:
        with request.reply_to:
            try:
                await _Exchange(self, client, request, scope).run()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                log.debug("request %s: the client went away", request.request_id)
            finally:
                if self._exchanges.get(request.request_id) is scope:
                    del self._exchanges[request.request_id]


@attrs.frozen
class _Answer:
    """A backend's response; `body` holds the whole body unless the response is an event
    stream, which is relayed as it arrives."""

    response: UpstreamResponse
    body: bytes | None


class _Exchange:
    """One client request's trip through a provider: attempts, retries, then the relay."""

    def __init__(
        self,
        pool: UpstreamPool,
        client: UpstreamConnections,
        request: ForwardRequest,
        scope: trio.CancelScope,
    ) -> None:
        self._pool = pool
        self._settings = pool.settings
        self._picker = pool.picker
        self._client = client
        self._request = request
        self._scope = scope
        self._headers = upstream_request_headers(request.headers, request.route.credential)
        self._reply = request.reply_to
        self._urls = request.route.urls
        self._tried: list[str] = []
        self._attempts = 0
        self._started = False
        self._failure: SopyError | None = None

    async def run(self) -> None:
        """Run under the exchange's cancel scope, which a `CancelForward` cancels and whose
        deadline is the total timeout."""
        total = self._settings.total_timeout
        with self._scope as budget:
            budget.deadline = trio.current_time() + total
            try:
                await self._attempt_until_answered()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise
            except Exception:
                # One request's bug must not take the provider's other requests down.
                log.exception("request %s: unexpected failure", self._request.request_id)
                await self._give_up(UpstreamError("the gateway failed on this request"))
                return
        if budget.cancelled_caught and trio.current_time() >= budget.deadline:
            message = f"{self._where()} did not finish within the total timeout of {total:g} s"
            await self._give_up(UpstreamTimeout(message))

    async def _give_up(self, error: SopyError) -> None:
        """End the answer with `error`: as its status if nothing was relayed yet, else as the
        stream's final event."""
        if self._started:
            await deliver(self._reply, ResponseEnd(error=error.message))
        else:
            await self._fail(error)

    async def _attempt_until_answered(self) -> None:
        while True:
            backend = await self._pick()
            if backend is None:
                await self._fail(self._failure or self._all_resting())
                return
            self._attempts += 1
            self._tried.append(backend)
            try:
                outcome = await self._try(backend)
                if not self._worth_retrying(outcome, backend):
                    await self._finish(outcome, backend)
                    return
                if isinstance(outcome, _Answer):
                    self._failure = UpstreamError(
                        f"{self._where(backend)} answered {outcome.response.status}"
                    )
                    await outcome.response.aclose()
                else:
                    self._failure = outcome
            finally:
                self._picker.release(backend)
            await trio.sleep(backoff_delay(self._attempts))

    async def _pick(self) -> str | None:
        """Prefer a backend not tried yet; after a failure, wait out a short `Retry-After` or
        cooldown rather than fail when every backend is resting."""
        weights = self._request.route.weights
        backend = self._picker.pick(self._urls, weights, exclude=self._tried)
        backend = backend or self._picker.pick(self._urls, weights)
        if backend is None and self._attempts > 0:
            wait = self._bearable_wait()
            if wait is not None:
                await trio.sleep(wait)
                backend = self._picker.pick(self._urls, weights)
        return backend

    def _bearable_wait(self) -> float | None:
        """Seconds until some backend is usable again, if that is short enough to wait for."""
        wait = self._picker.seconds_until_usable(self._urls)
        return wait if wait is not None and wait <= MAX_RETRY_AFTER_WAIT else None

    async def _try(self, backend: str) -> _Answer | SopyError:
        request = self._request
        first_byte = self._settings.first_byte_timeout
        response: UpstreamResponse | None = None
        try:
            with trio.CancelScope(deadline=trio.current_time() + first_byte) as deadline:
                response = await self._client.send(
                    request.method, backend + request.path, self._headers, request.body
                )
                if is_event_stream(response.headers):
                    return _Answer(response, None)
                # The raw body (still content-encoded, as it is relayed), due within idle_timeout.
                deadline.deadline = trio.current_time() + self._settings.idle_timeout
                return _Answer(response, await response.read())
        except UpstreamConnectTimeout:
            return UpstreamTimeout(
                f"{self._where(backend)} did not accept a connection within "
                f"{self._settings.connect_timeout:g} s; check that it is up"
            )
        except UpstreamRequestRefused as exc:
            return UpstreamError(f"the request for {self._where(backend)} was refused: {exc}")
        except (UpstreamConnectError, UpstreamBrokeOff) as exc:
            if response is None:
                return UpstreamError(
                    f"{self._where(backend)} could not be reached ({exc}); check that it is "
                    "running and that the URL is right"
                )
            await response.aclose()
            return UpstreamError(f"{self._where(backend)} broke off its response ({exc})")
        if response is None:
            return UpstreamTimeout(
                f"{self._where(backend)} sent no response within {first_byte:g} s"
            )
        await response.aclose()
        return UpstreamError(
            f"{self._where(backend)} sent no more of its response within "
            f"{self._settings.idle_timeout:g} s"
        )

    def _worth_retrying(self, outcome: _Answer | SopyError, backend: str) -> bool:
        """Record the backend's health from the outcome, then say whether to try again."""
        status = outcome.response.status if isinstance(outcome, _Answer) else None
        if status is not None and not is_retryable_status(status):
            self._picker.record_success(backend)
            return False
        retry_after = None
        if isinstance(outcome, _Answer):
            retry_after = retry_after_seconds(outcome.response.header(b"retry-after"))
        self._picker.record_failure(backend, retry_after)
        return self._attempts <= self._settings.retries and self._bearable_wait() is not None

    async def _finish(self, outcome: _Answer | SopyError, backend: str) -> None:
        if isinstance(outcome, SopyError):
            await self._fail(outcome)
        else:
            await self._relay(outcome, backend)

    async def _relay(self, answer: _Answer, backend: str) -> None:
        response = answer.response
        try:
            await deliver(
                self._reply,
                ResponseStart(
                    response.status,
                    tuple(response.headers),
                    backend,
                    self._attempts,
                    retryable=is_retryable_status(response.status),
                    body=answer.body,
                ),
            )
            self._started = True
            if answer.body is None:
                await self._relay_stream(response, backend)
        finally:
            await response.aclose()

    async def _relay_stream(self, response: UpstreamResponse, backend: str) -> None:
        failure = await self._relay_chunks(response, backend)
        if failure is not None:
            self._picker.record_failure(backend)
        await deliver(self._reply, ResponseEnd(error=failure))

    async def _relay_chunks(self, response: UpstreamResponse, backend: str) -> str | None:
        """Relay the body's chunks as they arrive; None once it is whole, else why it broke off."""
        idle = self._settings.idle_timeout
        chunks = response.aiter_raw()
        try:
            while True:
                with trio.move_on_after(idle) as silence:
                    try:
                        chunk = await anext(chunks)
                    except StopAsyncIteration:
                        return None
                if silence.cancelled_caught:
                    return f"{self._where(backend)} sent nothing for {idle:g} s"
                await deliver(self._reply, ResponseChunk(chunk))
        except UpstreamBrokeOff as exc:
            return f"{self._where(backend)} broke off the response ({exc}); retry the request"

    async def _fail(self, error: SopyError) -> None:
        backend = self._tried[-1] if self._tried else None
        await deliver(self._reply, UpstreamFailed(error, self._attempts, backend))

    def _all_resting(self) -> NoBackendAvailable:
        resting = self._picker.describe_unavailable(self._urls)
        return NoBackendAvailable(
            f"every backend of provider '{self._pool.provider}' is resting after failures: "
            f"{resting}; retry shortly, or check the backends"
        )

    def _where(self, backend: str | None = None) -> str:
        if backend is None:
            return f"provider '{self._pool.provider}'"
        return f"provider '{self._pool.provider}' backend {backend}"


class ProviderPools:
    """The manager of every provider's `UpstreamPool`; `inbox_for` is all the front needs."""

    def __init__(self, feed: ChangeFeed, settings: Settings) -> None:
        self._feed = feed
        self._settings = settings
        self._inboxes: dict[str, trio.MemorySendChannel[PoolMessage]] = {}
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

    def inbox_for(self, provider: str) -> trio.MemorySendChannel[PoolMessage]:
        """The provider's pool inbox, starting its pool if this is its first request."""
        inbox = self._inboxes.get(provider)
        if inbox is not None:
            return inbox
        if self._nursery is None:
            raise NoBackendAvailable("the upstream pools are restarting; retry in a moment")
        inbox, pool_inbox = trio.open_memory_channel[PoolMessage](POOL_INBOX_SIZE)
        pool = UpstreamPool(provider, pool_inbox, self._settings)
        self._nursery.start_soon(supervise, f"upstream pool {provider}", pool.run)
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
