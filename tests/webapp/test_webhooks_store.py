"""A hook's delivery history against a real Redis: its order survives same-ms ties."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from capability_router.functions import redis_now_ms
from webapp.webhooks import keys
from webapp.webhooks.config import WebhookConfig
from webapp.webhooks.consumer import delivery_id
from webapp.webhooks.library import WebhookFunctions, ensure_library
from webapp.webhooks.store import HookStore, new_hook_id

#: Deliveries filed in one pipeline: far more than one ms holds, so many share a ms.
BURST = 300


@pytest.fixture
def store(client: redis.Redis) -> HookStore:
    ensure_library(client)
    return HookStore(client, WebhookConfig())


def hook_of(store: HookStore) -> str:
    return store.create({"url": "http://127.0.0.1:9/h", "events": ["job_submitted"]})["id"]


def file_burst(store: HookStore, hook_id: str, count: int = BURST) -> list[str]:
    """File ``count`` deliveries in one round trip, as the consumer does; their ids in order."""
    config = store.config
    ids, calls = [], []
    for n in range(count):
        event_id = f"default:1-{n}"
        ids.append(delivery_id(hook_id, event_id))
        calls.append(WebhookFunctions.enqueue_call(
            ids[-1], hook_id, event_id, "job_submitted", f"job-{n}", 1, "{}", 0,
            config.max_backlog, config.history_per_hook, config.recent_max))
    assert store.functions.enqueue_many(calls) == ["queued"] * count
    return ids


def test_same_ms_deliveries_keep_their_filing_order_in_history_and_recent(store) -> None:
    """Tried: 300 deliveries filed in one pipeline (many in the same ms of Redis TIME),
    then the hook's history and the all-hooks recent list read back. Before the fix
    both were scored by ms, so a tie fell back to the random delivery id."""
    hook_id = hook_of(store)
    filed = file_burst(store, hook_id)
    scores = store.client.zrange(keys.log(hook_id), 0, -1, withscores=True)
    assert len({score for _, score in scores}) == BURST  # no two share a place
    newest_first = list(reversed(filed))
    assert [d["id"] for d in store.deliveries(hook_id, BURST)] == newest_first
    assert [d["id"] for d in store.recent(BURST)] == newest_first
    assert [d["job_id"] for d in store.deliveries(hook_id, 3)] == [
        f"job-{n}" for n in (BURST - 1, BURST - 2, BURST - 3)]


def test_test_delivery_recorded_after_a_burst_is_the_newest(store) -> None:
    """Tried: a burst filed, then a test call recorded at once (same ms likely):
    it heads both the hook's history and the recent list."""
    hook_id = hook_of(store)
    file_burst(store, hook_id, 50)
    store.record_test(hook_id, "dlv_test_x", {"event_id": "test:x", "event_type": "job_submitted",
                                              "data": {"job_id": "test_job_x"}}, "{}",
                      attempt(True))
    assert store.deliveries(hook_id, 1)[0]["id"] == "dlv_test_x"
    top = store.recent(1)[0]
    assert top["id"] == "dlv_test_x" and top["test"] is True and top["status"] == "delivered"
    assert top["attempt_history"][0]["attempt_number"] == 1


def test_test_delivery_of_a_deleted_hook_writes_nothing(store) -> None:
    """Tried: recording a test call for a hook deleted meanwhile; nothing is kept."""
    hook_id = hook_of(store)
    store.delete(hook_id)
    store.record_test(hook_id, "dlv_test_y", {"event_id": "test:y", "event_type": "job_submitted",
                                              "data": {}}, "{}", attempt(False))
    assert not store.client.exists(keys.delivery("dlv_test_y"), keys.log(hook_id))
    assert store.recent(10) == []


def test_history_written_in_plain_ms_by_an_earlier_version_stays_older(store) -> None:
    """Tried: a history entry scored in plain ms (the earlier layout), then new
    deliveries: the old entry stays the oldest and is the one trimmed first."""
    hook_id = hook_of(store)
    before = redis_now_ms(store.client) - 1  # an upgrade restarts the service: a ms at least
    store.client.zadd(keys.log(hook_id), {"dlv_old": before})
    store.client.zadd(keys.RECENT, {"dlv_old": before})
    filed = file_burst(store, hook_id, 5)
    assert store.client.zrange(keys.log(hook_id), 0, -1) == ["dlv_old", *filed]
    assert store.client.zrange(keys.RECENT, 0, -1) == ["dlv_old", *filed]


def attempt(success: bool) -> dict[str, Any]:
    return json.loads(json.dumps({
        "timestamp": 1, "success": success, "outcome": "delivered" if success else "failed",
        "response_status": 200 if success else None, "latency_ms": 1, "response_body": "",
        "error_message": None if success else "refused", "next_retry_at": None,
        "address": "127.0.0.1"}))


def test_hooks_created_in_the_same_ms_list_in_creation_order(store: HookStore) -> None:
    """Tried: 40 registrations in one round trip (many share a ms; registered one at a
    time, 2,000 on a loaded machine once fell in distinct ms and tried no tie). The list,
    oldest first, was ordered by the random hook id within a ms, so the monitor's and the
    API's listing swapped hooks created together."""
    created = [new_hook_id() for _ in range(40)]
    fields = {"active": "1", "filters": "{}", "retry_config": "{}", "secret": "s" * 32,
              "url": "http://127.0.0.1:9/h", "events": json.dumps(["job_submitted"])}
    with store.client.pipeline(transaction=False) as pipe:
        for hook_id in created:
            k, a = WebhookFunctions.create_call(hook_id, fields)
            pipe.fcall("emp_wh_create", len(k), *k, *a)
        pipe.execute()
    created_at = [h["created_at"] for h in store.list()]
    assert len(set(created_at)) < len(created_at), "no two hooks shared a ms; no tie tried"
    assert [h["id"] for h in store.list()] == created


def test_a_replaced_secret_leaves_the_hook_at_its_next_use_or_write_once_ended(
        store: HookStore, client: redis.Redis) -> None:
    """Tried: hooks holding a replaced secret whose overlap ended 1 s ago (as release 2
    of the library left them: no entry in ``rotations`` to sweep), one claimed for a
    delivery, one changed by a PUT; a rotation still in its overlap claimed and changed
    too; and a rotation under ``secret_overlap_seconds`` 0. Before, every replaced
    secret stayed in its hash for good, and the claim handed the ended one to the
    dispatcher. Now an ended one goes at the hook's next claim or write, a running one
    stays until its end, and an overlap of 0 keeps none."""
    now = redis_now_ms(client)
    used, written, running = hook_of(store), hook_of(store), hook_of(store)
    for hook_id, until in ((used, now - 1000), (written, now - 1000), (running, now + 60_000)):
        client.hset(keys.hook(hook_id), mapping={"previous_secret": f"old-{hook_id}",
                                                 "previous_secret_until": until})
    file_burst(store, used, 1)
    claim = store.functions.claim(30_000, "test:claim")
    assert claim.hook_id == used and "previous_secret" not in claim.hook
    assert claim.now_ms >= now  # Redis' clock at the claim: what signing judges by
    store.update(written, {"active": True})
    store.update(running, {"active": True})
    file_burst(store, running, 1)
    assert store.functions.claim(30_000, "test:claim2").hook["previous_secret"] == \
        f"old-{running}"
    for hook_id in (used, written):
        stored = client.hgetall(keys.hook(hook_id))
        assert "previous_secret" not in stored and "previous_secret_until" not in stored
    assert client.hget(keys.hook(running), "previous_secret") == f"old-{running}"
    assert store.get(running)["previous_secret_until"] == now + 60_000
    assert client.zscore(keys.ROTATIONS, running) == now + 60_000

    instant = HookStore(client, WebhookConfig(secret_overlap_seconds=0))
    rotated = hook_of(instant)
    assert instant.update(rotated, {"secret": "new-secret"})["previous_secret_until"] is None
    stored = client.hgetall(keys.hook(rotated))
    assert stored["secret"] == "new-secret" and "previous_secret" not in stored
    assert client.zscore(keys.ROTATIONS, rotated) is None
