"""Helpers of the REST API tests: a small client for a live ``emp api`` and polling."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import redis
import requests

from conftest import wait_for

#: Tokens the auth-enabled servers of the tests accept.
ADMIN = "admin-token"
TOKEN_A = "token-a"
TOKEN_B = "token-b"
TOKENS_ENV = {"EMP_API_TOKENS": f"{TOKEN_A}=cust-a,{TOKEN_B}=cust-b",
              "EMP_ADMIN_TOKENS": ADMIN}


class Api:
    """requests against one server, as one token (None: no Authorization header)."""

    def __init__(self, base: str, token: str | None = None) -> None:
        self.base = base
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def as_(self, token: str | None) -> Api:
        return Api(self.base, token)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.session.get(self.base + path, timeout=30, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.session.post(self.base + path, timeout=30, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.session.delete(self.base + path, timeout=30, **kwargs)

    def submit(self, **body: Any) -> str:
        """Submit a job; returns its id (the test fails unless it was accepted)."""
        response = self.post("/api/jobs", json=body)
        assert response.status_code == 201, response.text
        return response.json()["job_id"]

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.get(f"/api/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()["job"]

    def status(self, job_id: str) -> str:
        return self.job(job_id)["status"]

    def wait_status(self, job_id: str, *statuses: str, timeout: float = 30) -> dict[str, Any]:
        """Poll until the job is in one of ``statuses``; returns its record."""
        found: dict[str, Any] = {}

        def reached() -> bool:
            found.update(self.job(job_id))
            return found["status"] in statuses

        try:
            wait_for(reached, timeout, message=f"job {job_id} to be {'/'.join(statuses)}")
        except pytest.fail.Exception as exc:  # say where it stood, for the failure report
            shown = {k: found.get(k) for k in ("status", "attempts", "worker_id", "last_error")}
            raise AssertionError(f"{exc}; last seen {shown}") from None
        return found


def snapshot(client: redis.Redis) -> dict[str, bytes]:
    """Every key of the database with its serialized value (DUMP): compared before and
    after a refused request, it shows that nothing was written."""
    return {key: client.dump(key) for key in client.keys("*")}


def submit_state(client: redis.Redis, pool: str = "default"
                 ) -> tuple[set[str], dict[str, dict[str, str]], int]:
    """What a submit writes: keys, the job records, the pool's event stream length. Not
    every value (``snapshot``) nor the key count, where something else runs meanwhile: an
    idle worker's wake lists and the customers' submission buckets (3 s) come and go."""
    from capability_router.keys import Keys

    keys = set(client.scan_iter())
    jobs = {k: client.hgetall(k) for k in keys if ":job:" in k and client.type(k) == "hash"}
    return keys, jobs, client.xlen(Keys(pool).events)


def assert_nothing_submitted(client: redis.Redis, before: tuple[set[str], dict, int],
                             pool: str = "default") -> None:
    """No key made, no job record changed, no event filed since ``before``."""
    keys, jobs, events = submit_state(client, pool)
    # kombu's bindings are made by consumers (a monitor's Flower binds its event and reply
    # queues some time after it answers), never by a submit
    made = {key for key in keys - before[0] if not key.startswith("_kombu.")}
    assert made == set(), f"a refused submit made a key: {made}"
    assert {k: v for k, v in jobs.items() if k in before[1]} == before[1]
    assert events == before[2], "a refused submit filed an event"


def event_names(client: redis.Redis, job_id: str, pool: str = "default") -> list[str]:
    """The job's events in order, read from its stream."""
    from capability_router.keys import Keys

    return [fields["event"] for _, fields in client.xrange(Keys(pool).job_events(job_id))]


def raw_answer(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of the server's answer to ``request``."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body
