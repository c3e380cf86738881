"""What a request handler talks to: the Celery app, a Redis client, the registry.

Built once per app by the factory and kept in ``app.extensions["emp"]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from celery import Celery
from flask import current_app

from capability_router.registry import WorkerRegistry
from emp_tasks.app import create_app as create_celery_app
from emp_tasks.connection import get_client


@dataclass
class Backend:
    celery: Celery
    redis: redis.Redis
    #: The same app with Celery's result backend, for cancels (``cancelling``).
    results: Celery | None = None

    @property
    def cancelling(self) -> Celery:
        """The app a cancel goes through: one with Celery's result backend.

        A cancel stores REVOKED there, with the job's request, so ``AsyncResult.get()``
        ends and a chord counts the job's part (``emp_tasks.cancellation``). Through
        ``celery``, which has no result backend, it stored nothing: the job stayed
        PENDING in Celery and a chord's body never ended. This app only stores a
        cancel's outcome: it submits nothing, so it subscribes to no result.
        """
        return self.results or self.celery

    @property
    def registry(self) -> WorkerRegistry:
        return WorkerRegistry(self.redis)

    @classmethod
    def connect(cls, redis_url: str) -> Backend:
        """A producer-only Celery app: the web services never wait on AsyncResult
        (results are on the job record; workers still store them in Celery's
        backend), and the event log already carries ``job_submitted``, so the
        per-submit result subscription and task-sent event are left out.

        A failed publish is not retried (Celery retries three times): each try
        against a Redis that stopped answering costs a socket timeout, which the
        waiting client paid (a submit took 25 s to get its 503), and redis-py
        already replaces a pooled connection that Redis closed (a restart) when
        it is taken from the pool.

        Nor is a failed connect of the publish connection: kombu retried it for up
        to Celery's ``broker_connection_timeout`` (4 s) with 2 s, then 4 s pauses, so
        the first submit of a process on a hung Redis cost two or three socket
        timeouts plus the pauses (7.6 s with ``EMP_REDIS_SOCKET_TIMEOUT=0.5``, 6.1 s
        with 2) where every later one cost one (a 5 s timeout outlasted the window,
        which hid it)."""
        celery = _producer(redis_url, result_backend=None, task_send_sent_event=False)
        results = _producer(redis_url)
        return cls(celery, get_client(redis_url), results=results)


def _producer(redis_url: str, **settings: object) -> Celery:
    """An app whose failed publishes and connects are not retried (``Backend.connect``),
    with one result backend per process (``result_backend_thread_safe``).

    Celery keeps a backend that is not marked thread-safe per thread, i.e. per greenlet
    under gevent: each cancel built its own Redis-backed one, held until garbage
    collected (8 -> 38 Redis clients after 1,200 REST cancels), and each submitting
    connection its own disabled one (``by_url`` scans every installed package's entry
    points, ~0.3 ms)."""
    celery = create_celery_app(redis_url, task_publish_retry=False,
                               result_backend_thread_safe=True, **settings)
    celery.conf.broker_transport_options = {**celery.conf.broker_transport_options,
                                            "max_retries": 0}
    return celery


def backend() -> Backend:
    """The backend of the app handling the current request."""
    return current_app.extensions["emp"]
