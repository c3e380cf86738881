"""One strict JSON parser for every way a job comes in: REST, the client socket, the monitor.

JSON has no NaN and no Infinity, and a number too large for a float is not
one either (Python's parser turns ``1e999`` into infinity, which then
reaches the record as a bare ``Infinity`` and crashes a worker's ``float``
arithmetic). Nesting and size are bounded too. Each path is tried with the
same bad documents; each refusal names the problem and writes nothing.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from rest_helpers import Api, snapshot

from emp_tasks.websocket_client import WebSocketClient as Client
from webapp.api.events import CONNECTIONS_KEY
from webapp.strict_json import MAX_DEPTH, JsonRefused, loads

pytestmark = pytest.mark.timeout(120)

#: (what was tried, raw JSON text of a job body, words the refusal must contain)
BAD_DOCUMENTS = [
    ("NaN", '{"service_required": "echo", "payload": {"duration": NaN}}', "NaN"),
    ("Infinity", '{"service_required": "echo", "payload": {"duration": Infinity}}',
     "Infinity"),
    ("-Infinity", '{"service_required": "echo", "payload": {"duration": -Infinity}}',
     "Infinity"),
    ("a float that overflows", '{"service_required": "echo", "payload": {"duration": 1e999}}',
     "1e999"),
    ("a negative float that overflows",
     '{"service_required": "echo", "payload": {"duration": -2.5E+400}}', "-2.5E+400"),
    ("an integer beyond any float",
     '{"service_required": "echo", "payload": {"n": 1' + "0" * 400 + "}}", "too large"),
    ("nesting deeper than the limit",
     '{"service_required": "echo", "payload": ' + "[" * (MAX_DEPTH + 1)
     + "]" * (MAX_DEPTH + 1) + "}", "nested deeper than"),
    ("100,000-deep nesting", '{"service_required": "echo", "payload": ' + "[" * 100_000
     + "]" * 100_000 + "}", "nested deeper than"),
    # Before: accepted (201), but 500 with an Idempotency-Key and a closed socket (1002)
    # with a message_id: the body's fingerprint could not be encoded as UTF-8.
    ("a lone surrogate", '{"service_required": "echo", "payload": {"x": ["\\ud800"]}}',
     "payload.x.0: lone surrogate"),
    ("a lone surrogate in a key", '{"service_required": "echo", "payload": {"\\udfff": 1}}',
     "payload (a key): lone surrogate"),
    # Before: accepted, the last one kept (a text job ran); I-JSON forbids it.
    ("a name twice in one object",
     '{"service_required": "echo", "service_required": "text"}',
     'name "service_required" appears twice in one object'),
    ("a name twice in a nested object",
     '{"service_required": "echo", "payload": {"steps": 1, "steps": 10000}}',
     'name "steps" appears twice'),
    # Before: refused in Python's words, "use sys.set_int_max_str_digits()".
    ("a 5,000-digit integer", '{"service_required": "echo", "payload": {"n": ' + "9" * 5000
     + "}}", "is too large (beyond any float)"),
]


@pytest.mark.parametrize(("tried", "text", "words"), BAD_DOCUMENTS,
                         ids=[b[0] for b in BAD_DOCUMENTS])
def test_the_parser_refuses_what_json_does_not_have(tried: str, text: str, words: str) -> None:
    """Tried: each bad document against the parser itself; each raises naming the problem."""
    with pytest.raises(JsonRefused) as refused:
        loads(text)
    assert words in str(refused.value), tried


def test_the_parser_keeps_ordinary_documents_and_limits_size() -> None:
    """Tried: large finite numbers, nesting at the limit, brackets inside strings (not
    nesting), an escaped surrogate pair, and a document over the size limit."""
    deep = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)  # the object around it is one level
    assert loads('{"a": 1.7e308, "b": -5, "c": "[[[[{{{{", "d": ' + deep + "}")["a"] == 1.7e308
    assert loads('{"emoji": "\\ud83d\\ude00"}')["emoji"] == "\U0001f600"  # a pair is fine
    with pytest.raises(JsonRefused, match="over the 100-byte limit"):
        loads('{"x": "' + "y" * 200 + '"}', max_bytes=100)


def _submitted_once(api: Api) -> None:
    """One good submission, so the refused ones are compared against a warm database."""
    assert api.post("/api/jobs", json={"service_required": "echo"}).status_code == 201


def test_rest_refuses_each_bad_document_and_writes_nothing(start_server, client) -> None:
    """Tried: POST /api/jobs with each bad document (before: 1e999 and the overflowing
    integer were accepted and stored; the 100,000-deep one was refused by luck of a
    RecursionError)."""
    api = Api(start_server("api").base)
    _submitted_once(api)
    before = snapshot(client)
    for tried, text, words in BAD_DOCUMENTS:
        reply = api.post("/api/jobs", data=text.encode(),
                         headers={"Content-Type": "application/json"})
        assert reply.status_code == 400, (tried, reply.text[:300])
        assert reply.json()["success"] is False and words in reply.json()["error"], tried
    assert without_flower_control(snapshot(client)) == before


def _receive(ws: Client) -> dict[str, Any]:
    text = ws.receive(timeout=20)
    assert text is not None, "no answer on the socket"
    return json.loads(text)


def test_client_socket_refuses_each_bad_document_and_writes_nothing(
        start_server, client) -> None:
    """Tried: submit_job messages carrying each bad document over /ws/client (before: NaN
    and 1e999 were submitted, and the 100,000-deep message raised an unhandled
    RecursionError); the socket answers an error each time and stays usable."""
    api = start_server("api")
    _submitted_once(Api(api.base))
    ws = Client.connect(f"{api.ws_base}/ws/client/strict")
    assert _receive(ws)["type"] == "connection_established"

    def data() -> dict[str, bytes]:
        # Less the API's own list of open sockets, which it refreshes on a timer.
        return {k: v for k, v in snapshot(client).items()
                if not k.startswith(CONNECTIONS_KEY)}

    before = data()
    for tried, text, words in BAD_DOCUMENTS:
        ws.send('{"type": "submit_job", ' + text[1:])
        answer = _receive(ws)
        assert answer["type"] == "error" and words in answer["error"], (tried, answer)
    assert data() == before
    ws.send(json.dumps({"type": "submit_job", "service_required": "echo",
                        "message_id": "after-the-bad-ones"}))
    assert _receive(ws)["job_id"] == "after-the-bad-ones"
    ws.close()


def without_flower_control(keys: dict[str, bytes]) -> dict[str, bytes]:
    """The data, less kombu's bindings of Flower's control replies (its inspector renews
    them on its own schedule, whatever is submitted)."""
    return {k: v for k, v in keys.items()
            if not k.startswith(("_kombu.binding.reply.", "_kombu.binding_deadlines"))}


def test_monitor_submit_refuses_each_bad_document_and_writes_nothing(
        start_server, client) -> None:
    """Tried: the monitor's POST /emp/api/submit with each bad document (before: NaN,
    Infinity and 1e999 were accepted and submitted)."""
    monitor = start_server("monitor")
    assert requests.post(monitor.base + "/emp/api/submit", json={"service_required": "echo"},
                         timeout=10).status_code == 201
    before = without_flower_control(snapshot(client))
    for tried, text, words in BAD_DOCUMENTS:
        reply = requests.post(monitor.base + "/emp/api/submit", data=text.encode(), timeout=10,
                              headers={"Content-Type": "application/json"})
        assert reply.status_code == 400, (tried, reply.text[:300])
        assert reply.json()["success"] is False and words in reply.json()["error"], tried
    assert without_flower_control(snapshot(client)) == before
