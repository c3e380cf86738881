"""A request body in a content coding (``Content-Encoding: gzip``) is refused with 415 by
the API, the webhook service and the monitor, naming the coding, and nothing is written."""

from __future__ import annotations

import gzip
import json

import pytest
import redis
import requests
from rest_helpers import snapshot

from webapp.webhooks import keys as hook_keys

pytestmark = pytest.mark.timeout(120)

JOB = json.dumps({"service_required": "echo", "payload": {"x": 1}}).encode()
HOOK = json.dumps({"url": "http://127.0.0.1:9/hook", "events": ["complete_job"]}).encode()


def written(client: redis.Redis) -> dict[str, bytes]:
    """The job records, the pools' job indexes and the webhook registrations: what a
    refused submit or registration must leave as it was (the services' own keys change as
    they run: Flower's control bindings, the webhook service's start and its consumer)."""
    return {k: v for k, v in snapshot(client).items()
            if ":job:" in k or ":status:" in k or k == hook_keys.HOOKS or k.startswith(
                hook_keys.hook(""))}


def test_a_coded_body_is_a_415_naming_the_coding_and_nothing_is_written(
        start_server, client: redis.Redis) -> None:
    """Tried: a job (API, monitor) and a registration (webhook service) gzipped with
    ``Content-Encoding: gzip``, the same bytes uncoded but labelled ``br``, and
    ``gzip, identity``. Before, the gzipped job was a 400 "not valid JSON: not UTF-8" and
    the uncoded body labelled ``br`` was taken as it came (201). Now each is 415 naming the
    coding, with ``Accept-Encoding: identity`` (RFC 9110, 15.5.16), and nothing is
    written; the same body uncoded (or ``identity``) is taken."""
    api, monitor = start_server("api"), start_server("monitor")
    hooks = start_server("webhooks", EMP_WEBHOOK_ALLOW_PRIVATE="1")
    targets = [(api.base + "/api/jobs", JOB), (hooks.base + "/webhooks", HOOK),
               (monitor.base + "/emp/api/submit", JOB)]
    before = written(client)
    for url, body in targets:
        for coding, data in (("gzip", gzip.compress(body)), ("br", body),
                             ("gzip, identity", gzip.compress(body))):
            reply = requests.post(url, data=data, timeout=10, headers={
                "Content-Type": "application/json", "Content-Encoding": coding})
            assert reply.status_code == 415, (url, coding, reply.text)
            assert reply.json()["error"] == (f"Content-Encoding {json.dumps(coding)} is not "
                                             "taken: send the body uncoded"), reply.text
            assert reply.headers["Accept-Encoding"] == "identity", reply.headers
    assert written(client) == before
    for url, body in targets:
        for headers in ({}, {"Content-Encoding": "identity"}):
            reply = requests.post(url, data=body, timeout=10,
                                  headers={"Content-Type": "application/json", **headers})
            assert reply.status_code == 201, (url, headers, reply.text)
    assert written(client) != before  # what the check above reads is what a submit writes
