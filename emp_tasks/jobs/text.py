"""``text``: a stand-in text-generation job, as ``simulation`` stands in for a GPU job.

The pools example (``conf/pools.toml``) routes ``text`` jobs to its ``fast`` and
``standard`` pools, and the simulator's synthetic day is mostly such jobs (the
original system's short LLM calls); this job type makes that service one a worker
runs and a submit can name. It produces ``tokens`` placeholder tokens at
``tokens_per_second`` (500 by default: a 500-token job runs about 1 s, as the
simulator's text jobs do), reporting progress, and stops once cancelled.
"""

from __future__ import annotations

import time
from typing import Any

from celery import shared_task

#: Size features for the duration model: a work unit is 500 tokens (the simulator's).
SIZE_FEATURES = {"tokens": 500}
#: Tokens a job may ask for: a typo of a few zeros should fail, not run for hours.
MAX_TOKENS = 1_000_000
#: Longest run a job may ask for (a week): a rate of 1e-6 ran for ~16 years.
MAX_SECONDS = 604_800


@shared_task(bind=True, name="emp.text", service="text", duration_features=SIZE_FEATURES)
def text(self: Any, tokens: int = 500, tokens_per_second: float = 500.0,
         prompt: str = "", **payload: Any) -> dict[str, Any]:
    """Produce ``tokens`` tokens over ``tokens / tokens_per_second`` seconds, reporting
    progress every tenth; ValueError (the job fails) for a count or rate out of range
    (a run over a week included)."""
    if isinstance(tokens, bool) or not isinstance(tokens, int) or not 0 < tokens <= MAX_TOKENS:
        raise ValueError(f"tokens must be a whole number from 1 to {MAX_TOKENS}, got {tokens!r}")
    rate = _rate(tokens_per_second)
    if not rate > 0 or tokens / rate > MAX_SECONDS:
        raise ValueError(f"tokens_per_second must be above 0 and give a run of at most "
                         f"{MAX_SECONDS} s ({tokens} tokens), got {tokens_per_second!r}")
    started = time.monotonic()
    for tenth in range(1, 11):
        deadline = started + tokens / rate * tenth / 10
        while (left := deadline - time.monotonic()) > 0:
            self.check_cancelled()
            time.sleep(min(0.05, left))
        self.progress(tenth * 10, f"{tokens * tenth // 10} tokens")
    return {"text": " ".join(["token"] * min(tokens, 50)), "tokens": tokens,
            "prompt": prompt, "seconds": round(time.monotonic() - started, 3),
            "worker": self.request.hostname}


def _rate(value: Any) -> float:
    """``tokens_per_second`` as a number; ValueError naming it (``float("fast")``'s own
    error named nothing)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"tokens_per_second must be a number, got {value!r}") from None
