"""The ``text`` job type: the service the shipped pools file (conf/pools.toml) and the
simulator's synthetic day route, run by a real worker."""

from __future__ import annotations

from typing import Any

import pytest

from capability_router.pools import DEFAULT_POOLS_FILE, POOLS_FILE_ENV, load_pools_file
from emp_tasks.producer import get_job, job_events, services, submit


def test_every_service_the_shipped_pools_file_names_is_a_job_type(app: Any) -> None:
    """Tried: the services conf/pools.toml lists for its pools against the app's job
    types. Before, ``text`` (in fast and standard) was none: a copy of the example
    routed a service no worker could run and ``submit("text", ...)`` was refused as an
    unknown service. Now every service it names is one."""
    named = {s for pool in load_pools_file(DEFAULT_POOLS_FILE).pools.values()
             for s in pool.services} - {"*"}
    assert named <= set(services(app)), named - set(services(app))


@pytest.mark.timeout(90)
def test_a_text_job_is_routed_by_the_shipped_pools_file_and_runs(
        app: Any, start_worker: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 250-token text job, routing on with conf/pools.toml and a text worker serving
    fast: filed there (the file's text prior, 1 s a 500-token unit: 0.5 s predicted,
    fits fast; before it had none and the default 20 s a unit sent it to standard), it
    reports progress and completes with its tokens; a token count out of range fails
    the job naming it."""
    monkeypatch.setenv(POOLS_FILE_ENV, str(DEFAULT_POOLS_FILE))
    start_worker("text-1", wait=False, WORKER_SERVICES="text",
                 WORKER_POOLS="fast").wait_ready("fast")
    result = submit("text", {"tokens": 250, "prompt": "hello"}, app=app)
    done = result.get(timeout=30)
    assert (done["tokens"], done["prompt"], done["worker"].split("@")[0]) == (
        250, "hello", "text-1")
    record = get_job(result.id, app=app)
    assert record["pool"] == "fast" and record["status"] == "completed", record
    assert "update_job_progress" in [e["event"] for e in job_events(result.id, app=app)]
    bad = submit("text", {"tokens": 0}, max_retries=0, app=app)
    with pytest.raises(ValueError, match="tokens must be a whole number"):
        bad.get(timeout=30)
    # A rate that would run 500 tokens for ~16 years, and one that is no number.
    slow = submit("text", {"tokens": 500, "tokens_per_second": 1e-6}, max_retries=0, app=app)
    with pytest.raises(ValueError, match="give a run of at most 604800 s"):
        slow.get(timeout=30)
    word = submit("text", {"tokens_per_second": "fast"}, max_retries=0, app=app)
    with pytest.raises(ValueError, match="tokens_per_second must be a number, got 'fast'"):
        word.get(timeout=30)
