"""Socket places are renewed for the whole process in one round trip; a lost one ends its
socket (``SocketRenewer`` against a real Redis and the real ``emp_limits`` library)."""

from __future__ import annotations

import time

import redis

from webapp.api import limits
from webapp.auth import Principal
from webapp.settings import CustomerLimits


def test_one_round_renews_every_place_and_a_lost_place_is_reported(client: redis.Redis) -> None:
    """Tried: customer acme (2 sockets) holds two places, then one of them is lost (its
    lease ran out and a third socket took the slot); one renewal round: the kept place's
    lease moves forward, the lost one gets on_lost with a 'sockets' refusal, and no other
    place is touched; a closed place is no longer renewed."""
    limits.ensure_library(client)
    lim = limits.Limits(client, CustomerLimits(sockets=2))
    acme = Principal(customer_id="acme")
    kept, lost = lim.open_socket(acme, "conn-kept"), lim.open_socket(acme, "conn-lost")
    lost_reasons: list[limits.Limited] = []
    lim.renewer.add(kept, lambda exc: lost_reasons.append(("kept", exc)))
    lim.renewer.add(lost, lambda exc: lost_reasons.append(("lost", exc)))
    before = client.zscore(kept.key, "conn-kept")
    client.zrem(lost.key, "conn-lost")  # its lease ran out ...
    lim.open_socket(acme, "conn-new")  # ... and another socket took the place
    time.sleep(0.01)  # the renewed lease ends later than the first

    lim.renewer.renew_all()
    assert client.zscore(kept.key, "conn-kept") > before
    assert [(who, exc.limit) for who, exc in lost_reasons] == [("lost", "sockets")]
    assert client.zscore(lost.key, "conn-lost") is None  # refused: nothing written

    kept.close()  # closed: given back and no longer renewed
    lost_reasons.clear()
    lim.renewer.renew_all()
    assert client.zscore(kept.key, "conn-kept") is None and lost_reasons == []
