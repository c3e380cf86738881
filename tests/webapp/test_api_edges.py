"""Open ends a web developer met integrating with ``emp api`` (real server, real Redis):
CORS for a browser app on another origin, repeated ``token``/``last_event_id`` query
parameters, the form of server-made job ids, and a stop that closes its sockets."""

from __future__ import annotations

import re
import signal
import socket
import time
import warnings

import pytest
import requests
from rest_helpers import ADMIN, TOKEN_A, TOKENS_ENV, Api
from simple_websocket import ConnectionClosed
from simple_websocket import ConnectionError as WebSocketRefused

from emp_tasks.websocket_client import WebSocketClient
from webapp.settings import parse_origins

pytestmark = pytest.mark.timeout(120)

JOB = {"service_required": "echo", "payload": {"n": 1}}
APP = "https://app.example"
#: A dashed UUID, the form of every other id the server makes.
DASHED_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _preflight(base: str, origin: str, path: str = "/api/jobs") -> requests.Response:
    return requests.options(base + path, timeout=10, headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, idempotency-key"})


def test_cors_is_answered_for_listed_origins_only(start_server) -> None:
    """Tried: a browser's preflight (OPTIONS /api/jobs with Origin, Access-Control-Request-*)
    and a real GET with an Origin header, against ``emp api`` with
    ``EMP_CORS_ORIGINS=https://app.example``. Before: no CORS header at all, so a browser
    app on another origin could not call REST. Now the listed origin gets its preflight
    (methods, Authorization/Content-Type/Idempotency-Key/Last-Event-ID) and its answers
    (Retry-After exposed); an unlisted origin, and any origin without the setting, gets no
    CORS header; ``*`` allows any origin and never credentials. A socket's Origin is not
    checked (as the README says)."""
    server = start_server("api", EMP_API_PROCESSES="1", EMP_CORS_ORIGINS=f"{APP}, "
                          "https://other.example", **TOKENS_ENV)
    pre = _preflight(server.base, APP)
    assert pre.status_code in (200, 204), pre.text
    assert pre.headers.get("Access-Control-Allow-Origin") == APP, pre.headers
    assert "POST" in pre.headers["Access-Control-Allow-Methods"]
    allowed = pre.headers["Access-Control-Allow-Headers"].lower()
    for name in ("authorization", "content-type", "idempotency-key"):
        assert name in allowed, allowed
    assert "Access-Control-Allow-Credentials" not in pre.headers
    real = requests.get(server.base + "/api/jobs", timeout=10, headers={
        "Origin": APP, "Authorization": f"Bearer {TOKEN_A}"})
    assert real.status_code == 200, real.text
    assert real.headers.get("Access-Control-Allow-Origin") == APP
    assert "retry-after" in real.headers["Access-Control-Expose-Headers"].lower()
    refused = requests.get(server.base + "/api/jobs", timeout=10, headers={"Origin": APP})
    assert refused.status_code == 401  # an error is readable by the app too
    assert refused.headers.get("Access-Control-Allow-Origin") == APP
    for response in (_preflight(server.base, "https://evil.example"),
                     requests.get(server.base + "/health", timeout=10,
                                  headers={"Origin": "https://evil.example"})):
        assert not [h for h in response.headers if h.lower().startswith("access-control")]

    # WebSockets know no CORS: the Origin is not checked, the token admits (README).
    ws = WebSocketClient.connect(f"{server.ws_base}/ws/client/c?token={TOKEN_A}",
                                 headers={"Origin": "https://evil.example"})
    assert ws.receive(timeout=10) is not None  # connection_established
    ws.close()

    off = start_server("api", EMP_API_PROCESSES="1")
    for response in (_preflight(off.base, APP),
                     requests.get(off.base + "/health", timeout=10, headers={"Origin": APP})):
        assert not [h for h in response.headers if h.lower().startswith("access-control")]

    anyone = start_server("api", EMP_API_PROCESSES="1", EMP_CORS_ORIGINS="*")
    pre = _preflight(anyone.base, "https://whoever.example")
    assert pre.headers.get("Access-Control-Allow-Origin") == "*", pre.headers
    assert "Access-Control-Allow-Credentials" not in pre.headers


#: Origins of pages served on an IPv6 address, exactly as browsers send them.
IPV6_APPS = ("http://[::1]:5173", "https://[2001:db8::1]")


@pytest.mark.parametrize("origin", [*IPV6_APPS, "http://[fe80::1:0:0:1]:8080",
                                    "http://[::ffff:7f00:1]", "https://[2001:DB8::1]",
                                    "http://[1:2:3:4:5:6:7:8]", "http://[1:0:2:3:4:5:6:7]"])
def test_an_ipv6_origin_as_browsers_send_it_is_accepted(origin) -> None:
    """Tried: ``EMP_CORS_ORIGINS`` set to the Origin a browser sends for a page on an IPv6
    address (hex in either case). Before: ``emp api`` refused to start ("is not an
    origin")."""
    assert parse_origins(f"https://app.example, {origin}") == [APP, origin]


@pytest.mark.parametrize("origin, hint", [
    ("http://[::1]:5173/", ""), ("https://[2001:db8::1]/app", ""), ("http://::1:5173", ""),
    ("http://[::1", ""), ("http://[::1]:", ""), ("http://[zz::1]", ""),
    ("http://[127.0.0.1]", ""), ("http://[fe80::1%25eth0]", ""), ("http://[::1]x", ""),
    ("http://[0:0:0:0:0:0:0:1]:5173", "http://[::1]:5173"),
    ("http://[1:0:0:2:0:0:0:3]", "http://[1:0:0:2::3]"),
    ("http://[1::2:3:4:5:6:7]", "http://[1:0:2:3:4:5:6:7]"),
    ("http://[::ffff:127.0.0.1]", "http://[::ffff:7f00:1]"),
    ("https://app.example:443", ""), ("http://localhost:80", ""), ("http://[::1]:80", ""),
])
def test_an_origin_no_browser_would_send_is_still_refused(origin, hint) -> None:
    """Tried: paths, trailing slashes, unbracketed, unclosed, invalid or zoned IPv6 hosts,
    and IPv6 hosts not in the form browsers send (which would never match). Each is
    refused naming it; a host browsers write otherwise is refused naming their form.
    Later: the scheme's own port (``https://app.example:443``), which browsers leave out of
    Origin, was accepted and never matched; now refused naming the form they send."""
    with pytest.raises(ValueError, match=re.escape(f"EMP_CORS_ORIGINS {origin!r} ")) as error:
        parse_origins(f"{APP},{origin}")
    if hint:
        assert f"browsers send it as {hint!r}" in str(error.value)
    if origin.endswith((":443", ":80")):
        assert f"sending {origin.rsplit(':', 1)[0]!r}" in str(error.value)


def test_cors_answers_a_listed_ipv6_origin_only(start_server) -> None:
    """Tried: preflights and a real GET from pages served on IPv6 addresses, against
    ``emp api`` with those origins in ``EMP_CORS_ORIGINS``. Before: the server refused to
    start; and flask-cors reads a string holding brackets as a regular expression, where
    ``[::1]`` is a character class: the listed origin got no CORS header, while
    ``http://1:5173`` would have. Now each listed origin gets its own
    Access-Control-Allow-Origin, matched exactly; other origins get none."""
    server = start_server("api", EMP_API_PROCESSES="1", EMP_CORS_ORIGINS=",".join(IPV6_APPS),
                          **TOKENS_ENV)
    for origin in IPV6_APPS:
        pre = _preflight(server.base, origin)
        assert pre.status_code in (200, 204), pre.text
        assert pre.headers.get("Access-Control-Allow-Origin") == origin, pre.headers
        assert "POST" in pre.headers["Access-Control-Allow-Methods"]
        real = requests.get(server.base + "/api/jobs", timeout=10, headers={
            "Origin": origin, "Authorization": f"Bearer {TOKEN_A}"})
        assert real.status_code == 200, real.text
        assert real.headers.get("Access-Control-Allow-Origin") == origin, real.headers
    for other in ("http://1:5173", "http://[::1]:51730", "http://[::1]:5173.evil.example",
                  "http://[::2]:5173", "https://[2001:db8::1]:8443", "http://[2001:db8::1]"):
        response = _preflight(server.base, other)
        assert not [h for h in response.headers if h.lower().startswith("access-control")], \
            (other, response.headers)


def test_a_repeated_token_or_last_event_id_is_refused_naming_it(start_server) -> None:
    """Tried: ``GET /api/jobs?token=<customer>&token=<admin>``, a client socket with
    ``?token=`` twice and a monitor socket with ``?last_event_id=`` twice. Before: the first
    value was taken without a word (the listing answered 200; both sockets opened). Now
    each is 400 naming the parameter, before any socket opens (as ``?status=`` twice is)."""
    server = start_server("api", EMP_API_PROCESSES="1", **TOKENS_ENV)
    reply = requests.get(f"{server.base}/api/jobs?token={TOKEN_A}&token={ADMIN}", timeout=10)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"].startswith("token: given 2 times"), reply.text
    for path, name in ((f"/ws/client/c?token={TOKEN_A}&token={TOKEN_A}", "token"),
                       (f"/ws/monitor/m?token={ADMIN}&last_event_id=1-0&last_event_id=2-0",
                        "last_event_id")):
        with pytest.raises(WebSocketRefused) as refused:
            WebSocketClient.connect(server.ws_base + path)
        assert refused.value.status_code == 400, path
        plain = requests.get(server.base + path, timeout=10)
        assert plain.status_code == 400 and plain.json()["error"].startswith(
            f"{name}: given 2 times"), plain.text


def test_a_keyed_submit_gets_a_dashed_uuid_as_other_server_made_ids(start_server) -> None:
    """Tried: POST /api/jobs without and with an Idempotency-Key. Before: the plain submit's
    id was a dashed UUID, the keyed one's 32 hex digits without dashes. Now both are dashed
    UUIDs, and the keyed retry still names the same job."""
    api = Api(start_server("api", EMP_API_PROCESSES="1").base)
    assert DASHED_UUID.fullmatch(api.submit(**JOB))
    first = api.post("/api/jobs", json=JOB, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 201, first.text
    assert DASHED_UUID.fullmatch(first.json()["job_id"]), first.json()
    again = api.post("/api/jobs", json=JOB, headers={"Idempotency-Key": "k-1"})
    assert again.json()["job_id"] == first.json()["job_id"]


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_a_stop_with_open_sockets_closes_them_going_away_and_logs_nothing_broken(
        start_server, stop: signal.Signals) -> None:
    """Tried: ``emp api`` with an idle client WebSocket, an idle monitor WebSocket and an
    idle keep-alive HTTP connection (one request answered, nothing more sent), then
    SIGTERM, or Ctrl-C (SIGINT to the process group: gunicorn's quick shutdown), then what
    the sockets got and the server's output read.

    Before: the stop logged a ``GreenletExit`` traceback for the keep-alive connection it
    closed. Then: the open WebSockets kept the worker until gunicorn's graceful timeout,
    which killed it; the clients saw their connection drop (1006, no close frame), and a
    worker that did exit printed "Exception ignored in _removeHandlerRef" with a traceback
    (gevent issue 2148), after a MonkeyPatchWarning at its start; Ctrl-C also printed
    "SystemExit: 0" with a traceback (the worker's second signal). Now each socket is
    closed with 1001 "server stopping", the worker exits by itself ("Worker exiting"), and
    the output has no traceback and no warning of gevent's."""
    server = start_server("api", EMP_API_PROCESSES="1", EMP_ADMIN_TOKENS=ADMIN)
    client = WebSocketClient.connect(f"{server.ws_base}/ws/client/idle?token={ADMIN}")
    monitor = WebSocketClient.connect(f"{server.ws_base}/ws/monitor/idle?token={ADMIN}")
    assert client.receive(timeout=10) is not None  # connection_established
    idle = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    idle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
    assert idle.recv(65536).startswith(b"HTTP/1.1 200")
    time.sleep(0.5)
    server.kill(stop)
    assert server.process is not None and server.process.returncode == 0, server.log()
    idle.close()
    for ws in (client, monitor):
        with pytest.raises(ConnectionClosed) as closed:
            while True:  # what the monitor socket sent before the close comes first
                ws.receive(timeout=10)
        assert (closed.value.reason, closed.value.message) == (1001, "server stopping")
    log = server.log_path.read_text(errors="replace")
    assert "Worker exiting" in log, log  # not killed at the graceful timeout
    for broken in ("Traceback", "GreenletExit", "Exception ignored", "MonkeyPatchWarning"):
        assert broken not in log, log


@pytest.mark.parametrize(("unpatched", "kept"), [
    (["redis.asyncio.connection"], False),
    (["redis.asyncio.connection", "urllib3.util.ssl_"], True),
    ([], True),
])
def test_only_gevents_warning_about_redis_asyncio_is_left_unsaid(
        unpatched: list[str], kept: bool) -> None:
    """Tried: the warning gevent gives each API worker as it patches ``ssl`` after the
    master imported it, naming the modules it could not patch, as ``patch_all`` words it.
    One naming only redis's asyncio client (imported by ``import redis``, unused in the
    API) is not said; one naming any other module, or none, still is."""
    from gevent.monkey import MonkeyPatchWarning

    from webapp.graceful import _patch_warnings

    names = ", ".join(f"'{name} (/site-packages/{name}.py)'" for name in unpatched)
    text = ("Monkey-patching ssl after ssl has already been imported may lead to errors. "
            + (f"Modules that had direct imports (NOT patched): [{names}]." if names else ""))
    warning = warnings.WarningMessage(MonkeyPatchWarning(text), MonkeyPatchWarning,
                                      "ggevent.py", 38)
    assert (_patch_warnings([warning]) == [warning]) is kept
