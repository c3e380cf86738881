"""Pending places are given back lazily, and two requests of one customer at its limit
may prune the same finished jobs at once (``Limits.admit_job`` against a real Redis and
the real ``emp_limits`` library)."""

from __future__ import annotations

import pytest
import redis

from capability_router.keys import Keys
from webapp.api import limits
from webapp.auth import Principal
from webapp.settings import CustomerLimits


def test_a_request_that_loses_the_prune_race_is_still_admitted(client: redis.Redis) -> None:
    """Tried: customer acme at pending=2 has two admitted jobs, both finished since. A
    request finds them finished, and before it gives them back a second request of acme
    gives them back and takes a place. The first request used to get 429 (its release
    freed nothing, so it did not try again) though a place was free; the production
    bench saw 4 such refusals in 60,000 submits. Now both are admitted, and a third,
    with no finished job left to give back, is refused with nothing written."""
    limits.ensure_library(client)
    lim = limits.Limits(client, CustomerLimits(rate=0, pending=2, classes=0))
    acme = Principal(customer_id="acme")
    for job_id in ("old-1", "old-2"):
        lim.admit_job(acme, "default", job_id, "cls")
        client.hset(Keys("default").job(job_id), "status", "completed")

    real_call = lim.call
    raced: list[bool] = []

    def call(name: str, keys: list[str], *args: object) -> object:
        if name == "emp_limit_release" and not raced:
            raced.append(True)
            lim.call = real_call  # the other request runs between the read and the release
            lim.admit_job(acme, "default", "other", "cls")
        return real_call(name, keys, *args)

    lim.call = call  # type: ignore[method-assign]
    lim.admit_job(acme, "default", "mine", "cls")
    assert raced, "the race was not staged"
    open_key = limits.customer_prefix("acme") + "open"
    assert {m.split("|")[1] for m in client.zrange(open_key, 0, -1)} == {"other", "mine"}

    for job_id in ("other", "mine"):  # filed and waiting (a job with no record counts done)
        client.hset(Keys("default").job(job_id), "status", "pending")
    with pytest.raises(limits.Limited) as refused:
        lim.admit_job(acme, "default", "third", "cls")
    assert refused.value.limit == "pending"
    assert {m.split("|")[1] for m in client.zrange(open_key, 0, -1)} == {"other", "mine"}
