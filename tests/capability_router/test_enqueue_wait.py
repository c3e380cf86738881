"""An enqueue that waits for replicas (``EMP_ENQUEUE_REPLICAS``) and Redis's socket timeout.

Real redis-server, no replica attached: Redis's ``WAIT`` then waits its whole timeout
and answers 0, which is what a replica too slow to confirm looks like. Run in a fresh
interpreter, as the settings are read when their modules are imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import redis

from capability_router.keys import Keys
from emp_tasks.local_redis import LocalRedis

pytestmark = [pytest.mark.timeout(120)]

#: Enqueue one job with the project's own client and print what came of it, and when.
ENQUEUE = """
import json, sys, time
from capability_router.errors import NotReplicated
start = time.monotonic()
try:
    from capability_router.cluster import make_client
    from capability_router.functions import QueueFunctions
    from capability_router.functions import ensure_library
    client = make_client(sys.argv[1], decode_responses=True)
    ensure_library(client)
    queue = QueueFunctions(client, "default")
    from capability_router.jobspec import JobSpec
    spec = JobSpec(service="echo", customer_id="c", workflow_id="w")
    start = time.monotonic()
    outcome = queue.enqueue("waited-" + sys.argv[2], spec, "{}")[0]
except NotReplicated as exc:
    outcome = "NotReplicated: " + str(exc)
except Exception as exc:
    outcome = type(exc).__name__ + ": " + str(exc)
print(json.dumps({"outcome": outcome, "seconds": time.monotonic() - start}))
"""


def enqueue(redis_server: LocalRedis, name: str, **settings: str) -> dict:
    """Run ``ENQUEUE`` with ``settings`` in the environment; its printed answer."""
    done = subprocess.run([sys.executable, "-c", ENQUEUE, redis_server.url, name],
                          env={**os.environ, **settings}, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-1500:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_short_socket_timeout_gets_not_replicated_not_a_timeout(redis_server) -> None:
    """Tried: ``EMP_REDIS_SOCKET_TIMEOUT=0.5`` with ``EMP_ENQUEUE_REPLICAS=1`` and the
    default ``EMP_ENQUEUE_WAIT_MS`` (1,000) against a Redis whose replica does not
    confirm. Before: the WAIT outlasted the socket's 0.5 s, so the enqueue read a
    TimeoutError, retried for 10 s and raised "Timeout reading from socket"; the
    producer never learnt that the job was stored but not replicated. Now the WAIT is
    capped at half the timeout and the answer is NotReplicated, 0 of 1 replicas, well
    inside the timeout."""
    answer = enqueue(redis_server, "short", EMP_REDIS_SOCKET_TIMEOUT="0.5",
                     EMP_ENQUEUE_REPLICAS="1")
    assert answer["outcome"].startswith("NotReplicated: "), answer
    assert "0 of 1 replica" in answer["outcome"], answer
    assert answer["seconds"] < 2.0, answer  # 10 s of retries before


def test_the_default_timeout_keeps_the_full_wait(redis_server) -> None:
    """With the 5 s default the WAIT keeps ``EMP_ENQUEUE_WAIT_MS`` (here 300 ms): the
    cap only shortens a wait the socket could not outlast."""
    answer = enqueue(redis_server, "default", EMP_ENQUEUE_REPLICAS="1",
                     EMP_ENQUEUE_WAIT_MS="300")
    assert answer["outcome"].startswith("NotReplicated: "), answer
    assert answer["seconds"] >= 0.3, answer


@pytest.mark.parametrize("name, value, message", [
    ("EMP_ENQUEUE_WAIT_MS", "0", "EMP_ENQUEUE_WAIT_MS must be at least 1, got '0'"),
    ("EMP_ENQUEUE_WAIT_MS", "-5", "EMP_ENQUEUE_WAIT_MS must be at least 1, got '-5'"),
    ("EMP_ENQUEUE_REPLICAS", "-1", "EMP_ENQUEUE_REPLICAS must be at least 0, got '-1'"),
])
def test_a_wait_or_replica_count_redis_would_misread_is_refused(
        redis_server, name, value, message) -> None:
    """Tried: ``EMP_ENQUEUE_WAIT_MS=0`` and ``-5``, ``EMP_ENQUEUE_REPLICAS=-1``. Before:
    a WAIT of 0 ms is Redis's "wait for ever" (each enqueue hung until the socket timed
    out, then retried for 10 s), -5 got Redis's "timeout is negative" from every
    enqueue after the job was stored, and -1 replicas made every enqueue wait for
    nothing. Now the setting is refused naming the variable, and nothing is filed."""
    answer = enqueue(redis_server, f"bad-{name}-{value}",
                     **{"EMP_ENQUEUE_REPLICAS": "1", name: value})
    assert answer["outcome"] == f"SettingError: {message}", answer
    client = redis.Redis(port=redis_server.port)
    assert not client.exists(Keys("default").job(f"waited-bad-{name}-{value}"))
