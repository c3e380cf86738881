"""The webhook registration API: validation, secrets, auth, the address guard.

Most tests drive the Flask app in process (no delivery threads) against the
module's real Redis; one runs ``emp webhooks`` under gunicorn.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis
import requests
from flask import Flask
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from capability_router.states import JobEvent
from webapp.settings import WebSettings
from webapp.webhooks import create_app, keys
from webapp.webhooks.config import WebhookConfig, parse_networks
from webapp.webhooks.signing import legacy_signature

GOOD = {"url": "http://127.0.0.1:9/hook", "events": ["job_submitted", "complete_job"]}


@pytest.fixture
def make_app(redis_server, client: redis.Redis) -> Callable[..., Flask]:
    """Factory of in-process webhook apps; loopback allowed unless told otherwise."""
    apps: list[Flask] = []

    def make(networks: str = "127.0.0.0/8", allow_private: bool = False,
             **settings: Any) -> Flask:
        config = WebhookConfig(allowed_networks=parse_networks(networks),
                               allow_private=allow_private)
        app = create_app(WebSettings(redis_url=redis_server.url, **settings),
                         start_delivery=False, config=config)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["emp_webhooks"].stop()


def webhook_keys(client: redis.Redis) -> list[str]:
    return sorted(client.scan_iter(match=keys.WEBHOOK_PREFIX.replace("{", "[{]") + "*"))


@pytest.mark.parametrize(("body", "field", "words"), [
    ({"events": ["job_submitted"]}, "url", "required"),
    ({**GOOD, "url": "ftp://example.com/x"}, "url", "http"),
    ({**GOOD, "url": "not a url"}, "url", "http"),
    ({**GOOD, "url": "http://"}, "url", "host"),
    # Before: registered, and delivered to /a%00b and /a%7Fb (another path).
    ({**GOOD, "url": "http://127.0.0.1:9/a\x00b"}, "url", "control character"),
    ({**GOOD, "url": "http://127.0.0.1:9/a\x7fb"}, "url", "control character"),
    ({**GOOD, "url": 42}, "url", "string"),
    ({"url": GOOD["url"]}, "events", "required"),
    ({**GOOD, "events": []}, "events", "non-empty"),
    ({**GOOD, "events": "job_submitted"}, "events", "array"),
    ({**GOOD, "events": ["job_submitted", "job_exploded"]}, "events[1]", "unknown event type"),
    ({**GOOD, "filters": {"colour": ["red"]}}, "filters.colour", "unknown field"),
    ({**GOOD, "filters": {"job_types": "echo"}}, "filters.job_types", "array"),
    # Before: registered, and never fired (no job's customer or workflow id has a space)
    ({**GOOD, "filters": {"customer_ids": ["acme", "big corp"]}}, "filters.customer_ids[1]",
     "does not match"),
    ({**GOOD, "filters": {"workflow_ids": ["wf/1"]}}, "filters.workflow_ids[0]",
     "does not match"),
    ({**GOOD, "filters": {"priorities": [101]}}, "filters.priorities[0]", "0 to 100"),
    ({**GOOD, "filters": {"priorities": ["high"]}}, "filters.priorities[0]", "0 to 100"),
    ({**GOOD, "filters": {"min_priority": 80, "max_priority": 20}}, "filters.max_priority",
     "at least"),
    ({**GOOD, "retry_config": {"max_attempts": 0}}, "retry_config.max_attempts", "minimum"),
    ({**GOOD, "retry_config": {"initial_delay_ms": 5000, "max_delay_ms": 100}},
     "retry_config.max_delay_ms", "at least"),
    ({**GOOD, "retry_config": {"retries": 3}}, "retry_config.retries", "unknown field"),
    ({**GOOD, "retry_config": {"give_up_after_ms": 0}}, "retry_config.give_up_after_ms",
     "minimum"),
    ({**GOOD, "secret": "whsec_!!not base64!!"}, "secret", "base64"),
    ({**GOOD, "secret": ""}, "secret", "non-empty"),
    ({**GOOD, "active": "yes"}, "active", "boolean"),
    ({**GOOD, "headers": {"X": "y"}}, "headers", "unknown field"),
])
def test_bad_registration_is_refused_naming_the_field_and_writes_nothing(
        make_app, client, body, field, words) -> None:
    response = make_app().test_client().post("/webhooks", json=body)
    assert response.status_code == 400, response.json
    assert response.json["success"] is False
    assert response.json["field"] == field
    assert response.json["error"].startswith(f"{field}: ")
    assert words in response.json["error"]
    assert webhook_keys(client) == []


@pytest.mark.parametrize(("raw", "words"), [
    (b"not json", "the body is not valid JSON: Expecting value"),
    (b'{"url": ', "the body is not valid JSON: Expecting value"),
    (b"[1, 2]", "the body must be a JSON object"),
    (b"", "the body must be a JSON object"),
])
def test_body_that_is_not_a_json_object_is_refused(make_app, client, raw, words) -> None:
    """Tried: bodies that are no JSON, a JSON array and none. Before, one cut short was
    told "the body must be a JSON object: Expecting value ...", about a body meant as
    one; now it is told it is not valid JSON, as the API tells it."""
    response = make_app().test_client().post(
        "/webhooks", data=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json["error"].startswith(words), response.json
    assert webhook_keys(client) == []


def test_a_json_body_sent_as_a_form_is_told_its_content_type(make_app, client) -> None:
    """Tried: ``curl -X POST :3332/webhooks -d '{"url": ..., "events": [...]}'`` (curl sends
    -d as application/x-www-form-urlencoded), then the same PUT and test call. The answer
    was 400 "the body must be a JSON object", about a body that is one; now 415 naming
    the Content-Type, as the API answers, and nothing is written or sent."""
    api = make_app().test_client()
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    response = api.post("/webhooks", data=json.dumps(GOOD), headers=form)
    assert response.status_code == 415, response.json
    assert response.json["error"] == "Content-Type must be application/json"
    assert webhook_keys(client) == []
    hook = api.post("/webhooks", json=GOOD).json["data"]
    before = {key: client.dump(key) for key in webhook_keys(client)}
    for answer in (api.put(f"/webhooks/{hook['id']}", data='{"active": false}', headers=form),
                   api.post(f"/webhooks/{hook['id']}/test", data="{}", headers=form)):
        assert answer.status_code == 415, answer.json
    assert {key: client.dump(key) for key in webhook_keys(client)} == before


@pytest.mark.parametrize(("url", "kind"), [
    ("http://127.0.0.1:8080/hook", "loopback"),
    ("http://localhost:8080/hook", "loopback"),
    ("http://[::1]:8080/hook", "loopback"),
    ("http://10.1.2.3/hook", "private"),
    ("https://192.168.0.10/hook", "private"),
    ("http://169.254.169.254/latest/meta-data", "link-local"),
    ("http://[::ffff:127.0.0.1]/hook", "loopback"),
    ("http://0.0.0.0/hook", "unspecified"),
    ("http://100.64.0.1/hook", "non-global"),
])
def test_private_addresses_are_refused_at_registration(make_app, client, url, kind) -> None:
    response = make_app(networks="").test_client().post("/webhooks", json={**GOOD, "url": url})
    assert response.status_code == 400
    assert response.json["field"] == "url"
    assert f"a {kind} address" in response.json["error"]
    assert "EMP_WEBHOOK_ALLOW_PRIVATE" in response.json["error"]
    assert webhook_keys(client) == []


def test_allowed_networks_and_allow_private_open_the_guard(make_app) -> None:
    loopback_only = make_app(networks="127.0.0.0/8").test_client()
    assert loopback_only.post("/webhooks", json=GOOD).status_code == 201
    refused = loopback_only.post("/webhooks", json={**GOOD, "url": "http://10.1.2.3/"})
    assert refused.status_code == 400 and "private" in refused.json["error"]
    everything = make_app(networks="", allow_private=True).test_client()
    assert everything.post("/webhooks", json={**GOOD, "url": "http://10.1.2.3/"}).status_code \
        == 201


def test_secret_shown_once_generated_when_absent(make_app) -> None:
    api = make_app().test_client()
    created = api.post("/webhooks", json=GOOD)
    assert created.status_code == 201
    hook = created.json["data"]
    assert hook["secret"].startswith("whsec_")
    Webhook(hook["secret"])  # valid Standard Webhooks secret
    given = api.post("/webhooks", json={**GOOD, "secret": "my-plain-secret"}).json["data"]
    assert given["secret"] == "my-plain-secret"
    listing = api.get("/webhooks").json
    assert listing["count"] == 2
    for shown in [*listing["data"], api.get(f"/webhooks/{hook['id']}").json["data"]]:
        assert "secret" not in shown and shown["has_secret"] is True
    assert hook["retry_config"] == {"max_attempts": 3, "initial_delay_ms": 1000,
                                    "backoff_multiplier": 2.0, "max_delay_ms": 30000,
                                    "give_up_after_ms": 3_600_000}
    assert hook["active"] is True and hook["disconnected"] is False


def test_update_validates_the_result_and_keeps_other_fields(make_app, client) -> None:
    api = make_app().test_client()
    hook = api.post("/webhooks", json={**GOOD, "filters": {"job_types": ["echo"]}}).json["data"]
    before = client.hgetall(keys.hook(hook["id"]))
    bad = api.put(f"/webhooks/{hook['id']}", json={"events": ["nope"]})
    assert bad.status_code == 400 and bad.json["field"] == "events[0]"
    bad = api.put(f"/webhooks/{hook['id']}", json={"url": "http://10.0.0.1/"})
    assert bad.status_code == 400 and bad.json["field"] == "url"
    bad = api.put(f"/webhooks/{hook['id']}", json={})
    assert bad.status_code == 400
    assert client.hgetall(keys.hook(hook["id"])) == before
    changed = api.put(f"/webhooks/{hook['id']}", json={
        "events": ["cancel_job", "update_job_progress"], "active": False,
        "retry_config": {"max_attempts": 5}, "filters": {"job_priorities": ["70", 90]}})
    assert changed.status_code == 200
    data = changed.json["data"]
    assert data["events"] == ["job_cancelled", "update_job_progress"]
    assert data["url"] == GOOD["url"] and data["active"] is False
    assert data["filters"] == {"priorities": [70, 90]}
    assert data["retry_config"]["max_attempts"] == 5
    assert data["retry_config"]["initial_delay_ms"] == 1000
    assert api.put("/webhooks/wh_missing", json={"active": True}).status_code == 404


def test_delete_removes_the_hook_and_its_keys(make_app, client) -> None:
    api = make_app().test_client()
    hook = api.post("/webhooks", json=GOOD).json["data"]
    assert api.delete(f"/webhooks/{hook['id']}").status_code == 200
    for path in ("", "/stats", "/deliveries"):
        assert api.get(f"/webhooks/{hook['id']}{path}").status_code == 404
    assert api.post(f"/webhooks/{hook['id']}/reconnect").status_code == 404
    assert api.delete(f"/webhooks/{hook['id']}").status_code == 404
    # Left: the service-wide version and order counters (one key each), nothing of the hook.
    assert [k for k in webhook_keys(client) if k not in (keys.VERSION, keys.ORDER)] == []


def test_a_value_of_the_wrong_type_is_told_in_json_words(make_app, client) -> None:
    """Tried: POST /webhooks with ``active: "yes"``, ``retry_config.max_attempts: null``
    and ``2.5``, and ``events: "complete_job"``. Before, the answers spoke Python
    ("None is not of type 'integer'", "'yes' is not of type 'boolean'"); now JSON's, as the
    REST API's. Nothing is written."""
    api = make_app().test_client()
    before = sorted(client.keys("*"))
    for extra, field, said in (
            ({"active": "yes"}, "active", 'must be a boolean (true or false), got "yes"'),
            ({"retry_config": {"max_attempts": None}}, "retry_config.max_attempts",
             "must be an integer, got null"),
            ({"retry_config": {"max_attempts": 2.5}}, "retry_config.max_attempts",
             "must be an integer, got 2.5"),
            ({"events": "complete_job"}, "events", 'must be an array, got "complete_job"')):
        reply = api.post("/webhooks", json={**GOOD, **extra})
        assert reply.status_code == 400, reply.json
        assert (reply.json["field"], reply.json["error"]) == (field, f"{field}: {said}"), extra
    assert sorted(client.keys("*")) == before


def test_listing_limits_are_checked(make_app) -> None:
    api = make_app().test_client()
    hook = api.post("/webhooks", json=GOOD).json["data"]
    assert api.get(f"/webhooks/{hook['id']}/deliveries?limit=0").status_code == 400
    assert api.get("/deliveries/recent?limit=abc").status_code == 400
    # '²' and '٣' pass str.isdigit(): before, the first was a 500 (int() refuses it) and the
    # second listed 3; both are 400 now, as the API's own listing answers them.
    for digit in ("\u00b2", "\u0663", "1" * 5000):
        reply = api.get(f"/deliveries/recent?limit={digit}")
        assert reply.status_code == 400 and reply.json["field"] == "limit", (digit, reply.json)
    assert api.get("/deliveries/recent?limit=5").json == {"success": True, "data": [],
                                                          "limit": 5}


def test_deliveries_status_filter_is_checked(make_app) -> None:
    """Tried: GET /webhooks/<id>/deliveries?status=faild (a typo) and ?status=FAILED. Both
    answered 200 with an empty list, as if the hook had no failed delivery; now a 400
    naming the known statuses. A known status still lists."""
    api = make_app().test_client()
    hook = api.post("/webhooks", json=GOOD).json["data"]
    for status in ("faild", "FAILED"):
        response = api.get(f"/webhooks/{hook['id']}/deliveries?status={status}")
        assert response.status_code == 400 and response.json["field"] == "status"
        assert "queued, retrying, delivered, failed, refused" in response.json["error"]
    listed = api.get(f"/webhooks/{hook['id']}/deliveries?status=failed")
    assert listed.status_code == 200 and listed.json["data"] == []


def test_admin_token_needed_when_tokens_are_configured(make_app) -> None:
    api = make_app(admin_tokens={"adm"}, customer_tokens={"tok": "cust-a"}).test_client()
    assert api.get("/health").status_code == 200
    assert api.post("/webhooks", json=GOOD).status_code == 401
    assert api.get("/webhooks", headers={"Authorization": "Bearer wrong"}).status_code == 401
    customer = {"Authorization": "Bearer tok"}
    assert api.post("/webhooks", json=GOOD, headers=customer).status_code == 403
    assert api.get("/deliveries/recent", headers=customer).status_code == 403
    admin = {"Authorization": "Bearer adm"}
    assert api.post("/webhooks", json=GOOD, headers=admin).status_code == 201
    assert api.get("/webhooks", headers=admin).json["count"] == 1


@pytest.mark.timeout(60)
def test_served_by_gunicorn_with_the_guard_on_by_default(start_server, client) -> None:
    server = start_server("webhooks", EMP_ADMIN_TOKENS="adm")
    admin = {"Authorization": "Bearer adm"}
    health = requests.get(server.base + "/health", timeout=5).json()
    assert health["status"] == "ok" and health["redis"] == "ok"
    refused = requests.post(server.base + "/webhooks", json=GOOD, headers=admin, timeout=5)
    assert refused.status_code == 400 and "loopback" in refused.json()["error"]
    assert requests.post(server.base + "/webhooks", json=GOOD, timeout=5).status_code == 401
    assert requests.get(server.base + "/webhooks", headers=admin, timeout=5).json()["count"] == 0
    assert requests.get(server.base + "/nowhere", timeout=5).json()["success"] is False


def test_every_job_event_the_log_carries_can_be_subscribed(make_app) -> None:
    """Tried: a registration for each job event the functions append (JobEvent). The log's
    job_released (a job its down service refused, back to pending) was refused as unknown."""
    api = make_app().test_client()
    for event in JobEvent:
        created = api.post("/webhooks", json={**GOOD, "events": [event.value]})
        assert created.status_code == 201, (event, created.json)


@pytest.mark.parametrize(("raw", "words"), [
    (b'{"url": "http://127.0.0.1:9/hook", "events": ["job_submitted"], '
     b'"retry_config": {"backoff_multiplier": NaN}}', "NaN"),
    (b'{"url": "http://127.0.0.1:9/hook", "events": ["job_submitted"], '
     b'"retry_config": {"backoff_multiplier": 1e999}}', "1e999"),
    (b'{"url": "http://127.0.0.1:9/hook", "events": ["job_submitted"], "metadata": '
     + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested deeper than"),
])
def test_registration_bodies_are_parsed_strictly(make_app, client, raw, words) -> None:
    """Tried: POST /webhooks and PUT /webhooks/<id> with NaN, an overflowing number and
    100,000-deep nesting (before: Flask's parser took NaN and 1e999, whatever the schema
    then made of them). The webhook API uses the one strict parser: 400 naming the
    problem, nothing written or changed."""
    app = make_app().test_client()
    response = app.post("/webhooks", data=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and words in response.json["error"], response.json
    assert webhook_keys(client) == []
    hook = app.post("/webhooks", json=GOOD).json["data"]
    before = {key: client.dump(key) for key in webhook_keys(client)}
    response = app.put(f"/webhooks/{hook['id']}", data=raw,
                       headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and words in response.json["error"], response.json
    assert {key: client.dump(key) for key in webhook_keys(client)} == before


@pytest.mark.parametrize(("body", "field"), [
    ({"event_type": ["complete_job"]}, "event_type"),
    ({"event_type": {"name": "complete_job"}}, "event_type"),
    ({"event_type": 5}, "event_type"),
    ({"event_type": "job_exploded"}, "event_type"),
    ({"event_typ": "complete_job"}, "event_typ"),
    (["complete_job"], None),
])
def test_test_call_with_a_bad_body_is_refused_and_sends_nothing(make_app, client, body,
                                                                field) -> None:
    """Tried: POST /webhooks/<id>/test with event_type a list or an object (before: 500
    "internal error"), a number or an unknown name, a misspelt field and an array body
    (before: both ignored, a sample of the hook's first event sent). Now each is a 400
    naming the field, and nothing is sent or kept in the hook's history."""
    api = make_app().test_client()
    hook = api.post("/webhooks", json=GOOD).json["data"]
    response = api.post(f"/webhooks/{hook['id']}/test", json=body)
    assert response.status_code == 400, response.json
    assert response.json.get("field") == field and response.json["success"] is False
    assert client.zcard(keys.log(hook["id"])) == 0


def redirected_test_call(make_app: Callable[..., Any], status: int,
                         location: str) -> tuple[Any, Any]:
    """(the test call's answer, the hook's last delivery) for a hook whose receiver answers
    every POST with ``status`` and ``Location: location``."""
    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(status)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        api = make_app().test_client()
        hook = api.post("/webhooks", json={**GOOD, "url": f"http://127.0.0.1:"
                                           f"{server.server_address[1]}/emp"}).json["data"]
        response = api.post(f"/webhooks/{hook['id']}/test")
    finally:
        server.shutdown()
        server.server_close()
    return response, api.get(f"/webhooks/{hook['id']}/deliveries").json["data"][0]


def test_a_redirecting_receiver_is_told_where_it_pointed(make_app, client) -> None:
    """Tried: a test call to a receiver answering 301 with ``Location: https://...`` (an
    http:// URL registered for an https-only site). The answer and the delivery history
    said "HTTP 301" only; they now name where it pointed and that redirects are not
    followed. Nothing was sent to the Location."""
    response, kept = redirected_test_call(
        make_app, 301, "https://hooks.example.com/emp")
    assert response.status_code == 502
    said = "HTTP 301 redirecting to https://hooks.example.com/emp (redirects are not followed"
    assert said in response.json["error"], response.json
    assert kept["last_error"].startswith(said)
    assert kept["attempt_history"][0]["response_status"] == 301


def test_a_password_in_a_receivers_redirect_is_shown_as_stars(make_app, client) -> None:
    """Tried: a receiver answering 302 with ``Location: https://bob:hunter2@...``. The
    attempt's error quoted the Location as given, password included, to anyone reading the
    hook's deliveries; it is shown as hook URLs are (``bob:***@``)."""
    response, kept = redirected_test_call(
        make_app, 302, "https://bob:hunter2@hooks.example.com/emp?x=1")
    said = "HTTP 302 redirecting to https://bob:***@hooks.example.com/emp?x=1 (redirects"
    assert said in response.json["error"], response.json
    assert kept["last_error"].startswith(said)
    assert "hunter2" not in json.dumps(kept) + json.dumps(response.json)


def test_a_replaced_secret_keeps_signing_beside_the_new_one_for_a_while(
        make_app, client, receiver) -> None:
    """Tried: a hook registered with secret A, then ``PUT {"secret": B}`` and a delivery
    (the test call; queued ones are signed the same way). Before, it was signed with B
    alone: a receiver still on A (its deploy follows the PUT, or comes first) refused
    every delivery with a 4xx, and after max_attempts (~3 s) each was dead-lettered.
    Now ``webhook-signature`` carries both, the Standard Webhooks way, so a receiver on
    either verifies; once the overlap is over, B alone. X-Webhook-Signature is B's."""
    old = "whsec_" + base64.b64encode(b"a" * 32).decode()
    new = "whsec_" + base64.b64encode(b"b" * 32).decode()
    sink = receiver()
    api = make_app().test_client()
    hook = api.post("/webhooks", json={**GOOD, "url": sink.url + "/r", "secret": old}
                    ).json["data"]
    changed = api.put(f"/webhooks/{hook['id']}", json={"secret": new}).json["data"]
    assert "secret" not in changed and changed["previous_secret_until"] > changed["updated_at"]
    assert api.post(f"/webhooks/{hook['id']}/test").status_code == 200
    got = sink.requests[-1]
    for secret in (old, new):
        assert Webhook(secret).verify(got.body, got.headers) == got.payload
    assert got.headers["X-Webhook-Signature"] == legacy_signature(new, got.body)

    client.hset(keys.hook(hook["id"]), "previous_secret_until", "1")  # the overlap is over
    assert api.get(f"/webhooks/{hook['id']}").json["data"]["previous_secret_until"] is None
    assert api.post(f"/webhooks/{hook['id']}/test").status_code == 200
    got = sink.requests[-1]
    Webhook(new).verify(got.body, got.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(got.body, got.headers)
