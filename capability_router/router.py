"""Celery router that sends each job to its pool's queue namespace."""

from __future__ import annotations

from typing import Any

from capability_router.jobspec import HEADER
from capability_router.keys import DEFAULT_NAMESPACE


class CapabilityRouter:
    """Route a task message to the namespace named by its job spec's pool.

    The pool comes from the job (``pool=`` on submit, or ``requirements.pool``
    folded into it by the job spec); tasks sent without a spec go to
    ``default_queue``.
    """

    def __init__(self, default_queue: str = DEFAULT_NAMESPACE) -> None:
        self.default_queue = default_queue

    def __call__(
        self, name: str, args: Any, kwargs: Any, options: dict[str, Any],
        task: Any = None, **kw: Any,
    ) -> dict[str, str]:
        spec = (options.get("headers") or {}).get(HEADER)
        return {"queue": (spec or {}).get("pool") or self.default_queue}
