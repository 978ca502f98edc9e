"""`Retry-After` as RFC 9110 defines it, and nothing else."""

import email.utils
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sopy.routing.retry_policy import retry_after_seconds


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("0", 0.0), ("5", 5.0), (" 120\t", 120.0), ("007", 7.0), ("9" * 400, float("inf"))],
)
def test_delay_seconds_are_whole_ascii_digits(value: str, seconds: float) -> None:
    assert retry_after_seconds(value) == seconds


@pytest.mark.parametrize(
    "value",
    [
        "\u00b2",  # a superscript two: str.isdigit() says yes, float() says no
        "\u0663",  # an Arabic-Indic three: a digit to int(), not to RFC 9110
        "1.5",
        "-3",
        "+3",
        "1e3",
        "3 s",
        "",
        "soon",
        "Sun, 31 Feb 2100 00:00:00 GMT",
        "Sun, 06 Nov 2100 25:00:00 GMT",
        "Sun, 06 Nov 2100 08:49:37 UTC",
        "6 Nov 2100 08:49:37 GMT",
    ],
)
def test_anything_else_is_no_retry_after(value: str) -> None:
    assert retry_after_seconds(value) is None


def test_absent_is_none() -> None:
    assert retry_after_seconds(None) is None


@pytest.mark.parametrize(
    "form",
    [
        "%a, %d %b %Y %H:%M:%S GMT",  # IMF-fixdate
        "%A, %d-%b-%y %H:%M:%S GMT",  # obsolete RFC 850
        "%a %b %e %H:%M:%S %Y",  # obsolete asctime
    ],
)
def test_an_http_date_in_any_of_its_three_forms_is_seconds_from_now(form: str) -> None:
    value = time.strftime(form, time.gmtime(time.time() + 30))
    seconds = retry_after_seconds(value)
    assert seconds is not None
    assert 28 <= seconds <= 31


def test_a_date_in_the_past_means_now() -> None:
    assert retry_after_seconds(email.utils.formatdate(time.time() - 3600, usegmt=True)) == 0.0


@given(st.text())
def test_no_value_raises_and_none_is_negative(value: str) -> None:
    seconds = retry_after_seconds(value)
    assert seconds is None or seconds >= 0
