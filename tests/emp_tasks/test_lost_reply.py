"""A worker's connection cut after Redis ran its call but before the reply came back:
the client sends the call again, and a job's outcome must still reach everyone once."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from redis_proxy import RedisProxy, State

from capability_router.errors import InvalidJob
from capability_router.keys import Keys
from conftest import wait_for
from emp_tasks.app import create_app
from emp_tasks.producer import cancel, get_job, submit


class ReplyCutter(RedisProxy):
    """A TCP proxy to Redis that, ``times`` times (once by default), forwards a command
    holding ``marker`` and then closes both sides instead of relaying its reply: Redis
    ran it, the caller never learns so and sends it again on a new connection (redis-py's
    retry; kombu's own retry of the publish once redis-py has given up)."""

    def __init__(self, port: int, marker: bytes, times: int = 1) -> None:
        super().__init__(port)
        self.marker, self.times = marker, times
        self.armed = True

    def request(self, data: bytes, state: State) -> bytes:
        with self.lock:
            if self.armed and self.marker in data:
                self.times -= 1
                self.armed, state["cut_next_reply"] = self.times > 0, True
        return data

    def reply(self, data: bytes, state: State) -> bytes | None:
        return None if state.get("cut_next_reply") else data

    @property
    def cuts(self) -> int:
        """Replies the client lost: connections closed, both ends, instead of relaying."""
        return self.closed_by_reply_hook

    def cuts_once_settled(self, expected: int, timeout: float = 10.0) -> int:
        """``cuts``, waiting up to ``timeout`` for ``expected``: the client's retry on a new
        connection can finish before this proxy's thread has closed both ends of the cut
        one and counted it (seen once in a full run: 0 right after ``cancel()`` returned)."""
        deadline = time.monotonic() + timeout
        while self.cuts < expected and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.cuts


@pytest.fixture
def reply_cutter(redis_server) -> Iterator[type]:
    made: list[ReplyCutter] = []

    def make(marker: bytes, times: int = 1) -> ReplyCutter:
        made.append(ReplyCutter(redis_server.port, marker, times))
        return made[-1]

    yield make
    for cutter in made:
        cutter.close()


@pytest.mark.timeout(90)
def test_a_completion_whose_reply_was_lost_still_reaches_the_result_backend(
        app, client, start_worker, reply_cutter) -> None:
    """Tried: a worker whose Redis connection is cut right after Redis ran its
    emp_complete (the job recorded completed by attempt 1), before the reply arrived;
    redis-py sends the call again. Before the fix the second call was refused
    ('completed': no longer active), the worker took its own completion for a fenced-off
    run and stored nothing in Celery's result backend: ``AsyncResult.get()`` waited for
    ever on a job its record said was completed, attempt 1."""
    cutter = reply_cutter(b"emp_complete")
    start_worker("cut-w1", EMP_REDIS_URL=cutter.url)
    result = submit("echo", {"n": 7}, app=app)
    assert result.get(timeout=20)["echo"] == {"n": 7}
    assert cutter.cuts_once_settled(1) == 1
    record = get_job(result.id, app=app)
    assert (record["status"], record["attempts"], record["worker_id"]) == ("completed", 1,
                                                                          "cut-w1")
    events = [fields["event"] for _, fields in client.xrange(Keys("default").job_events(
        result.id))]
    assert events.count("complete_job") == 1, events
    wait_for(lambda: client.zscore(Keys("default").leases, result.id) is None, timeout=10,
             message="no lease left")


@pytest.mark.timeout(90)
def test_a_claim_whose_reply_was_lost_runs_its_job_at_once_on_attempt_one(
        app, client, start_worker, reply_cutter) -> None:
    """Tried: a job pending when a worker starts whose connection is cut right after
    Redis ran its emp_claim (the job assigned to it, attempt 1), before the reply
    arrived. Before the fix the job sat assigned to a worker that did not know it until
    its lease (here 10 s) expired, then ran as attempt 2: the lost reply cost an attempt
    and a lease. Now the worker, reconnected, gives back the claim it never received:
    the job runs at once, and its lost attempt does not count."""
    job = submit("echo", {"n": 2}, app=app)
    cutter = reply_cutter(b"emp_claim")
    started = time.monotonic()
    start_worker("cut-claim", EMP_REDIS_URL=cutter.url, EMP_LEASE_SECONDS="10")
    assert job.get(timeout=30)["echo"] == {"n": 2}
    took = time.monotonic() - started
    assert cutter.cuts_once_settled(1) == 1
    events = [fields["event"] for _, fields in client.xrange(Keys("default").job_events(
        job.id))]
    assert "job_requeued" not in events and took < 10, (took, events)
    assert events[:3] == ["job_submitted", "job_assigned", "job_released"], events
    record = get_job(job.id, app=app)
    assert record["status"] == "completed"


@pytest.mark.timeout(90)
def test_a_failure_whose_reply_was_lost_still_reaches_the_result_backend(
        app, client, start_worker, reply_cutter) -> None:
    """Tried: as above, with a run that fails for good (no retries left): the connection
    is cut after Redis ran its emp_fail, before the reply. Before the fix the call sent
    again was refused ('failed'), the run stored no FAILURE and ``get()`` waited for ever
    on a job its record said had failed."""
    cutter = reply_cutter(b"emp_fail")
    start_worker("cut-w2", EMP_REDIS_URL=cutter.url)
    result = submit("echo", {"fail_times": 1}, app=app, max_retries=0)
    with pytest.raises(Exception, match="asked to fail"):
        result.get(timeout=20)
    assert cutter.cuts_once_settled(1) == 1
    record = get_job(result.id, app=app)
    assert (record["status"], record["attempts"]) == ("failed", 1)
    events = [fields["event"] for _, fields in client.xrange(Keys("default").job_events(
        result.id))]
    assert events.count("job_failed") == 1, events


@pytest.mark.timeout(60)
def test_a_submit_whose_reply_was_lost_is_accepted_once(client, reply_cutter) -> None:
    """Tried: a producer whose connection is cut right after Redis ran its emp_enqueue
    (the job filed), before the reply; redis-py sends it again. Before the fix the
    second call found the job and ``submit()`` raised InvalidJob "already exists" for
    the job it had just filed: the caller, told it failed, submits again (a second
    job). Now the submit returns the job, filed once."""
    cutter = reply_cutter(b"emp_enqueue")
    producer = create_app(cutter.url)
    try:
        result = submit("echo", {"n": 3}, app=producer)
    finally:
        producer.close()
    assert cutter.cuts_once_settled(1) == 1
    assert client.hget(Keys("default").job(result.id), "status") == "pending"
    assert client.zcard(Keys("default").status_index("pending")) == 1


@pytest.mark.timeout(60)
def test_a_publish_that_kombu_retries_after_lost_replies_is_accepted_once(
        client, reply_cutter) -> None:
    """Tried: every reply to the producer's emp_enqueue cut, three times running, so
    that redis-py gives up and kombu retries the publish itself (Celery's publish retry
    policy), as a message with a new delivery tag. Before the fix that repeat found the
    job the first send had filed and ``submit()`` raised InvalidJob "already exists"
    for it. Now it is recognised as the same publish: the job is filed once, the submit
    answers it."""
    cutter = reply_cutter(b"emp_enqueue", times=3)
    producer = create_app(cutter.url)
    try:
        result = submit("echo", {"n": 3}, app=producer)
    finally:
        producer.close()
    assert cutter.cuts_once_settled(3) == 3
    assert client.hget(Keys("default").job(result.id), "status") == "pending"
    assert client.zcard(Keys("default").status_index("pending")) == 1
    events = [f["event"] for _, f in client.xrange(Keys("default").job_events(result.id))]
    assert events == ["job_submitted"], events


def test_a_second_send_of_a_job_id_is_still_refused(app, client) -> None:
    """Tried: two separate ``submit()`` calls with the same job id and the same
    payload (a caller reusing an id, not a retry of one publish). The second is still
    refused "already exists", and the job is filed once."""
    submit("echo", {"n": 3}, app=app, task_id="same-id-twice")
    with pytest.raises(InvalidJob, match="already exists"):
        submit("echo", {"n": 3}, app=app, task_id="same-id-twice")
    assert client.zcard(Keys("default").status_index("pending")) == 1


@pytest.mark.timeout(90)
def test_a_run_whose_job_record_vanished_still_answers_its_caller(
        app, client, start_worker) -> None:
    """Tried: a job running (echo, 2 s) when its record vanishes from Redis, as a Redis
    restarted without persistence or an evicting maxmemory-policy leaves it (DEL of the
    record). Before the fix the run logged at INFO that its attempt was "taken from this
    run (now None)" and stored nothing: ``AsyncResult.get()`` waited for ever on a job
    that had run to the end. Now the worker logs an ERROR naming the likely cause and
    the result reaches the result backend."""
    worker = start_worker("lost-w1")
    result = submit("echo", {"n": 5, "sleep": 2}, app=app)
    key = Keys("default").job(result.id)
    wait_for(lambda: client.hget(key, "status") == "in_progress", timeout=20,
             message="the run to start")
    client.delete(key)
    assert result.get(timeout=20)["echo"] == {"n": 5}
    log = worker.log_path.read_text(errors="replace")
    assert "record is gone from Redis" in log, log[-2000:]


@pytest.mark.timeout(60)
def test_a_cancel_whose_reply_was_lost_or_sent_twice_answers_cancelled(
        app, client, reply_cutter) -> None:
    """Tried: ``cancel()`` of a pending job through a connection cut right after Redis
    ran emp_cancel (redis-py sends it again), and ``cancel()`` of a job already cancelled
    (two operators, or a retried request). Before the fix both raised IndexError: the
    repeat's answer ('cancelled',) has no previous status. Now both answer 'cancelled'."""
    cutter = reply_cutter(b"emp_cancel")
    producer = create_app(cutter.url)
    try:
        job = submit("echo", {"n": 1}, app=producer, pool="nobody-serves")
        assert cancel(job.id, app=producer) == "cancelled"
    finally:
        producer.close()
    assert cutter.cuts_once_settled(1) == 1
    assert cancel(job.id, app=app) == "cancelled"
    assert get_job(job.id, app=app)["status"] == "cancelled"
