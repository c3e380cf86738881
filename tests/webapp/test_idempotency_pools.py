"""Idempotent submits with routing on: a retry routed elsewhere than its first attempt.

A job's filing refuses an id already taken only within its own pool (each
pool's keys share one hash tag, so the check is one Redis Function call and
runs on Redis Cluster). When the first attempt with an ``Idempotency-Key`` (or
a socket ``message_id``) was routed to one pool and its retry, after the pools
file changed, to another, both filings could succeed. Here the first attempt's
Redis path is slow (a proxy holds its commands back, Redis running), the
operator edits the pools file meanwhile so that the job's service moves from
pool ``fast`` to pool ``standard``, and the retry comes. Real API server, real
redis-server, no mock.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from rest_helpers import TOKEN_A, TOKENS_ENV, Api
from test_idempotency_hang import ENQUEUE, _socket_submit, hang_at, retried  # noqa: F401

from capability_router.keys import JOB_EVENTS_SUFFIX, Keys
from conftest import wait_for

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "capability_router"))
from test_routing import POOLS  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

ADMIT = b"emp_limit_admit"  # the customer's limit check, just before the filing
POOL_NAMES = ("default", "fast", "standard", "heavy")
#: The pools file after the edit: echo runs in standard only (before: fast only).
MOVED = (POOLS.replace('services = ["simulation", "echo"]', 'services = ["simulation"]')
         .replace('services = ["simulation", "comfyui"]',
                  'services = ["simulation", "comfyui", "echo"]', 1))
JOB = {"service_required": "echo", "payload": {"n": 1}}


def filed(client: redis.Redis) -> set[tuple[str, str]]:
    """Every job record of every pool, as (pool, stored id)."""
    found = set()
    for pool in POOL_NAMES:
        prefix = Keys(pool).job("")
        found |= {(pool, key[len(prefix):]) for key in client.scan_iter(match=prefix + "*")
                  if not key.endswith(JOB_EVENTS_SUFFIX)}
    return found


def assert_one_job_in_fast(replies: dict[str, Any], client: redis.Redis) -> str:
    """Every REST attempt answered 201 with one job id, filed once, in ``fast`` (the pool
    the first attempt was routed to); returns the id."""
    answers = {name: (round(seconds, 1), reply.status_code, reply.json())
               for name, (seconds, reply) in replies.items()}
    print(f"\n{answers}\nfiled: {filed(client)}")
    assert {status for _, status, _ in answers.values()} == {201}, answers
    ids = {body["job_id"] for _, _, body in answers.values()}
    assert len(ids) == 1, answers
    job_id = ids.pop()
    assert filed(client) == {("fast", job_id)}
    return job_id


def routed_then_edited(hang: Any, pools_path: Path) -> None:
    """Once the first attempt was routed (its limit check reached the proxy), the
    operator's edit moves echo to pool standard."""
    wait_for(lambda: ADMIT not in hang.delays, timeout=10, message="the first attempt's routing")
    pools_path.write_text(MOVED)


@pytest.fixture
def pools_path(tmp_path: Path) -> Path:
    path = tmp_path / "pools.toml"
    path.write_text(POOLS)
    return path


def test_a_keyed_retry_routed_to_another_pool_files_no_second_job(
        start_server, client, hang_at, pools_path) -> None:  # noqa: F811
    """Tried: a keyed POST /api/jobs routed to pool fast whose limit check and filing are
    each held back 4 s (Redis running); the pools file edited meanwhile (echo now runs in
    standard); the same POST 0.5 s after the first: it waits 5 s for the first's answer,
    finds none, and files the job itself. Then the same POST a third time. Before the
    fix the retry was routed to standard and filed the job there while the first filed
    it in fast: two jobs under one id, run twice, all three answers 201 naming "it".
    Now the retry files where the first attempt was routed: one job, in fast."""
    server = start_server("api", EMP_API_PROCESSES="1", EMP_REDIS_URL=hang_at.url,
                          EMP_POOLS_FILE=str(pools_path), **TOKENS_ENV)
    hang_at.delays = {ADMIT: 4.0, ENQUEUE: 4.0}
    api = Api(server.base, TOKEN_A)
    replies: dict[str, Any] = {}
    first = threading.Thread(target=lambda: replies.__setitem__("first", retried(
        Api(server.base, TOKEN_A), "k-moved")))
    first.start()
    routed_then_edited(hang_at, pools_path)
    time.sleep(0.5)
    replies["retry"] = retried(api, "k-moved")
    first.join()
    replies["third"] = retried(api, "k-moved")
    assert_one_job_in_fast(replies, client)
    later = api.post("/api/jobs", json=JOB, headers={"Idempotency-Key": "k-after"})
    assert later.status_code == 201 and api.job(later.json()["job_id"])["pool"] == "standard"


def test_a_socket_retry_routed_to_another_pool_files_no_second_job(
        start_server, client, hang_at, pools_path) -> None:  # noqa: F811
    """Tried: a client socket's submit_job with a message_id routed to pool fast whose
    limit check is held back 4 s (Redis running); the pools file edited meanwhile (echo
    now runs in standard); the same submit_job on a second socket (a socket retry files
    at once). Before the fix the retry filed ws-moved-1 in standard and the first in
    fast: two jobs, both answered job_submitted. Now one job, in fast, and both
    attempts are answered job_submitted for it."""
    server = start_server("api", EMP_API_PROCESSES="1", EMP_REDIS_URL=hang_at.url,
                          EMP_POOLS_FILE=str(pools_path), **TOKENS_ENV)
    hang_at.delays = {ADMIT: 4.0}
    submit = {"type": "submit_job", "message_id": "ws-moved-1", **JOB}
    answers: dict[str, dict[str, Any]] = {}
    first = threading.Thread(target=lambda: answers.__setitem__(
        "first", _socket_submit(server, submit, "moved-1")))
    first.start()
    routed_then_edited(hang_at, pools_path)
    answers["retry"] = _socket_submit(server, submit, "moved-2")
    first.join()
    print(f"\n{answers}\nfiled: {filed(client)}")
    assert {a["type"] for a in answers.values()} == {"job_submitted"}, answers
    assert {a["job_id"] for a in answers.values()} == {"ws-moved-1"}, answers
    assert filed(client) == {("fast", "ws-moved-1")}


def test_a_keyed_retry_to_a_process_with_routing_off_files_no_second_job(
        start_server, client, hang_at, pools_path) -> None:  # noqa: F811
    """Tried: a rolling deploy that turns routing on: a keyed POST /api/jobs to an API
    process with EMP_POOLS_FILE (routed to pool fast), its limit check and filing each
    held back 4 s (Redis running); the same POST 0.5 s later to a process without it
    (routing off: the default pool); it waits 5 s for the first's answer, finds none and
    files the job itself. Before the fix the retry filed it in default and the first in
    fast: two jobs under one id. Now the retry files where the first attempt placed it."""
    routed = start_server("api", EMP_API_PROCESSES="1", EMP_REDIS_URL=hang_at.url,
                          EMP_POOLS_FILE=str(pools_path), **TOKENS_ENV)
    unrouted = start_server("api", EMP_API_PROCESSES="1", EMP_REDIS_URL=hang_at.url,
                            **TOKENS_ENV)
    hang_at.delays = {ADMIT: 4.0, ENQUEUE: 4.0}
    replies: dict[str, Any] = {}
    first = threading.Thread(target=lambda: replies.__setitem__("first", retried(
        Api(routed.base, TOKEN_A), "k-flip")))
    first.start()
    wait_for(lambda: ADMIT not in hang_at.delays, timeout=10,
             message="the first attempt's routing")
    replies["retry"] = retried(Api(unrouted.base, TOKEN_A), "k-flip")
    first.join()
    assert_one_job_in_fast(replies, client)
