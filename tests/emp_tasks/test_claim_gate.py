"""The worker's claim gate answers within its time limit, whatever the service does."""

from __future__ import annotations

import socket
import threading
import time

from emp_tasks.claim_gate import BoundedClaimGate
from machine.connectors import make_connector
from machine.connectors.base import ClaimGate


def test_a_service_that_accepts_but_never_answers_closes_the_gate_in_time() -> None:
    """Tried: a ComfyUI connector's health check against a port that accepts connections
    and never replies (a hung server), asked twice with a 0.5 s limit. Each ask answers
    closed within the limit, and the second waits for the first check, starting none."""
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)  # the kernel completes connections; nothing ever reads or replies
    try:
        url = f"http://127.0.0.1:{hung.getsockname()[1]}"
        connector = make_connector("comfyui", {"url": url})
        gate = BoundedClaimGate(connector.claim_gate, timeout=0.5)
        for _ in range(2):
            started = time.monotonic()
            answer = gate()
            assert time.monotonic() - started < 2.0
            assert not answer.open and answer.reason == "health check did not answer within 0.5s"
        checks = [t for t in threading.enumerate() if t.name.startswith("emp-claim-gate")]
        assert len(checks) == 1
    finally:
        hung.close()


def test_answers_in_time_pass_through() -> None:
    """Tried: a check that answers at once, open then closed, then one that raises."""
    answers = iter([ClaimGate(True), ClaimGate(False, "down")])
    gate = BoundedClaimGate(lambda: next(answers), timeout=1)
    assert gate() == ClaimGate(True)
    assert gate() == ClaimGate(False, "down")
    gate = BoundedClaimGate(lambda: 1 / 0, timeout=1)
    assert gate() == ClaimGate(False, "health check failed: ZeroDivisionError: division by zero")


def test_an_open_answer_stands_for_open_for_seconds_a_closed_one_never() -> None:
    """Tried: 50 asks back to back (a worker claiming short jobs) with open_for=30 s:
    before, each ask probed the service (a thread and an HTTP request per claim)."""
    calls: list[bool] = []

    def check() -> ClaimGate:
        calls.append(True)
        return ClaimGate(len(calls) != 1, "down" if len(calls) == 1 else "")

    gate = BoundedClaimGate(check, timeout=1, open_for=30)
    assert gate() == ClaimGate(False, "down")  # closed: not kept, asked again next time
    assert all(gate().open for _ in range(50))
    assert len(calls) == 2
