"""The monitor's cancel refuses a repeated ``terminate``, and its JSON reads a repeated
parameter, as the REST API refuses repeats.

A real ``emp monitor`` over plain HTTP, a real Redis, a job left pending (it asks for a
99 GB GPU no worker has).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import requests

from emp_tasks.producer import get_job, submit


@pytest.mark.timeout(90)
@pytest.mark.parametrize("given", [("no", "yes"), ("yes", "no"), ("1", "1")])
def test_a_repeated_terminate_is_a_400_naming_it_and_cancels_nothing(
        start_server: Callable[..., Any], app: Any, given: tuple[str, str]) -> None:
    """Tried: ``POST /emp/api/jobs/<id>/cancel?terminate=no&terminate=yes`` (and the other
    way round, and the same value twice). Before, the monitor took the last value (Tornado's
    ``get_query_argument``): 200, the job cancelled, terminated or not by whichever came
    last. Now a 400 naming ``terminate`` in the REST API's words (``webapp.query``), the
    job left pending; sent once, the cancel goes through."""
    monitor = start_server("monitor")
    job = submit("simulation", {"steps": 1}, requirements={"hardware": {"gpu_memory_gb": 99}},
                 app=app)
    path = f"{monitor.base}/emp/api/jobs/{job.id}/cancel"
    reply = requests.post(path, params=[("terminate", value) for value in given], timeout=10)
    assert reply.status_code == 400, reply.text
    assert reply.json() == {"success": False, "error": "terminate: given 2 times; send it "
                                                       "once (it takes one value)"}, reply.text
    assert get_job(job.id, app=app)["status"] == "pending"
    reply = requests.post(path, params={"terminate": given[-1]}, timeout=10)
    assert reply.status_code == 200 and reply.json()["status"] == "cancelled", reply.text


REPEATED_READS = [  # path, the parameter given twice, its two values
    ("/emp/api/jobs", "status", ("pending", "failed")),
    ("/emp/api/jobs", "limit", ("5", "50")),
    ("/emp/api/machines", "view", ("page", "full")),
    ("/emp/api/pools/default/metrics", "window", ("1h", "24h")),
]


@pytest.mark.timeout(90)
def test_a_repeated_parameter_of_a_json_read_is_a_400_naming_it(
        start_server: Callable[..., Any], app: Any) -> None:
    """Tried: ``GET /emp/api/jobs?status=pending&status=failed`` and a repeat of each other
    parameter the monitor's JSON reads take. Before, Tornado's ``get_query_argument`` took
    the last value: 200, listing the failed jobs alone where the REST API's listing answers
    400. Now a 400 naming the parameter in the REST API's words; sent once, a 200."""
    monitor = start_server("monitor")
    submit("echo", {}, app=app)  # the default pool exists
    for path, name, values in REPEATED_READS:
        reply = requests.get(f"{monitor.base}{path}", params=[(name, v) for v in values],
                             timeout=10)
        assert reply.status_code == 400, (path, reply.text)
        assert reply.json() == {"success": False, "error": f"{name}: given 2 times; send "
                                "it once (it takes one value)"}, reply.text
        reply = requests.get(f"{monitor.base}{path}", params={name: values[0]}, timeout=10)
        assert reply.status_code == 200, (path, reply.text)
