"""A worker storing a job's result in Celery's result backend while Redis hangs or the
store's command is lost on the wire: how long the store waits, and what is kept.

Real ``emp worker`` (``EMP_REDIS_SOCKET_TIMEOUT=0.5``), real redis-server behind a TCP
proxy (tests/redis_proxy.py) that acts the moment the result's ``SUCCESS`` write reaches
it: either it stops Redis (SIGSTOP) and hands the write on, as a server that hung just
then, or it drops that write and everything after it on that connection (a partition
that lost them; Redis keeps running). No mock.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from redis_proxy import RedisProxy, State

from conftest import wait_for
from emp_tasks.local_redis import LocalRedis
from emp_tasks.producer import get_job, submit

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

#: The worker's socket timeout, seconds.
SHORT = 0.5
ENV = {"EMP_REDIS_SOCKET_TIMEOUT": str(SHORT)}
#: Seconds Redis stays stopped at the result write: past Celery's own 20 retries.
HOLD = 40


class HangAtResult(RedisProxy):
    """Relays everything until the result backend's ``SUCCESS`` write passes (once):
    ``late``, it stops Redis and hands the write on (run when Redis continues);
    otherwise that write and everything after it on its connection never reach Redis."""

    def __init__(self, server: LocalRedis, late: bool) -> None:
        assert server.process is not None
        super().__init__(server.port)
        self.pid, self.late = server.process.pid, late
        self.hit = threading.Event()
        self.hit_at = 0.0

    def request(self, data: bytes, state: State) -> bytes:
        with self.lock:
            if not self.hit.is_set() and b"celery-task-meta-" in data and b"SUCCESS" in data:
                self.hit_at = time.monotonic()
                self.hit.set()
                if self.late:
                    os.kill(self.pid, signal.SIGSTOP)
                else:
                    state["lost"] = True
        return b"" if state.get("lost") else data

    def close(self) -> None:
        super().close()
        os.kill(self.pid, signal.SIGCONT)


@pytest.fixture
def proxy_of(redis_server: LocalRedis) -> Iterator:
    made: list[HangAtResult] = []

    def make(late: bool) -> HangAtResult:
        made.append(HangAtResult(redis_server, late))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()


def stored(client: redis.Redis, job_id: str) -> str | None:
    """The job's state in Celery's result backend, or None."""
    raw = client.get(f"celery-task-meta-{job_id}")
    return json.loads(raw)["status"] if raw else None


def test_a_result_write_lost_on_the_wire_is_stored_again_within_the_socket_timeout(
        start_worker, app, client, proxy_of) -> None:
    """Tried: a worker with ``EMP_REDIS_SOCKET_TIMEOUT=0.5`` runs an echo job; its result
    backend's SUCCESS write (SETEX + PUBLISH) never reaches Redis (the connection
    silently lost it), Redis running. Before, the result backend kept Celery's own
    120 s socket timeout: the worker's job slot waited for a reply that never came, and
    Celery's result stayed STARTED (an ``AsyncResult.get()`` waited) for 120 s though
    Redis answered every other call. Now the write times out after 0.5 s and Celery's
    retry stores it on a new connection: SUCCESS within 3 s, the job completed once."""
    proxy = proxy_of(late=False)
    start_worker("result-lost", EMP_REDIS_URL=proxy.url, **ENV)
    result = submit("echo", {"n": 1}, app=app)
    wait_for(proxy.hit.is_set, timeout=30, message="the result's write")
    wait_for(lambda: stored(client, result.id) == "SUCCESS", timeout=15, every=0.1,
             message="Celery's result stored")
    seconds = time.monotonic() - proxy.hit_at
    print(f"\nresult stored {seconds:.2f} s after its write was lost")
    assert seconds < 3, seconds
    job = get_job(result.id, app=app)
    print(job)
    assert job["status"] == "completed", job


def test_a_result_write_to_a_hung_redis_is_kept_once_redis_goes_on(
        start_worker, app, client, proxy_of) -> None:
    """Tried: the same worker; Redis stops (SIGSTOP) the moment the SUCCESS write reaches
    it and goes on ``HOLD`` (40) s later. Before, the write waited on its one connection
    (Celery's 120 s timeout) and the worker logged nothing about it. Now each try gives
    up after 0.5 s and the worker logs the lost Redis ("Connection to Redis lost: Retry
    (n/80)"), retrying longer than Celery's own 20 tries (with those, at 0.5 s, the
    worker gave the write up after about 30 s, a TimeoutError traceback in its log; the
    hung Redis still ran the first try's write when it went on): once Redis goes on,
    Celery's result is SUCCESS within 3 s, and the job completed."""
    proxy = proxy_of(late=True)
    worker = start_worker("result-hung", EMP_REDIS_URL=proxy.url, **ENV)
    result = submit("echo", {"n": 2}, app=app)
    wait_for(proxy.hit.is_set, timeout=30, message="the result's write")
    time.sleep(HOLD)
    noticed = worker.log_path.read_text()
    os.kill(proxy.pid, signal.SIGCONT)
    resumed = time.monotonic()
    wait_for(lambda: stored(client, result.id) == "SUCCESS", timeout=150, every=0.1,
             message="Celery's result stored")
    seconds = time.monotonic() - resumed
    print(f"\nresult stored {seconds:.2f} s after Redis went on; log during the hang:\n"
          f"{noticed[-1500:]}")
    job = get_job(result.id, app=app)
    assert job["status"] == "completed", job
    assert seconds < 3, seconds
    assert "Connection to Redis lost" in noticed, noticed[-3000:]
    assert "Traceback" not in noticed, noticed[-3000:]  # the write was not given up
