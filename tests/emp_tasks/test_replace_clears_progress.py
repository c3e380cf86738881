"""A job that replaced itself (``Task.replace``) runs the replacement from 0: how far
the replaced run got (60%) must not show on the job while the replacement runs."""

from __future__ import annotations

import json

import pytest
import requests

from conftest import wait_for
from emp_tasks.producer import get_job
from emp_tasks.websocket_client import WebSocketClient

#: Job types the worker imports (``EMP_CELERY_CONFIG``); each step waits for a key.
PROGRESS_REPLACE_JOBS = '''
import os
import time

import redis
from celery import shared_task


def client():
    return redis.Redis.from_url(os.environ["EMP_REDIS_URL"], decode_responses=True)


def wait_key(name):
    deadline = time.monotonic() + 90
    while not client().get(name) and time.monotonic() < deadline:
        time.sleep(0.05)


@shared_task(bind=True, name="test.at_60_then_replace", service="echo")
def at_60_then_replace(self):
    self.progress(60, "step 6 of 10")
    client().rpush("test:at60", self.request.id)
    wait_key("test:replace")
    raise self.replace(reports_later.s())


@shared_task(bind=True, name="test.reports_later", service="echo")
def reports_later(self):
    client().rpush("test:replacement", self.request.id)
    wait_key("test:report")
    self.progress(30, "step 3 of 10")
    client().rpush("test:at30", self.request.id)
    wait_key("test:finish")
    return "done"
'''


@pytest.mark.timeout(180)
def test_a_replaced_job_shows_no_progress_of_the_replaced_run(
        app, client, start_worker, start_server, jobs_env) -> None:
    """Tried: a job of ``test.at_60_then_replace`` reports 60% ("step 6 of 10"), then
    runs ``raise self.replace(reports_later.s())``; the replacement starts and waits
    before reporting 30%. While it waits, the record (``get_job``), REST ``GET
    /api/jobs/<id>`` and a client WebSocket following the job show no progress; then
    30, then the completion. With the clearing in ``emp_replace`` taken out
    (``forget_run``), the record and REST said 60 on the running replacement (seen
    failing so); no test covered the replace path before. The socket sends events
    only, none of which carries the record's progress: it shows the replacement's 30
    as the first progress after ``job_replaced``."""
    start_worker("w1", **jobs_env("progress_replace_jobs", PROGRESS_REPLACE_JOBS))
    server = start_server("api")

    def shown(job_id: str) -> dict:
        """The job as REST ``GET /api/jobs/<id>`` shows it."""
        reply = requests.get(f"{server.base}/api/jobs/{job_id}", timeout=30)
        assert reply.status_code == 200, reply.text
        return reply.json()["job"]

    def body() -> None:
        """Runs on the workers only."""
    job = app.task(name="test.at_60_then_replace", service="echo", shared=False)(
        body).apply_async()
    wait_for(lambda: client.lrange("test:at60", 0, -1) == [job.id], timeout=60,
             message="the first run to report 60%")
    assert get_job(job.id, app=app)["progress"] == 60
    assert shown(job.id)["progress"] == 60
    ws = WebSocketClient.connect(f"{server.ws_base}/ws/client/follower-1")
    messages: list[dict] = []
    try:
        assert json.loads(ws.receive(timeout=20))["type"] == "connection_established"
        ws.send(json.dumps({"type": "subscribe_progress", "job_id": job.id}))
        client.set("test:replace", "1")
        wait_for(lambda: client.lrange("test:replacement", 0, -1) == [job.id], timeout=60,
                 message="the replacement to start")
        record = get_job(job.id, app=app)
        assert record["status"] == "in_progress" and record["attempts"] == 2, record
        assert len(record["replaced"]) == 1, record
        assert "progress" not in record and "progress_details" not in record, record
        view = shown(job.id)
        assert view["status"] == "in_progress"
        assert view.get("progress") is None and view.get("progress_details") is None, view
        client.set("test:report", "1")
        wait_for(lambda: client.lrange("test:at30", 0, -1) == [job.id], timeout=60,
                 message="the replacement to report 30%")
        assert get_job(job.id, app=app)["progress"] == 30
        assert shown(job.id)["progress"] == 30
        client.set("test:finish", "1")
        while not messages or messages[-1].get("type") != "complete_job":
            text = ws.receive(timeout=30)
            assert text is not None, f"no completion; got {[m['type'] for m in messages]}"
            messages.append(json.loads(text))
    finally:
        ws.close()
    assert job.get(timeout=10) == "done"
    events = [m for m in messages if "event_id" in m]
    types = [m["type"] for m in events]
    after = events[types.index("job_replaced"):]
    assert [m["type"] for m in after] == [
        "job_replaced", "job_assigned", "job_started", "update_job_progress",
        "complete_job"], types
    assert all("progress" not in m for m in after[:3]), after[:3]
    assert after[3]["progress"] == 30 and after[3]["message"] == "step 3 of 10", after[3]
