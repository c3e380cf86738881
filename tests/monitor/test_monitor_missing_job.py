"""The job page of an id no job has: a 404 that says so, in the monitor's layout."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import requests

from emp_tasks.producer import submit


def test_the_page_of_a_job_that_does_not_exist_is_a_404_saying_so(
        start_server: Callable[..., Any], app: Any) -> None:
    """Tried: ``/jobs/no-such-job`` on a real monitor. It answered 200 with the job page's
    shell (status "…", buttons disabled); only the browser console showed the 404 of its
    JSON read. Now the page is a 404 in the monitor's layout saying no job has that id,
    the JSON read behind it still a 404, and a real job's page still a 200."""
    monitor = start_server("monitor")
    page = requests.get(monitor.base + "/jobs/no-such-job", timeout=10)
    assert page.status_code == 404
    assert 'id="emp-jobs-page"' in page.text  # the monitor's layout, Jobs tab
    assert "Job <code>no-such-job</code> does not exist" in page.text
    assert 'id="job-actions"' not in page.text  # no buttons for a job that is not there
    assert page.headers["X-Frame-Options"] == "DENY"  # the pages' headers, as on a 200
    api = requests.get(monitor.base + "/emp/api/jobs/no-such-job", timeout=10)
    assert api.status_code == 404 and api.json()["success"] is False

    job = submit("simulation", {"steps": 1}, requirements={"hardware": {"gpu_memory_gb": 99}},
                 app=app)
    real = requests.get(monitor.base + f"/jobs/{job.id}", timeout=10)
    assert real.status_code == 200 and 'id="job-actions"' in real.text
