"""``GET /metrics`` of the webhook service: a live ``emp webhooks`` delivering to a local
receiver.

Before: the webhook service served no ``/metrics`` (404); an operator could not
see how many deliveries succeeded, were retried or given up, nor how late they came.
"""

from __future__ import annotations

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from rest_helpers import ADMIN, TOKEN_A, TOKENS_ENV

from conftest import Received, wait_for
from emp_tasks.producer import submit

FAST = {"EMP_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8", "EMP_WEBHOOK_INITIAL_DELAY_MS": "200",
        "EMP_WEBHOOK_MAX_DELAY_MS": "1000", "EMP_WEBHOOK_TIMEOUT_SECONDS": "3"}
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}


def scrape(base: str) -> dict[tuple[str, tuple], float]:
    reply = requests.get(base + "/metrics", headers=AS_ADMIN, timeout=10)
    assert reply.status_code == 200, reply.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(reply.text) for s in family.samples}


@pytest.mark.timeout(120)
def test_deliveries_show_by_outcome_with_latency_and_attempts(
        app, client, start_server, receiver) -> None:
    """Two events to one hook: the first answered 200, the second 500 then 200 on its retry.
    The scrape counts 2 delivered, 1 retry, none given up; 2 latencies; 3 attempts in all."""
    server = start_server("webhooks", **FAST, **TOKENS_ENV)
    sink = receiver()
    requests_seen: list[str] = []

    def answer(request: Received) -> int:
        # The second request is the second event's first try (the first event is delivered
        # before the second job is submitted). By request, not by job id: the id is known
        # only once submit returns, and the event may be delivered before that.
        requests_seen.append(request.payload["data"]["job_id"])
        return 500 if len(requests_seen) == 2 else 200

    sink.status = answer
    reply = requests.post(server.base + "/webhooks", headers=AS_ADMIN, timeout=10,
                          json={"url": sink.url + "/hook", "events": ["job_submitted"]})
    assert reply.status_code == 201, reply.text
    first = submit("echo", {"n": 1}, app=app).id
    wait_for(lambda: len(sink.delivered()) == 1, message="the first delivery")
    second = submit("echo", {"n": 2}, app=app).id
    wait_for(lambda: len(sink.delivered()) == 2, message="the second delivery, retried")
    assert [r.payload["data"]["job_id"] for r in sink.delivered()] == [first, second]
    assert requests_seen == [first, second, second]

    def counted() -> dict:
        samples = scrape(server.base)
        return samples if samples[("emp_webhook_deliveries_total",
                                   (("outcome", "delivered"),))] == 2 else {}

    samples = wait_for(counted, message="the scrape to count both deliveries")
    outcome = {label: samples[("emp_webhook_deliveries_total", (("outcome", label),))]
               for label in ("delivered", "retry", "gave_up", "refused")}
    assert outcome == {"delivered": 2, "retry": 1, "gave_up": 0, "refused": 0}
    assert samples[("emp_webhook_delivery_latency_seconds_count", ())] == 2
    assert samples[("emp_webhook_delivery_latency_seconds_sum", ())] > 0
    assert samples[("emp_webhook_delivery_attempts_count", ())] == 2
    assert samples[("emp_webhook_delivery_attempts_sum", ())] == 3  # 1 + (500, then 200)
    assert samples[("emp_webhook_request_duration_seconds_count", ())] == 3
    assert samples[("emp_webhook_filed_total", (("result", "queued"),))] == 2
    assert samples[("emp_webhook_backlog", ())] == 0
    assert samples[("process_resident_memory_bytes", ())] > 0


@pytest.mark.timeout(60)
def test_webhook_metrics_need_an_admin_token_unless_made_public(start_server) -> None:
    """Tokens configured: no token 401, a customer's 403; EMP_METRICS_PUBLIC=1 opens it."""
    server = start_server("webhooks", **TOKENS_ENV)
    assert requests.get(server.base + "/metrics", timeout=10).status_code == 401
    customer = {"Authorization": f"Bearer {TOKEN_A}"}
    assert requests.get(server.base + "/metrics", headers=customer, timeout=10).status_code == 403
    public = start_server("webhooks", EMP_METRICS_PUBLIC="1", **TOKENS_ENV)
    assert "emp_webhook_deliveries_total" in requests.get(public.base + "/metrics",
                                                          timeout=10).text
