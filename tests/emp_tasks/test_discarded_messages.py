"""Messages a worker discards unrun: an unregistered task, a serializer it refuses.

Found moving a Celery project over: a worker started without the project's task
module (``celery -A emp_tasks.app worker`` instead of the project's app), and a call
with ``serializer="pickle"`` against workers that accept JSON only."""

from __future__ import annotations

import json

import pytest
from celery.exceptions import NotRegistered
from kombu.exceptions import ContentDisallowed

from capability_router.functions import QueueFunctions
from capability_router.jobspec import HEADER
from conftest import wait_for
from emp_tasks.job_types import job_type
from emp_tasks.producer import get_job


def producer_task(app, name: str):  # noqa: ANN001, ANN201 - a Celery task
    """A job type only the producer has: the worker never imported its module."""
    def body() -> str:
        """Never runs: no worker has this task."""
        return "ran"
    return app.task(name=name, service="echo", shared=False)(body)


@pytest.mark.timeout(120)
def test_a_discarded_message_fails_its_job_saying_why(app, start_worker) -> None:
    """Tried: a job of a task the worker has not registered, and an ``emp.echo`` job
    sent with ``serializer="pickle"`` (the worker accepts json only). Before the fix
    both records said "task ended without recording an outcome (hard time limit or
    crash)", and the pickled job's ``AsyncResult.get()`` waited for ever (PENDING:
    Celery stores nothing for a message it refuses to read)."""
    start_worker("w1")
    unknown = producer_task(app, "test.not_in_the_worker").apply_async()
    with pytest.raises(NotRegistered):
        unknown.get(timeout=30)  # Celery's own outcome, as before
    wait_for(lambda: get_job(unknown.id, app=app)["status"] == "failed", timeout=30,
             message="the unregistered job to end")
    error = get_job(unknown.id, app=app)["last_error"]
    assert "NotRegistered: worker w1@" in error and "'test.not_in_the_worker'" in error, error

    pickled = app.send_task("emp.echo", kwargs={"x": 1}, serializer="pickle")
    with pytest.raises(ContentDisallowed, match="pickle"):
        pickled.get(timeout=30)  # before: TimeoutError, the result PENDING for good
    record = get_job(pickled.id, app=app)
    assert record["status"] == "failed", record
    assert "discarded the message unrun (ContentDisallowed" in record["last_error"], record
    assert "accept_content is [json]" in record["last_error"], record

    # the worker goes on serving
    assert app.send_task("emp.echo", kwargs={"x": 2}).get(timeout=30)["echo"] == {"x": 2}


@pytest.mark.timeout(120)
def test_a_message_the_worker_cannot_decode_fails_its_job_saying_why(app, start_worker) -> None:
    """Tried: ``emp.echo`` messages published through the EMP transport whose body is not
    JSON though the content type says ``application/json``, and whose body is not what
    its ``compression`` header says (Celery's consumer takes its ``on_decode_error``
    path: logs "Can't decode message body" and acks it). Before
    the fix the record said "task ended without recording an outcome (hard time limit
    or crash)" and ``AsyncResult.get()`` waited for ever (PENDING: Celery sends no
    signal and stores nothing for such a message)."""
    from kombu.exceptions import DecodeError

    start_worker("w1")
    spec = job_type(app, "emp.echo").job_spec(None, {}, {}).header()
    with app.connection_for_write() as connection:
        publish = connection.Producer().publish
        publish(b"{not json", exchange="", routing_key="default",
                content_type="application/json", content_encoding="utf-8",
                headers={"task": "emp.echo", "id": "undecodable-1", HEADER: spec})
        # a body its compression header does not fit (kombu's Message.errors path)
        publish(b"not gzip", exchange="", routing_key="default",
                content_type="application/json", content_encoding="utf-8",
                headers={"task": "emp.echo", "id": "undecodable-2", HEADER: spec,
                         "compression": "application/x-gzip"})
    for job_id in ("undecodable-1", "undecodable-2"):
        wait_for(lambda job_id=job_id: get_job(job_id, app=app)["status"] != "pending",
                 timeout=30, message=f"the undecodable job {job_id} to end")
        wait_for(lambda job_id=job_id: get_job(job_id, app=app)["status"] in (
            "failed", "completed"), timeout=10, message=f"{get_job(job_id, app=app)}")
        record = get_job(job_id, app=app)
        assert record["status"] == "failed", record
        assert "could not decode the message" in record["last_error"], record
        assert "application/json" in record["last_error"], record
    with pytest.raises(DecodeError):
        app.AsyncResult("undecodable-1").get(timeout=30)  # before: TimeoutError, PENDING
    with pytest.raises(TypeError):  # kombu's decompress of the body as the transport has it
        app.AsyncResult("undecodable-2").get(timeout=30)

    # the worker goes on serving
    assert app.send_task("emp.echo", kwargs={"x": 2}).get(timeout=30)["echo"] == {"x": 2}


@pytest.mark.timeout(120)
def test_a_message_whose_body_is_not_base64_fails_its_job_saying_why(app, client,
                                                                    start_worker) -> None:
    """Tried: an ``emp.echo`` message in kombu's format written by hand, as a producer in
    another language does, whose properties say ``body_encoding: base64`` but whose body
    is not base64, filed with the queue library's enqueue (``FCALL emp_enqueue``, as the
    transport files every job). kombu's own ``Producer.publish`` cannot write such a body:
    the channel base64-encodes every body it publishes. kombu fails building the message
    (binascii.Error), before Celery's decode-error handler (``FailUndecodable``) sees it.
    Before the fix that error escaped the worker's event loop: the worker ended
    ("Unrecoverable error: Error('Incorrect padding')") with the job ``assigned`` to it
    (still so 20 s later), so each worker that claimed it again after its lease would die
    the same way. Now the job fails saying the worker could not decode the message, its
    FAILURE is stored, and the worker goes on serving."""
    start_worker("w1")
    job_id = "not-base64-1"
    message = {  # kombu's envelope, as kombu.transport.virtual stores a message
        "body": "this is *not* base64!", "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"lang": "py", "task": "emp.echo", "id": job_id, "root_id": job_id,
                    "retries": 0, "eta": None, "expires": None},
        "properties": {"correlation_id": job_id, "delivery_mode": 2, "priority": 0,
                       "body_encoding": "base64",
                       "delivery_info": {"exchange": "", "routing_key": "default"}},
    }
    spec = job_type(app, "emp.echo").job_spec(None, {}, {})
    outcome, _ = QueueFunctions(client, "default").enqueue(job_id, spec, json.dumps(message))
    assert outcome == "queued"
    wait_for(lambda: get_job(job_id, app=app)["status"] != "pending", timeout=30,
             message="the job to be claimed")
    wait_for(lambda: get_job(job_id, app=app)["status"] in ("failed", "completed"),
             timeout=20, message=f"{get_job(job_id, app=app)}")
    record = get_job(job_id, app=app)
    assert record["status"] == "failed", record
    assert "could not decode the message" in record["last_error"], record
    assert "base64" in record["last_error"], record
    with pytest.raises(Exception, match="(?i)base64|padding|invalid"):
        app.AsyncResult(job_id).get(timeout=30)
    assert app.send_task("emp.echo", kwargs={"x": 2}).get(timeout=30)["echo"] == {"x": 2}
