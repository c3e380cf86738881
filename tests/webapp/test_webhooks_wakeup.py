"""Idle dispatchers wake for new deliveries one per hook with work, not all at once."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import redis

from capability_router.keys import Keys
from conftest import wait_for
from webapp.webhooks.config import WebhookConfig, parse_networks
from webapp.webhooks.library import WebhookFunctions
from webapp.webhooks.service import DeliveryService
from webapp.webhooks.store import HookStore
from webapp.webhooks.wakeup import Wakeup


def waiters(wakeup: Wakeup, count: int,
            timeout: float) -> tuple[list[bool], list[threading.Thread]]:
    """``count`` threads each waiting once; their answers land in the list."""
    answers: list[bool] = []
    lock = threading.Lock()

    def wait() -> None:
        woken = wakeup.wait(timeout)
        with lock:
            answers.append(woken)

    threads = [threading.Thread(target=wait, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    return answers, threads


def test_one_notification_wakes_one_waiting_thread() -> None:
    wakeup = Wakeup(4)
    answers, threads = waiters(wakeup, 4, timeout=1.5)
    time.sleep(0.2)  # all four wait
    wakeup.notify(1)
    wait_for(lambda: answers == [True], timeout=2, message="one thread woken")
    time.sleep(0.3)
    assert answers == [True], "the other three still sleep"
    for thread in threads:
        thread.join(5)
    assert sorted(answers) == [False, False, False, True], "the rest timed out"


def test_notifications_given_while_nobody_waits_are_kept_up_to_the_thread_count() -> None:
    wakeup = Wakeup(2)
    wakeup.notify(5)  # a busy pool: kept for the next waits, at most one per thread
    started = time.monotonic()
    assert wakeup.wait(2.0) is True
    assert wakeup.wait(2.0) is True
    assert time.monotonic() - started < 1.0, "kept wake-ups return at once"
    assert wakeup.wait(0.2) is False, "only as many as there are threads were kept"


def test_notify_all_wakes_everyone_now_and_later() -> None:
    wakeup = Wakeup(3)
    answers, threads = waiters(wakeup, 3, timeout=5.0)
    time.sleep(0.2)
    wakeup.notify_all()
    for thread in threads:
        thread.join(2)
    assert answers == [True, True, True]
    assert wakeup.wait(5.0) is True  # a shutdown: later waits do not sleep


@pytest.mark.timeout(60)
def test_a_delivery_costs_about_one_claim_not_one_per_dispatcher(
        client: redis.Redis, receiver: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tried: one hook, 8 dispatcher threads, 30 events 30 ms apart (each its own batch).
    Every event arrives in order, and the dispatchers asked Redis for a hook at most
    twice per delivery (the claim that finds it, the one that finds the queue empty)
    plus their idle polls (once a second each): 60 here. When every idle dispatcher
    woke for every batch it was 270."""
    claims = []
    original = WebhookFunctions.claim

    def counted(self: WebhookFunctions, *args: Any) -> Any:
        claims.append(time.monotonic())
        return original(self, *args)

    monkeypatch.setattr(WebhookFunctions, "claim", counted)
    sink = receiver()
    config = WebhookConfig(dispatchers=8, instance="wakeup-test",
                           allowed_networks=parse_networks("127.0.0.0/8"))
    HookStore(client, config).create({"url": sink.url + "/hook", "events": ["job_submitted"]})
    service = DeliveryService(client, config).start()
    try:
        wait_for(lambda: service.started and service.consumer.leading, timeout=10,
                 message="the service consumes")
        time.sleep(1.5)  # the dispatchers' first polls are behind them
        claims.clear()
        started = time.monotonic()
        for n in range(30):
            data = {"job_id": f"job-{n}", "job_type": "echo", "priority": 50}
            client.xadd(Keys().events, {"event": "job_submitted", "job_id": f"job-{n}",
                                        "data": json.dumps(data)})
            time.sleep(0.03)
        wait_for(lambda: len(sink.delivered()) == 30, timeout=20, message="all 30 delivered")
        elapsed = time.monotonic() - started
        idle_polls = config.dispatchers * (elapsed + 2)
        assert len(claims) <= 2 * 30 + idle_polls, (
            f"{len(claims)} claims for 30 deliveries in {elapsed:.1f} s")
        assert [r.payload["data"]["job_id"] for r in sink.delivered()] == \
            [f"job-{n}" for n in range(30)]
    finally:
        service.stop()
