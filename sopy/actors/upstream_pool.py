"""Upstream pools: the actors that talk to providers.

`UpstreamPool` is one provider's actor. It owns a transport (`UpstreamConnections`, its
keep-alive connections, unless the supervisor was given another `OpenTransport`) and a
`BackendPicker`, which it tells after each configuration change which backends the provider
still has. It takes `ForwardRequest`s from its inbox and runs each as an `_Exchange`: pick a
usable backend, decide which headers the backend sees and inject the provider credential
(`sopy.routing.forwarded_headers`), and retry connect failures, header timeouts, 429 and 5xx on
another backend while nothing has reached the client (see `sopy.routing.retry_policy`). A 429
is no health failure: its `Retry-After` holds the backend off, and when no other backend can
take the request the client gets the 429 itself; while every backend rests, the pool answers
for them with a 429 or 503 and a `Retry-After`.

The answer goes back on the request's own channel as `ResponseStart`, `ResponseChunk`s and
`ResponseEnd`, or as one `UpstreamFailed`. Event streams and audio go chunk by chunk as they
arrive, whatever their size; other bodies are read whole first, up to `max_response_bytes` (a
larger one is cut off there and becomes a 502), so one that breaks off is retried like any other
failure instead of reaching the client truncated. Connect and first-byte timeouts bound the
wait for the head, the idle timeout every silence between pieces of a body, the total timeout
the whole exchange. The pool keeps each exchange's cancel scope by request id: a
`CancelForward` from the front (its client went away) cancels it, which closes the upstream
connection; so does the front closing the reply channel, at the next event sent on it.

`ProviderPools` owns every pool: it starts a provider's pool, supervised on its own, the first
time a request needs it, and retires pools whose provider has no backend left.
"""

import logging
from collections.abc import Callable
from types import TracebackType
from typing import Protocol, Self, TypeAlias

import attrs
import trio

from sopy.errors import (
    NoBackendAvailable,
    SopyError,
    TemporarilyUnavailable,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamResponseTooLarge,
    UpstreamTimeout,
)
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
from sopy.routing.forwarded_headers import is_streamed, upstream_request_headers
from sopy.routing.retry_policy import (
    WAIT_BUDGET,
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
# Every forwarded public route lives under this prefix; a backend's base URL stands for it.
PUBLIC_API_PREFIX = "/v1"
MAX_KEEPALIVE_CONNECTIONS = 256


class UpstreamTransport(Protocol):
    """What a pool sends its attempts through while it runs: entered with `async with`, its
    `close_unused` running beside the requests. `UpstreamConnections` is the real one; a test
    passes its own (usually wrapping the real one) to inject faults, as with httpx transports."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...

    async def send(
        self, method: str, url: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> UpstreamResponse: ...

    async def close_unused(self) -> None: ...


OpenTransport: TypeAlias = Callable[[Settings], UpstreamTransport]


def open_connections(settings: Settings) -> UpstreamConnections:
    """The real transport: keep-alive HTTP/1.1 connections to the provider's backends."""
    return UpstreamConnections(
        settings.connect_timeout,
        MAX_KEEPALIVE_CONNECTIONS,
        idle_timeout=settings.upstream_idle_timeout,
    )


class UpstreamPool:
    def __init__(
        self,
        provider: str,
        inbox: trio.MemoryReceiveChannel[PoolMessage],
        settings: Settings,
        feed: ChangeFeed,
        open_transport: OpenTransport = open_connections,
    ) -> None:
        self.provider = provider
        self.settings = settings
        self.picker = BackendPicker(
            settings.balance, CooldownPolicy(settings.cooldown_after, settings.cooldown)
        )
        self._inbox = inbox
        self._feed = feed
        self._open_transport = open_transport
        self._exchanges: dict[str, trio.CancelScope] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        transport = self._open_transport(self.settings)
        # In-flight requests finish after the inbox closes; the housekeeping stops at once.
        async with (
            transport,
            trio.open_nursery() as requests,
            trio.open_nursery() as housekeeping,
        ):
            housekeeping.start_soon(transport.close_unused)
            housekeeping.start_soon(self._forget_removed_backends)
            task_status.started()
            async for message in self._inbox:
                if isinstance(message, CancelForward):
                    scope = self._exchanges.get(message.request_id)
                    if scope is not None:
                        scope.cancel()
                    continue
                # Registered before the task starts, so a CancelForward right behind finds it.
                scope = self._exchanges[message.request_id] = trio.CancelScope()
                requests.start_soon(self._forward, transport, message, scope)
            housekeeping.cancel_scope.cancel()
        log.info("upstream pool for provider '%s' stopped", self.provider)

    async def _forward(
        self, transport: UpstreamTransport, request: ForwardRequest, scope: trio.CancelScope
    ) -> None:
        with request.reply_to:
            try:
                await _Exchange(self, transport, request, scope).run()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                log.debug("request %s: the client went away", request.request_id)
            finally:
                if self._exchanges.get(request.request_id) is scope:
                    del self._exchanges[request.request_id]

    async def _forget_removed_backends(self) -> None:
        """Forever: after each configuration change, drop the health of the backends this
        provider no longer has, so a backend removed and added again starts afresh."""
        while True:
            changes = self._feed.subscribe()
            async with changes:
                async for changed in changes:
                    self.picker.keep_only(
                        {
                            backend.url
                            for backend in changed.snapshot.backends
                            if backend.provider == self.provider
                        }
                    )


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
        transport: UpstreamTransport,
        request: ForwardRequest,
        scope: trio.CancelScope,
    ) -> None:
        self._pool = pool
        self._settings = pool.settings
        self._picker = pool.picker
        self._transport = transport
        self._request = request
        self._scope = scope
        self._headers = upstream_request_headers(
            request.headers, request.route.credential, request.route.kind
        )
        self._reply = request.reply_to
        self._urls = request.route.urls
        # Backend URLs are base URLs (`https://api.openai.com/v1`, `.../openai/v1`): what
        # follows the client's `/v1` is appended to them.
        self._path_after_base = request.path.removeprefix(PUBLIC_API_PREFIX)
        self._tried: list[str] = []
        self._failed_on: set[str] = set()
        # Backends that rate limited this request without saying for how long.
        self._not_again: set[str] = set()
        self._waited = 0.0
        self._attempts = 0
        self._started = False
        self._last_outcome: _Answer | SopyError | None = None

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
                await self._answer_without_backend()
                return
            self._attempts += 1
            self._tried.append(backend)
            try:
                outcome = await self._try(backend)
                if not (self._record(outcome, backend) and self._may_retry()):
                    await self._finish(outcome, backend)
                    return
                self._last_outcome = await self._kept(outcome, backend)
            finally:
                self._picker.release(backend)
            await trio.sleep(backoff_delay(self._attempts))

    async def _pick(self) -> str | None:
        """Prefer a backend not tried yet; else go back to one tried before (but not to one that
        rate limited the request without a `Retry-After`), waiting out a `Retry-After` or
        cooldown if the request's wait budget allows."""
        weights = self._request.route.weights
        backend = self._picker.pick(self._urls, weights, exclude=self._tried)
        if backend is None and self._attempts > 0:
            backend = self._picker.pick(self._urls, weights, exclude=self._not_again)
            wait = None if backend is not None else self._bearable_wait()
            if wait is not None:
                self._waited += wait
                await trio.sleep(wait)
                backend = self._picker.pick(self._urls, weights, exclude=self._not_again)
        return backend

    def _may_retry(self) -> bool:
        return self._attempts <= self._settings.retries and self._bearable_wait() is not None

    def _bearable_wait(self) -> float | None:
        """Seconds until a backend this request may still use is usable again, if the
        request's waits stay within `WAIT_BUDGET` with it."""
        urls = [url for url in self._urls if url not in self._not_again]
        wait = self._picker.seconds_until_usable(urls)
        return wait if wait is not None and self._waited + wait <= WAIT_BUDGET else None

    async def _try(self, backend: str) -> _Answer | SopyError:
        request = self._request
        first_byte = self._settings.first_byte_timeout
        response: UpstreamResponse | None = None
        try:
            with trio.CancelScope(deadline=trio.current_time() + first_byte) as deadline:
                response = await self._transport.send(
                    request.method, backend + self._path_after_base, self._headers, request.body
                )
                if is_streamed(response.headers):
                    return _Answer(response, None)
                return await self._read_whole(response, backend, deadline)
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

    async def _read_whole(
        self, response: UpstreamResponse, backend: str, deadline: trio.CancelScope
    ) -> _Answer | SopyError:
        """The raw body (still content-encoded, as it is relayed) of an answer that is not a
        stream. Each piece is due within the idle timeout of the one before (moving `deadline`,
        the whole being bounded by the total timeout); reading stops at the size limit."""
        limit = self._settings.max_response_bytes
        idle = self._settings.idle_timeout
        declared = _declared_length(response)
        if declared <= limit:
            pieces: list[bytes] = []
            size = 0
            deadline.deadline = trio.current_time() + idle
            async for piece in response.aiter_raw():
                size += len(piece)
                if size > limit:
                    break
                pieces.append(piece)
                if size != declared:  # once all declared bytes are in, nothing more is due
                    deadline.deadline = trio.current_time() + idle
            else:
                return _Answer(response, b"".join(pieces))
        await response.aclose()
        return UpstreamResponseTooLarge(
            f"{self._where(backend)} sent a response body larger than the {limit}-byte limit; "
            "ask for less per request, or raise --max-response-bytes (SOPY_MAX_RESPONSE_BYTES)",
            limit=limit,
        )

    def _record(self, outcome: _Answer | SopyError, backend: str) -> bool:
        """Record what the attempt says of the backend's health; whether another attempt could
        do better. A 429 is no failure; one request counts at most once toward a cooldown."""
        if isinstance(outcome, UpstreamResponseTooLarge):
            return False  # another backend would only do the same work again
        if isinstance(outcome, SopyError):
            self._record_failure(backend)
            return True
        status = outcome.response.status
        if not is_retryable_status(status):
            self._picker.record_success(backend)
            return False
        retry_after = retry_after_seconds(outcome.response.header(b"retry-after"))
        if status == 429:
            self._picker.record_rate_limit(backend, retry_after)
            if retry_after is None:
                self._not_again.add(backend)
        else:
            self._record_failure(backend, retry_after)
        return True

    def _record_failure(self, backend: str, retry_after: float | None = None) -> None:
        self._picker.record_failure(backend, retry_after, again=backend in self._failed_on)
        self._failed_on.add(backend)

    async def _kept(self, outcome: _Answer | SopyError, backend: str) -> _Answer | SopyError:
        """What to answer with if no later attempt gets further: a whole answer as it is
        (its connection freed), a stream's status as an error."""
        if isinstance(outcome, SopyError):
            return outcome
        await outcome.response.aclose()
        if outcome.body is not None:
            return outcome
        return UpstreamError(f"{self._where(backend)} answered {outcome.response.status}")

    async def _answer_without_backend(self) -> None:
        last = self._last_outcome
        if isinstance(last, _Answer):
            await self._relay(last, self._tried[-1])
        else:
            await self._fail(last or self._unavailable())

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
            self._record_failure(backend)
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

    def _unavailable(self) -> TemporarilyUnavailable:
        """Why no backend can take the request now, and (as `Retry-After`) for how long."""
        picker, provider = self._picker, self._pool.provider
        resting = picker.describe_unavailable(self._urls)
        # None: every backend is being probed, and a probe's verdict comes soon.
        wait = picker.seconds_until_usable(self._urls) or 1.0
        if picker.all_rate_limited(self._urls):
            return UpstreamRateLimited(
                f"every backend of provider '{provider}' is rate limited: {resting}; retry "
                "after the Retry-After delay, or add a backend with its own quota",
                retry_after=wait,
            )
        return NoBackendAvailable(
            f"every backend of provider '{provider}' is resting after failures: {resting}; "
            "retry after the Retry-After delay, or check the backends",
            retry_after=wait,
        )

    def _where(self, backend: str | None = None) -> str:
        if backend is None:
            return f"provider '{self._pool.provider}'"
        return f"provider '{self._pool.provider}' backend {backend}"


def _declared_length(response: UpstreamResponse) -> int:
    """The body length the response's head announces; 0 when it announces none."""
    declared = response.header(b"content-length")
    if declared is None or not (declared.isascii() and declared.isdigit()):
        return 0
    return int(declared)


class ProviderPools:
    """The manager of every provider's `UpstreamPool`; `inbox_for` is all the front needs."""

    def __init__(
        self, feed: ChangeFeed, settings: Settings, open_transport: OpenTransport = open_connections
    ) -> None:
        self._feed = feed
        self._settings = settings
        self._open_transport = open_transport
        self._inboxes: dict[str, trio.MemorySendChannel[PoolMessage]] = {}
        # Every pool made, retired ones too, so that their cooldown counts never go back.
        self._pools: list[UpstreamPool] = []
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
        pool = UpstreamPool(provider, pool_inbox, self._settings, self._feed, self._open_transport)
        self._pools.append(pool)
        self._nursery.start_soon(supervise, f"upstream pool {provider}", pool.run)
        self._inboxes[provider] = inbox
        log.info("upstream pool for provider '%s' started", provider)
        return inbox

    def cooldowns_by_provider(self) -> dict[str, float]:
        """Backend cooldowns started so far, by provider (for the metrics, read when scraped)."""
        counts: dict[str, float] = {}
        for pool in self._pools:
            counts[pool.provider] = counts.get(pool.provider, 0) + pool.picker.cooldowns_started
        return counts

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
