"""The monitor's job page shows where the router filed a job and why (real Chromium)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from emp_tasks.producer import get_job, submit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "capability_router"))
from test_routing import IMAGE, POOLS  # noqa: E402


@pytest.mark.timeout(120)
def test_the_job_page_shows_the_routing_decision(
        browser: Any, start_server: Callable[..., Any], app: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "pools.toml"
    path.write_text(POOLS)
    monkeypatch.setenv("EMP_POOLS_FILE", str(path))
    job = submit("simulation", IMAGE, app=app)  # no worker anywhere: it waits in standard
    assert get_job(job.id, app=app)["pool"] == "standard"
    monitor = start_server("monitor")
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{monitor.base}/jobs/{job.id}")
        page.wait_for_selector("#job-routing-box:not(.d-none)", timeout=20_000)
        text = page.inner_text("#job-routing")
        assert text.startswith("standard · predicted 10 s · predicted 10 s fits standard")
        rows = page.eval_on_selector_all(
            "#job-routing-alternatives tbody tr",
            "rows => rows.map(r => [...r.cells].map(c => c.textContent))")
        assert rows == [["fast", "no live worker", "predicted 10 s is outside 0-5 s"],
                        ["heavy", "no live worker", "predicted 10 s is outside 30-3600 s"]]
    finally:
        context.close()
