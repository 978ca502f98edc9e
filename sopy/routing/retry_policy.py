"""When and how soon an upstream request is tried again, and what a backend's `Retry-After` says.

Retried, on another backend while possible: failures to connect, no response headers in time,
429 and 5xx answers, and only while nothing has been sent to the client. Between attempts the
pool waits an exponentially growing, jittered delay. A backend's `Retry-After` holds that backend
off instead; the pool waits it out only when no other backend is left and the request's waits
stay within `WAIT_BUDGET` in all: a one-second `Retry-After` (the shortest but zero) is waited
out once, a longer one goes to the client at once, so a client that retries on its own (as the
OpenAI SDKs do, honouring `Retry-After`) is not kept waiting twice over.

`retry_after_seconds` parses `Retry-After` strictly as RFC 9110 defines it (delay-seconds, or an
HTTP-date in any of its three forms); anything else counts as no `Retry-After` at all.
"""

import datetime
import random
import re
import time

BACKOFF_BASE = 0.05
BACKOFF_CAP = 2.0
WAIT_BUDGET = 1.0

_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
_MONTH = "(?P<month>" + "|".join(_MONTHS) + ")"
_TIME = "(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})"
_DAY_NAME = "(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_LONG_DAY_NAME = "(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
_DELAY_SECONDS = re.compile("[0-9]+")
_IMF_FIXDATE = re.compile(
    f"{_DAY_NAME}, (?P<day>[0-9]{{2}}) {_MONTH} (?P<year>[0-9]{{4}}) {_TIME} GMT"
)
_RFC850_DATE = re.compile(
    f"{_LONG_DAY_NAME}, (?P<day>[0-9]{{2}})-{_MONTH}-(?P<year>[0-9]{{2}}) {_TIME} GMT"
)
_ASCTIME_DATE = re.compile(
    f"{_DAY_NAME} {_MONTH} (?P<day>[ 0-9][0-9]) {_TIME} (?P<year>[0-9]{{4}})"
)


def is_retryable_status(status: int) -> bool:
    return status == 429 or status >= 500


def backoff_delay(attempt: int) -> float:
    """The pause after the `attempt`-th failed try (1-based), jittered by ±50 %."""
    return min(BACKOFF_BASE * 2.0 ** (attempt - 1), BACKOFF_CAP) * random.uniform(0.5, 1.5)


def retry_after_seconds(value: str | None) -> float | None:
    """A `Retry-After` value as seconds from now (0 for a date in the past, inf for a number too
    large for a float); None if absent or not valid RFC 9110."""
    if value is None:
        return None
    value = value.strip(" \t")
    if _DELAY_SECONDS.fullmatch(value):
        return float(value)
    moment = _http_date(value)
    return None if moment is None else max(moment - time.time(), 0.0)


def _http_date(value: str) -> float | None:
    """An HTTP-date as a POSIX timestamp; None if it is not one."""
    match = (
        _IMF_FIXDATE.fullmatch(value)
        or _RFC850_DATE.fullmatch(value)
        or _ASCTIME_DATE.fullmatch(value)
    )
    if match is None:
        return None
    year = int(match["year"])
    if len(match["year"]) == 2:
        year = _four_digit_year(year)
    try:
        moment = datetime.datetime(
            year,
            _MONTHS.index(match["month"]) + 1,
            int(match["day"]),
            int(match["hour"]),
            int(match["minute"]),
            int(match["second"]),
            tzinfo=datetime.UTC,
        )
    except ValueError:  # a day the month lacks, hour 24, ...
        return None
    return moment.timestamp()


def _four_digit_year(two_digits: int) -> int:
    """RFC 9110: a two-digit year more than 50 years in the future is in the past century."""
    this_year = time.gmtime().tm_year
    year = this_year - this_year % 100 + two_digits
    return year - 100 if year > this_year + 50 else year
