"""``emp api`` says the pools file's unknown-service warning once, at its start, in its master.

A real ``emp api`` (gunicorn, two processes) with a pools file naming a service no job
type of the app has (``echoo``, a typo of ``echo``): its ``fast`` pool would never get
an echo job.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "capability_router"))
from test_routing import POOLS  # noqa: E402

#: What the warning says of the typo (capability_router.pools.unknown_services_warning).
SAID = "service(s) echoo named in pools' services"


@pytest.mark.timeout(120)
def test_the_unknown_service_warning_is_said_once_at_start_by_the_master(
        start_server, tmp_path: Path) -> None:  # noqa: ANN001
    """Tried: ``EMP_API_PROCESSES=2 emp api`` with ``services = ["simulation", "echoo"]``
    in a pool, then 8 jobs submitted, each on a connection of its own (so both processes
    route some). Before: nothing at start; the warning came when a process routed its
    first job, once per gunicorn worker process (here twice, after "Booting worker").
    Now: once, before gunicorn boots its workers, and not again when they route."""
    pools = tmp_path / "pools.toml"
    pools.write_text(POOLS.replace('services = ["simulation", "echo"]',
                                   'services = ["simulation", "echoo"]', 1))
    assert "echoo" in pools.read_text()
    server = start_server("api", EMP_POOLS_FILE=str(pools), EMP_API_PROCESSES="2")
    at_start = server.log()
    assert at_start.count(SAID) == 1, at_start
    assert at_start.index(SAID) < at_start.index("Booting worker"), at_start
    # The master looks the job types up without importing the task modules itself: urllib3
    # imported before a gevent worker patches would be named in gevent's MonkeyPatchWarning.
    assert "urllib3" not in at_start, at_start
    for _ in range(8):  # requests.post: a new connection each, spread over the processes
        response = requests.post(server.base + "/api/jobs", timeout=30,
                                 json={"service_required": "simulation",
                                       "payload": {"steps": 1}})
        assert response.status_code == 201, response.text
    log = server.log()
    assert log.count(SAID) == 1, log
