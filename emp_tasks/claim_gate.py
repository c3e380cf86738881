"""The worker's claim gate: its connector's ``claim_gate``, answered within a time limit.

The transport asks the gate on the worker's event loop, which also renews the
leases of running jobs. A service that accepts connections but does not
answer (ComfyUI busy loading a model, a hung proxy) would hold that loop for
the HTTP client's whole timeout, so the connector's check runs on a helper
thread and one that has not answered within ``timeout`` seconds closes the
gate. The next ask waits for that same check again rather than starting
another, so a hung service never piles up threads. An open answer is kept
``open_for`` seconds, so a worker claiming back to back (short jobs) probes
its service at most that often; a closed one is never kept.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from machine.connectors.base import ClaimGate


class BoundedClaimGate:
    """Call ``gate`` (a connector's ``claim_gate``) at most ``timeout`` seconds per ask.

    :param gate: returns a ClaimGate; may block on the network.
    :param timeout: seconds an ask waits for it before answering closed.
    :param open_for: seconds an open answer stands without a new check (0: none).
    """

    def __init__(self, gate: Callable[[], ClaimGate], timeout: float = 5.0,
                 open_for: float = 0.0) -> None:
        self.gate = gate
        self.timeout = float(timeout)
        self.open_for = float(open_for)
        self._pending: Future[ClaimGate] | None = None
        self._open_until = 0.0

    def __call__(self) -> ClaimGate:
        if time.monotonic() < self._open_until:
            return ClaimGate(True)
        answer = self._ask()
        if answer.open and self.open_for > 0:
            self._open_until = time.monotonic() + self.open_for
        return answer

    def __json__(self) -> str:
        """How ``celery inspect stats`` shows it (it is in the transport options)."""
        return f"claim gate (answers within {self.timeout:g}s, open for {self.open_for:g}s)"

    def _ask(self) -> ClaimGate:
        if self._pending is None:
            self._pending = self._start()
        try:
            answer = self._pending.result(timeout=self.timeout)
        except TimeoutError:
            return ClaimGate(False, f"health check did not answer within {self.timeout:g}s")
        except Exception as exc:  # noqa: BLE001 - a broken check closes the gate
            answer = ClaimGate(False, f"health check failed: {type(exc).__name__}: {exc}")
        self._pending = None
        return answer

    def _start(self) -> Future[ClaimGate]:
        """Run one check on a daemon thread: a hung one must not hold up the worker's exit."""
        future: Future[ClaimGate] = Future()

        def check() -> None:
            try:
                future.set_result(self.gate())
            except BaseException as exc:  # handed to the asker
                future.set_exception(exc)

        threading.Thread(target=check, name="emp-claim-gate", daemon=True).start()
        return future
