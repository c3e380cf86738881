"""Job listing from the indexes the function library keeps; never a keyspace scan.

Per pool namespace the library maintains ``jobs`` (every job by submit ms),
``status:<status>`` (by the ms a job entered it) and ``by:service|customer|
workflow:<value>`` (by submit ms). One filter reads one index newest first;
several intersect their indexes (ZINTER, which walks the smallest) ordered
by submit time. Pools are merged newest first; ids whose record expired are
skipped.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis

from capability_router.keys import Keys, known_namespaces
from capability_router.states import JobStatus
from emp_tasks.producer import decode_record

#: Listing filters and the index family each one reads.
BY_INDEX = {"service": "service", "customer_id": "customer", "workflow_id": "workflow"}
#: Job states with a status index, in lifecycle order.
STATUSES = tuple(str(s) for s in (
    JobStatus.PENDING, JobStatus.ASSIGNED, JobStatus.IN_PROGRESS, JobStatus.COMPLETED,
    JobStatus.FAILED, JobStatus.CANCELLED))


@dataclass
class Page:
    """One page of a listing: records newest first, and how many match in all."""

    jobs: list[dict[str, Any]]
    total: int


def status_counts(client: redis.Redis, pools: list[str]) -> dict[str, dict[str, int]]:
    """Jobs per state of each pool (the status indexes' sizes), in one round trip."""
    with client.pipeline(transaction=False) as pipe:
        for pool in pools:
            for status in STATUSES:
                pipe.zcard(Keys(pool).status_index(status))
        counts = iter(pipe.execute())
    return {pool: {status: int(next(counts)) for status in STATUSES} for pool in pools}


def namespaces(client: redis.Redis, pool: str | None = None) -> list[str]:
    """The pools to list: the one asked for, else every pool ever used."""
    if pool:
        return [pool]
    return known_namespaces(client)


def index_keys(keys: Keys, status: str | None, filters: dict[str, str | None]
               ) -> list[tuple[str, int]]:
    """The indexes whose intersection is the listing (``jobs`` when unfiltered), each with
    its ZINTER weight: status scores are when a job entered the state, so weight 0 (and
    AGGREGATE MAX) keeps the submit ms of the others."""
    found = [(keys.field_index(BY_INDEX[name], value), 1)
             for name, value in filters.items() if value]
    if status:
        found.insert(0, (keys.status_index(status), 0))
    return found or [(keys.jobs, 1)]


def _queue_reads(pipe: Any, indexes: list[tuple[str, int]], start: int, count: int) -> None:
    """Queue one pool's reads: a page and the size of one index, or the whole intersection."""
    if len(indexes) == 1:
        pipe.zrevrange(indexes[0][0], start, start + count - 1, withscores=True)
        pipe.zcard(indexes[0][0])
    else:
        pipe.zinter(dict(indexes), aggregate="MAX", withscores=True)


def _take_reads(replies: Iterator[Any], indexes: list[tuple[str, int]], start: int,
                count: int) -> tuple[list[tuple[str, float]], int]:
    """One pool's replies: (id, score) newest first from ``start``, and the match count."""
    if len(indexes) == 1:
        return next(replies), next(replies)
    rows = next(replies)[::-1]
    return rows[start:start + count], len(rows)


def _records(client: redis.Redis, found: list[tuple[str, str]]) -> list[dict[str, Any]]:
    with client.pipeline(transaction=False) as pipe:
        for namespace, job_id in found:
            pipe.hgetall(Keys(namespace).job(job_id))
        raws = pipe.execute()
    return [decode_record(raw) for raw in raws if raw]


def list_jobs(
    client: redis.Redis, status: str | None = None, service: str | None = None,
    customer_id: str | None = None, workflow_id: str | None = None, pool: str | None = None,
    limit: int = 50, offset: int = 0,
) -> Page:
    """A page of job records newest first, filtered on any of status, service, customer,
    workflow and pool; ``limit``/``offset`` count jobs. Two round trips: the indexes of
    every pool, then the records."""
    filters = {"service": service, "customer_id": customer_id, "workflow_id": workflow_id}
    pools = namespaces(client, pool)
    indexes = {ns: index_keys(Keys(ns), status, filters) for ns in pools}
    # One pool pages in Redis; with several, any may hold the whole page: read
    # offset + limit from each, merge, then cut.
    start, count = (offset, limit) if len(pools) == 1 else (0, offset + limit)
    with client.pipeline(transaction=False) as pipe:
        for namespace in pools:
            _queue_reads(pipe, indexes[namespace], start, count)
        replies = iter(pipe.execute())
    streams, total = [], 0
    for namespace in pools:
        rows, size = _take_reads(replies, indexes[namespace], start, count)
        total += size
        streams.append([(score, job_id, namespace) for job_id, score in rows])
    merged = list(heapq.merge(*streams, key=lambda row: -row[0]))
    page = merged if len(pools) == 1 else merged[offset:offset + limit]
    return Page(_records(client, [(namespace, job_id) for _, job_id, namespace in page]), total)
