"""When and how soon an upstream request is tried again.

Retried, on another backend while possible: failures to connect, no response headers in time,
429 and 5xx answers, and only while nothing has been sent to the client. Between attempts the
pool waits an exponentially growing, jittered delay; a backend's `Retry-After` holds that backend
off instead, and is waited out only when no other backend is left and it fits in
`MAX_RETRY_AFTER_WAIT`.
"""

import email.utils
import random
import time

BACKOFF_BASE = 0.05
BACKOFF_CAP = 2.0
MAX_RETRY_AFTER_WAIT = 10.0


def is_retryable_status(status: int) -> bool:
    return status == 429 or status >= 500


def backoff_delay(attempt: int) -> float:
    """The pause after the `attempt`-th failed try (1-based), jittered by ±50 %."""
    return min(BACKOFF_BASE * 2.0 ** (attempt - 1), BACKOFF_CAP) * random.uniform(0.5, 1.5)


def retry_after_seconds(value: str | None) -> float | None:
    """A `Retry-After` header (seconds or an HTTP date) as seconds from now; None if absent."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(moment.timestamp() - time.time(), 0.0)
