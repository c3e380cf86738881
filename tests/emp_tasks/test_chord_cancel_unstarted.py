"""A chord part cancelled while its worker holds it in Celery's rate-limit bucket (claimed,
not started): the chord's body ends (``ChordError``) whether that worker stops (SIGTERM),
dies (SIGKILL) or keeps running, and the part is counted once."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest
import redis
from celery import Celery, chord
from celery.exceptions import ChordError

from conftest import wait_for
from emp_tasks.producer import cancel, get_job, services
from emp_tasks.stored_request import stored_request

#: A job type Celery lets run once every 6 s on a worker (``rate_limit``).
RATE_LIMITED_JOBS = '''
import os

import redis
from celery import shared_task


@shared_task(bind=True, name="test.every_6s", service="echo", rate_limit="10/m")
def every_6s(self):
    redis.Redis.from_url(os.environ["EMP_REDIS_URL"]).rpush("test:ran", self.request.id)
    return "ran"
'''


def counted_parts(app: Celery, group_id: str) -> list[str]:
    """The task ids of the parts the result backend's chord counter holds, once per count
    (Celery keeps a chord's part results in ``<group key>.j``, a sorted set or a list)."""
    backend: Any = app.backend
    key = backend.get_key_for_group(group_id, ".j")
    kind = backend.client.type(key)
    kind = kind.decode() if isinstance(kind, bytes) else kind
    raw = (backend.client.zrange(key, 0, -1) if kind == "zset"
           else backend.client.lrange(key, 0, -1))
    return [backend.decode(entry)[1] for entry in raw]


@pytest.mark.timeout(150)
@pytest.mark.parametrize("worker_end", ["sigterm", "sigkill", "keeps running"])
def test_a_chord_part_cancelled_in_the_rate_limit_bucket_ends_the_body_once(
        app, client: redis.Redis, start_worker, jobs_env, worker_end: str) -> None:
    """Tried: a chord of three parts (a rate-limited task, two echo jobs) on one worker
    whose rate-limit bucket was just used, so it claims the rate-limited part and holds it
    there (record ``assigned``); that part is cancelled, then the worker is SIGTERMed, or
    SIGKILLed, or kept running (a second worker serves what is left). Before the fix
    the body stayed PENDING for good once the worker stopped or died: the cancel stored
    REVOKED without the request (no chord count), leaving the count to the worker's revoke
    path, which a stopped worker never takes. Now the body fails with ``ChordError`` (as
    Celery's revoke makes it) and the counter holds each part once, whatever the worker
    does."""
    def body() -> None:
        """Runs on the workers only."""
    every_6s = app.task(name="test.every_6s", service="echo", rate_limit="10/m",
                        shared=False)(body)
    env = jobs_env("rate_limited_jobs", RATE_LIMITED_JOBS)
    worker = start_worker("w1", **env)
    assert every_6s.apply_async().get(timeout=30) == "ran"  # the bucket is empty for 6 s
    echo = services(app)["echo"]
    result = chord([every_6s.si(), echo.si(n=1), echo.si(n=2)], echo.si(n=3)).apply_async()
    held, *others = result.parent.results
    wait_for(lambda: get_job(held.id, app=app)["status"] == "assigned", timeout=30,
             message="the worker to claim the rate-limited part")
    time.sleep(0.5)  # into the bucket
    assert get_job(held.id, app=app)["status"] == "assigned"
    assert cancel(held.id, app=app) == "cancelled"
    if worker_end != "keeps running":
        worker.kill(signal.SIGTERM if worker_end == "sigterm" else signal.SIGKILL)
        start_worker("w2", **env)

    outcome = app.AsyncResult(result.id)
    wait_for(lambda: outcome.state in ("SUCCESS", "FAILURE"), timeout=40,
             message="the chord's body to end")
    assert outcome.state == "FAILURE"
    assert isinstance(outcome.result, ChordError), outcome.result
    assert "TaskRevokedError" in str(outcome.result), outcome.result
    for part in others:
        assert part.get(timeout=30)["echo"] in ({"n": 1}, {"n": 2})
    if worker_end == "keeps running":  # its bucket lets the cancelled part go: it drops it
        time.sleep(7.0)
    assert sorted(counted_parts(app, result.parent.id)) == sorted(
        [held.id, *(part.id for part in others)])
    assert client.lrange("test:ran", 0, -1)[1:] == []  # the cancelled part never ran
    assert app.AsyncResult(result.id).state == "FAILURE"
    assert get_job(held.id, app=app)["status"] == "cancelled"


@pytest.mark.fast
def test_a_chord_part_reported_twice_is_counted_once(app) -> None:
    """Tried: a chord of two echo jobs, no worker; the first is reported REVOKED with its
    request twice (the canceller's store, then its worker's revoke path when the bucket
    lets the run go). On Celery 5.5.3 without the result backend's marker both reports
    counted: the second made the count two of two, so the body failed with ``ChordError``
    while the other part had not ended (Celery 5.7 counts once itself; the marker keeps
    it so on 5.5 and 5.6 too). The body waits for the other
    part (cancelled here: then it fails)."""
    echo = services(app)["echo"]
    result = chord([echo.si(n=1), echo.si(n=2)], echo.si(n=3)).apply_async()
    first, second = result.parent.results
    request = stored_request(app, "default", first.id)
    assert request is not None and request.chord
    app.backend.mark_as_revoked(first.id, "cancelled", request=request)
    app.backend.mark_as_revoked(first.id, "revoked", request=request)
    assert app.AsyncResult(result.id).state == "PENDING"
    assert counted_parts(app, result.parent.id) == [first.id]
    assert cancel(second.id, app=app) == "cancelled"
    assert app.AsyncResult(result.id).state == "FAILURE"
    assert sorted(counted_parts(app, result.parent.id)) == sorted([first.id, second.id])


@pytest.mark.fast
def test_a_count_redis_refused_is_left_to_the_next_report(app, client, redis_server) -> None:
    """Tried: a chord part's first report (the canceller's) reached a Redis that refused
    the count itself (here an ACL user that may not ZADD or RPUSH, the commands Celery
    counts a part with) after its counted-once marker was set; then the worker's report.
    With the marker kept, that second report was taken for a repeat and skipped: the part
    was never counted. Now a refused count gives the marker back and the next report
    counts the part."""
    client.acl_setuser("nocount", enabled=True, passwords=["+pw"], keys=["~*"],
                       channels=["*"], commands=["+@all", "-zadd", "-rpush"])
    try:
        limited = type(app.backend)(
            app=app, url=redis_server.url.replace("redis://", "redis://nocount:pw@"))
        echo = services(app)["echo"]
        result = chord([echo.si(n=1), echo.si(n=2)], echo.si(n=3)).apply_async()
        first = result.parent.results[0]
        request = stored_request(app, "default", first.id)
        with pytest.raises(redis.exceptions.ResponseError):
            limited.mark_as_revoked(first.id, "cancelled", request=request)
        assert counted_parts(app, result.parent.id) == []
        app.backend.mark_as_revoked(first.id, "revoked", request=request)
        assert counted_parts(app, result.parent.id) == [first.id]
    finally:
        client.acl_deluser("nocount")
