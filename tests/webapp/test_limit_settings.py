"""Parsing of per-customer limits and resume ids: a bad value is refused naming itself."""

from __future__ import annotations

import pytest

from webapp.api.resume import BadResumeId, parse_resume_id
from webapp.settings import CustomerLimits, WebSettings, parse_limits


def test_customer_limits_override_the_defaults_per_customer(monkeypatch) -> None:
    """Tried: defaults from EMP_LIMIT_*, two customers overridden, one named twice."""
    monkeypatch.setenv("EMP_LIMIT_RATE", "2.5")
    monkeypatch.setenv("EMP_LIMIT_SOCKETS", "7")
    monkeypatch.setenv("EMP_CUSTOMER_LIMITS",
                       " acme:rate=5,pending=100 ; globex:sockets=0;acme:classes=3")
    settings = WebSettings.from_env()
    assert settings.default_limits == CustomerLimits(rate=2.5, sockets=7)
    assert settings.customer_limits == {
        "acme": CustomerLimits(rate=5, pending=100, classes=3, sockets=7),
        "globex": CustomerLimits(rate=2.5, sockets=0),
    }


@pytest.mark.parametrize("text, named", [
    ("acme", "acme"), (":rate=1", ":rate=1"), ("acme:speed=1", "speed=1"),
    ("acme:rate=fast", "rate must be a number"), ("acme:pending=-1", "pending must be >= 0"),
    ("acme:rate=inf", "rate must be >= 0"), ("acme:burst=1.5", "burst must be a number"),
    # Before, each was taken: the last value won without a word, and limits for a name no
    # job's customer_id can be applied to no one
    ("acme:rate=5,rate=7", "gives acme's rate twice"),
    ("acme:rate=5;globex:sockets=1;acme:rate=9", "gives acme's rate twice"),
    ("big corp:rate=5", "'big corp' is not a customer id"),
])
def test_a_bad_limit_item_is_refused_naming_it(text: str, named: str) -> None:
    with pytest.raises(ValueError, match="EMP_CUSTOMER_LIMITS") as refused:
        parse_limits(text, CustomerLimits())
    assert named in str(refused.value)


@pytest.mark.parametrize("value", ["0", "0-0", "1700000000000-5", "18446744073709551615-0"])
def test_stream_ids_are_resume_ids(value: str) -> None:
    assert parse_resume_id(value) == value


@pytest.mark.parametrize("value", ["abc", " 1-0", "1-0 ", "+1", "1-2-3", "0x10", "1.5",
                                   "18446744073709551616", 5, ["1-0"]])
def test_anything_else_is_refused_naming_the_field(value: object) -> None:
    with pytest.raises(BadResumeId, match="Last-Event-ID") as refused:
        parse_resume_id(value, "Last-Event-ID")
    assert refused.value.field == "Last-Event-ID"
