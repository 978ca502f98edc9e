"""The actors: each one `run` method whose nursery holds everything it owns, talking to the others
only through memory channels carrying the frozen messages of `sopy.messages`, or through the
`ChangeFeed`. `sopy.supervisor` creates them, wires them in this order and restarts any that
crashes; their module docstrings give the detail.

config_store.ConfigStore (`config_store`)
    owns:     the config database (SQLite), the secret box, the change journal; one worker thread.
    receives: `AdminRequest` (a command; replies after commit) and `JournalRequest` (changes
              since a version), on its inbox from the admin transports.
    sends:    `CommandSucceeded` / `CommandFailed` on each request's `reply_to`, the journal
              entries (or None) on a `JournalRequest`'s; `ConfigChanged` on the `ChangeFeed`,
              first the loaded snapshot, then after every committed change.

admin_socket.AdminSocket (`admin_socket`)
    owns:     the admin Unix socket (mode 0600) and its client connections: JSON lines, REST and
              the `/admin/events` websocket (`sopy.admin`).
    receives: bytes from admin clients; `ConfigChanged` from the `ChangeFeed` (event streams).
    sends:    `AdminRequest` / `JournalRequest` to the config store (`ask_config_store`); reply
              lines, HTTP answers and change events to its clients.

provider pools: upstream_pool.ProviderPools (`provider_pools`) and one UpstreamPool per provider
    owns:     ProviderPools: each provider's pool, started on its first request, supervised on
              its own, retired when its provider loses its last backend (it follows the
              `ChangeFeed`). UpstreamPool: the provider's keep-alive backend connections, backend
              health (cooldowns, probes), retries, timeouts, and which headers a backend sees
              (with the provider credential).
    receives: `ForwardRequest` and `CancelForward` on the pool's inbox, from the relay; a
              pool's inbox is handed out by `ProviderPools.inbox_for(provider)`.
    sends:    on the request's own `reply_to`: one `UpstreamFailed`, or a `ResponseStart` with
              the whole body, or a `ResponseStart`, `ResponseChunk`s and a `ResponseEnd`. Failure
              text is the pool's own (naming backends), meant for the operator's log.

http_front.HttpFront (`http_front`), with relay and front_responses
    owns:     the public TCP port and its connections (`sopy.protocol.server`), the route table
              built from the latest `ConfigChanged`, the request limits (concurrency, body size,
              body bytes in flight), and everything the client sees: which upstream headers
              cross, every error message (with the request id), the access log line.
    receives: HTTP requests; the latest snapshot from the `ChangeFeed` (read, never awaited).
    sends:    `ForwardRequest` to the pool of the model's provider (through the narrow
              `ProviderInbox` callable, not the pools' manager), `CancelForward` when its client
              leaves or it falls back to another provider; HTTP answers to its clients.

No message holds a live object (a cancel scope, an event, a nursery): only data and, for
replies, the sending end of a channel.
"""
