"""Pure request-path decisions, no I/O: who may call and where a model goes (`route_table`),
which backend of a provider to use and which rest (`backend_health`), when to try again
(`retry_policy`), and which headers cross the gateway in each direction (`forwarded_headers`)."""
