"""The webhook service's pure parts: backoff, outcome rules, filters, signatures, addresses."""

from __future__ import annotations

import ipaddress
import random
import socket
import threading
import time

import pytest
from standardwebhooks.webhooks import Webhook

from webapp.webhooks.addresses import AddressPolicy, AddressRefused
from webapp.webhooks.config import WebhookConfig, parse_networks
from webapp.webhooks.dispatcher import backoff_ms, decide
from webapp.webhooks.enrich import Enricher
from webapp.webhooks.events import Event
from webapp.webhooks.filters import matches
from webapp.webhooks.sender import Sender, SendResult
from webapp.webhooks.signing import generate_secret, legacy_signature, signature_headers
from webapp.webhooks.urls import shown_url, unmasked

RETRY = WebhookConfig().retry_defaults()


def test_defaults_are_the_originals() -> None:
    config = WebhookConfig()
    # The original's, and one of ours: it retried a delivery answered 5xx for ever.
    assert RETRY == {"max_attempts": 3, "initial_delay_ms": 1000, "backoff_multiplier": 2.0,
                     "max_delay_ms": 30000, "give_up_after_ms": 3_600_000}
    assert config.disconnect_after == 10 and config.reconnect_seconds == 300
    assert config.progress_interval_ms == 1000 and config.timeout_seconds == 30
    assert config.allow_private is False and config.allowed_networks == ()


@pytest.mark.parametrize(("attempt", "full"), [(1, 1000), (2, 2000), (3, 4000), (5, 16000),
                                               (6, 30000), (50, 30000), (5000, 30000)])
def test_backoff_is_exponential_capped_and_jittered_down(attempt, full) -> None:
    rng = random.Random(7)
    waits = [backoff_ms(attempt, RETRY, rng) for _ in range(200)]
    assert all(0.8 * full <= w <= full for w in waits)
    assert max(waits) - min(waits) > full / 10  # jittered


@pytest.mark.parametrize(("result", "attempt", "outcome"), [
    (SendResult(200, 1), 1, "delivered"),
    (SendResult(204, 1), 3, "delivered"),
    (SendResult(None, 1, error="refused"), 99, "retry"),  # no answer: transient
    (SendResult(500, 1), 99, "retry"),
    (SendResult(503, 1), 99, "retry"),
    (SendResult(408, 1), 99, "retry"),
    (SendResult(429, 1), 99, "retry"),
    (SendResult(400, 1), 1, "retry"),
    (SendResult(400, 1), 3, "failed"),
    (SendResult(301, 1), 3, "failed"),
    (SendResult(None, 1, refused=True), 1, "refused"),
])
def test_outcome_rules(result, attempt, outcome) -> None:
    assert decide(result, attempt, RETRY)[0] == outcome


def test_retry_after_lengthens_the_wait_up_to_the_cap() -> None:
    assert decide(SendResult(429, 1, retry_after_ms=20_000), 1, RETRY)[1] == 20_000
    assert decide(SendResult(503, 1, retry_after_ms=900_000), 1, RETRY)[1] == 30_000


@pytest.mark.parametrize(("header", "wait_ms"), [(b"7", 7000), (b"\xb2", None),
                                                  (b"tomorrow", None),
                                                  (b"9" * 5000, 999_999_999_000)])
def test_a_receivers_retry_after_is_read_or_ignored_never_raised(header, wait_ms) -> None:
    """Tried: a receiver answering 503 with ``Retry-After: 7``, with the byte 0xB2 (read as
    Latin-1 '\u00b2', which str.isdigit() takes and int() refuses), with no date, and with
    5,000 digits. Before, the 0xB2 one and the 5,000 digits (int() refuses more than 4,300)
    raised ValueError out of the attempt: no outcome recorded for it. Now 0xB2 is no
    Retry-After, as the unparsable date already was, and 5,000 digits a very long one
    (the retry's cap applies)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 503 Busy\r\nRetry-After: " + header +
                         b"\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=answer, daemon=True).start()
    sender = Sender(AddressPolicy(allowed_networks=parse_networks("127.0.0.0/8")), timeout=3.0)
    try:
        result = sender.post(f"http://127.0.0.1:{port}/hook", b"{}", {})
    finally:
        sender.close()
        listener.close()
    assert (result.status, result.retry_after_ms) == (503, wait_ms), result
    assert decide(result, 1, RETRY)[0] == "retry"


EVENT = {"job_type": "comfyui", "priority": 70, "machine_id": "m1", "worker_id": "w1",
         "customer_id": "c1", "workflow_id": "wf1"}


@pytest.mark.parametrize(("filters", "data", "passes"), [
    (None, EVENT, True),
    ({}, EVENT, True),
    ({"job_types": []}, EVENT, True),
    ({"job_types": ["comfyui", "echo"]}, EVENT, True),
    ({"job_types": ["echo"]}, EVENT, False),
    ({"job_types": ["comfyui"], "machine_ids": ["m2"]}, EVENT, False),
    ({"worker_ids": ["w1"], "customer_ids": ["c1"], "workflow_ids": ["wf1"]}, EVENT, True),
    ({"worker_ids": ["w1"]}, {**EVENT, "worker_id": None}, False),
    ({"job_types": ["comfyui"]}, {"worker_id": "w1", "status": "online"}, False),
    ({"priorities": [70]}, EVENT, True),
    ({"priorities": [50, 60]}, EVENT, False),
    ({"min_priority": 70}, EVENT, True),
    ({"min_priority": 71}, EVENT, False),
    ({"max_priority": 69}, EVENT, False),
    ({"min_priority": 60, "max_priority": 80, "priorities": [70]}, EVENT, True),
    ({"min_priority": 0}, {**EVENT, "priority": None}, False),
])
def test_filters(filters, data, passes) -> None:
    assert matches(filters, data) is passes


@pytest.mark.parametrize("secret", [generate_secret(), "plain text secret"],
                         ids=["whsec-secret", "plain-secret"])  # stable for pytest-xdist
def test_both_signatures_verify(secret) -> None:
    body = '{"event_type":"complete_job","data":{"job_id":"j1"}}'
    headers = signature_headers(secret, "dlv_1", body)
    key = secret if secret.startswith("whsec_") else secret.encode()
    assert Webhook(key).verify(body, headers) == {"event_type": "complete_job",
                                                   "data": {"job_id": "j1"}}
    assert headers["X-Webhook-Signature"] == legacy_signature(secret, body.encode())
    assert headers["webhook-id"] == "dlv_1" and headers["webhook-signature"].startswith("v1,")


@pytest.mark.parametrize(("address", "allowed"), [
    ("8.8.8.8", True), ("2001:4860:4860::8888", True), ("127.0.0.1", False),
    ("10.0.0.1", False), ("172.16.5.4", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("100.64.1.1", False), ("0.0.0.0", False), ("::1", False),
    ("fe80::1", False), ("fc00::1", False), ("::ffff:10.0.0.1", False),
    ("::ffff:8.8.8.8", True), ("224.0.0.1", False), ("255.255.255.255", False),
])
def test_address_policy(address, allowed) -> None:
    policy = AddressPolicy()
    ip = ipaddress.ip_address(address)
    if allowed:
        policy.check_ip(ip)
    else:
        with pytest.raises(AddressRefused):
            policy.check_ip(ip)
        AddressPolicy(allow_private=True).check_ip(ip)


def test_allowed_networks() -> None:
    policy = AddressPolicy(allowed_networks=parse_networks("127.0.0.0/8, ::1/128"))
    policy.check_ip(ipaddress.ip_address("127.0.0.2"))
    policy.check_ip(ipaddress.ip_address("::1"))
    with pytest.raises(AddressRefused):
        policy.check_ip(ipaddress.ip_address("10.0.0.1"))
    assert policy.resolve("127.0.0.1", 80) == ["127.0.0.1"]
    with pytest.raises(ValueError, match="not a network"):
        parse_networks("127.0.0.0/8,nonsense")


@pytest.mark.parametrize(("address", "allowed", "embedded"), [
    ("2002:7f00:1::1", False, "127.0.0.1"), ("2002:a00:1::1", False, "10.0.0.1"),
    ("2002:a9fe:a9fe::1", False, "169.254.169.254"), ("2002:808:808::1", True, "8.8.8.8"),
    ("64:ff9b::7f00:1", False, "127.0.0.1"), ("64:ff9b::a00:1", False, "10.0.0.1"),
    ("64:ff9b::808:808", True, "8.8.8.8"),
    ("::ffff:127.0.0.1", False, "127.0.0.1"), ("::ffff:169.254.169.254", False,
                                               "169.254.169.254"),
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", False, None),  # Teredo: refused as a whole
])
def test_address_policy_looks_inside_addresses_that_embed_ipv4(address, allowed,
                                                               embedded) -> None:
    """Tried: 6to4 (2002::/16), NAT64 (64:ff9b::/96), IPv4-mapped and Teredo addresses
    that carry a private or a public IPv4 address (before: 2002:7f00:1::1, 127.0.0.1 in
    6to4, passed as a global address). The embedded IPv4 decides, and is named."""
    ip = ipaddress.ip_address(address)
    if allowed:
        AddressPolicy().check_ip(ip)
        return
    with pytest.raises(AddressRefused) as refused:
        AddressPolicy().check_ip(ip)
    if embedded:
        assert embedded in str(refused.value)


def _job_event(name: str, job_id: str, data: dict, entry: str) -> Event:
    return Event(f"default:{entry}", entry, name, job_id, data, "default")


def test_a_job_keeps_its_own_customer_whatever_its_events_carry(client) -> None:
    """Tried: globex's job whose task reports progress details ``customer_id: "acme"``
    (what ``self.progress(..., customer_id=...)`` sends), and a job id filed for acme then
    filed again with no customer. Both reached acme's hook (a ``customer_ids: ["acme"]``
    filter) as acme's: the event's own fields beat the job's, and a second
    ``job_submitted`` of a known id kept the first job's customer. A job's identity now
    comes from its record or its ``job_submitted`` only."""
    enricher = Enricher(client)
    acme_only = {"customer_ids": ["acme"]}
    submitted = {"job_type": "echo", "priority": 10, "customer_id": "globex"}
    enricher.enrich(_job_event("job_submitted", "j3", submitted, "1-0"))
    progress = enricher.enrich(_job_event("update_job_progress", "j3", {
        "progress": 50, "customer_id": "acme", "priority": 99, "job_type": "other"}, "2-0"))
    assert (progress["customer_id"], progress["priority"], progress["job_type"]) == (
        "globex", 10, "echo")
    assert matches(acme_only, progress) is False

    enricher.enrich(_job_event("job_submitted", "r4", {**submitted, "customer_id": "acme"},
                               "3-0"))
    again = enricher.enrich(_job_event("job_submitted", "r4", {"job_type": "echo"}, "4-0"))
    done = enricher.enrich(_job_event("complete_job", "r4", {"worker_id": "w1"}, "5-0"))
    assert again["customer_id"] is None and done["customer_id"] is None
    assert matches(acme_only, done) is False


#: What a slow receiver sends: its status line, then the rest a byte every 0.25 s.
TRICKLES = {
    "body": (b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n", b"x" * 20),
    "header lines": (b"HTTP/1.1 200 OK\r\n", b"X-Slow: " + b"y" * 12 + b"\r\n"),
}


@pytest.mark.parametrize("part", TRICKLES)
def test_an_attempt_ends_at_its_timeout_however_slowly_the_answer_arrives(part: str) -> None:
    """Tried: a receiver that sends its headers at once, then its 20-byte body one byte
    every 0.25 s (5 s); and one that sends its status line, then a header line a byte
    every 0.25 s. urllib3's timeout bounds each read, so a 1 s attempt lasted the whole
    5 s and came back 200 (with the defaults, past the 40 s lease: the delivery was sent
    again beside itself); the header-line trickle outlasted even the body's fix, which
    could reach the connection only once urllib3 returned the headers. Now the attempt
    ends at 1 s, a transient failure, whichever part is slow."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    head, slow = TRICKLES[part]

    def trickle() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(head)
            for byte in slow:
                time.sleep(0.25)
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    threading.Thread(target=trickle, daemon=True).start()
    sender = Sender(AddressPolicy(allowed_networks=parse_networks("127.0.0.0/8")), timeout=1.0)
    try:
        started = time.monotonic()
        result = sender.post(f"http://127.0.0.1:{port}/hook", b"{}", {})
        took = time.monotonic() - started
    finally:
        sender.close()
        listener.close()
    assert result.status is None and "timed out after 1 s" in result.error, result
    assert took < 2.5, took
    assert decide(result, 1, RETRY)[0] == "retry"


class _LocalDns(AddressPolicy):
    """Resolves every name to 127.0.0.1 (no DNS here), remembering the names asked."""

    def __init__(self) -> None:
        super().__init__(allowed_networks=parse_networks("127.0.0.0/8"))
        object.__setattr__(self, "asked", [])

    def resolve(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        return ["127.0.0.1"]


def test_international_domain_names_go_out_in_their_idna_form() -> None:
    """Tried: deliveries to http://例え.jp:<port>/ and http://bücher.example:<port>/ (names
    that resolve to the receiver). The first raised UnicodeEncodeError out of the sender
    (in the service: an 'unexpected error' traceback, the hook's lease held and its head
    delivery never recorded, again and again); the second reached the receiver with
    ``Host: bücher.example`` in raw Latin-1, which a virtual host does not match. Both now
    go out as xn-- names, to DNS and in the Host header."""
    hosts: list[str] = []

    def serve() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            with conn:
                head = conn.recv(65536).split(b"\r\n")
                hosts.append(next(line for line in head if line.lower().startswith(b"host:"))
                             [5:].strip().decode("latin-1"))
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close"
                             b"\r\n\r\nok")

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    threading.Thread(target=serve, daemon=True).start()
    policy = _LocalDns()
    sender = Sender(policy, timeout=3.0)
    try:
        results = [sender.post(f"http://{name}:{port}/hook", b"{}", {})
                   for name in ("例え.jp", "bücher.example")]
    finally:
        sender.close()
        listener.close()
    assert [r.status for r in results] == [200, 200], results
    assert policy.asked == ["xn--r8jz45g.jp", "xn--bcher-kva.example"]
    assert hosts == [f"xn--r8jz45g.jp:{port}", f"xn--bcher-kva.example:{port}"]


@pytest.mark.parametrize(("url", "shown"), [
    ("https://alice:s3cret@hooks.example/h?x=1", "https://alice:***@hooks.example/h?x=1"),
    # The sender splits the user part at the last @, as urlsplit does: all of it is hidden.
    ("https://alice:p@ss@hooks.example:8443/h", "https://alice:***@hooks.example:8443/h"),
    ("http://alice:p%40ss@[::1]:9/h?#f", "http://alice:***@[::1]:9/h?#f"),
    ("https://:token@hooks.example", "https://:***@hooks.example"),
    ("https://ghp_token@hooks.example/h", "https://***@hooks.example/h"),
    ("https://hooks.example/h?token=abc", "https://hooks.example/h?token=abc"),
    ("http://alice:s3cret@[::1/h", "<unreadable url>"),
])
def test_a_hook_url_is_shown_with_its_password_as_stars(url: str, shown: str) -> None:
    """Tried: the URLs above in a hook's public view. Before, only the monitor masked
    the password (the API showed it); now one function does, for both."""
    assert shown_url(url) == shown
    assert unmasked(shown, url) == url  # a PUT of the URL as shown keeps the stored one
    assert unmasked("https://bob:***@other.example/", url) == "https://bob:***@other.example/"


def test_a_lease_shorter_than_the_timeout_is_refused_at_start(monkeypatch) -> None:
    """Tried: EMP_WEBHOOK_TIMEOUT_SECONDS=60 with the example's EMP_WEBHOOK_LEASE_SECONDS=40
    uncommented. The service started; a lease ending mid-request lets another dispatcher
    send the same delivery beside it (by hand, timeout 3 s, lease 1 s, a receiver answering
    in 2.5 s: the same webhook-id five times in 7 s, the next event not at all). Now the
    configuration is refused, naming both settings."""
    monkeypatch.setenv("EMP_WEBHOOK_TIMEOUT_SECONDS", "60")
    monkeypatch.setenv("EMP_WEBHOOK_LEASE_SECONDS", "40")
    with pytest.raises(ValueError, match="EMP_WEBHOOK_LEASE_SECONDS .40. must be longer than "
                                         "EMP_WEBHOOK_TIMEOUT_SECONDS .60."):
        WebhookConfig.from_env()
    monkeypatch.delenv("EMP_WEBHOOK_LEASE_SECONDS")
    assert WebhookConfig.from_env().lease_seconds == 70


def test_a_kept_alive_connection_the_receiver_closed_is_not_a_failed_attempt() -> None:
    """Tried: a receiver that keeps its connection alive after a first delivery, then closes
    it as the next request arrives, unanswered (its idle timeout running out just then:
    Node's 5 s, nginx's 75 s). That attempt failed, "RemoteDisconnected", a consecutive
    failure of the hook and a retry a second later. Now it is sent again at once on a new
    connection and answered; a fresh connection closed unanswered still fails."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: list[int] = []  # the connection number of each request received
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    def read_request(conn: socket.socket, number: int) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += conn.recv(65536)
        seen.append(number)

    def serve() -> None:
        first, _ = listener.accept()
        with first:
            read_request(first, 1)
            first.sendall(ok)
            read_request(first, 1)  # the next one, on the kept-alive connection: closed
        for number in (2, 3):
            conn, _ = listener.accept()
            with conn:
                read_request(conn, number)
                if number == 2:
                    conn.sendall(ok)

    threading.Thread(target=serve, daemon=True).start()
    sender = Sender(AddressPolicy(allowed_networks=parse_networks("127.0.0.0/8")), timeout=3.0)
    try:
        results = [sender.post(f"http://127.0.0.1:{port}/hook", b"{}", {}) for _ in range(3)]
    finally:
        sender.close()
        listener.close()
    assert [r.status for r in results[:2]] == [200, 200], results
    assert seen == [1, 1, 2, 3]
    assert results[2].status is None and "RemoteDisconnected" in results[2].error, results[2]
