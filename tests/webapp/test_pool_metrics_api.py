"""``/api/pools/<name>/metrics`` on a real ``emp api``: its shape, its document, its errors."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from rest_helpers import Api

from capability_router.functions import Claimed, QueueFunctions
from capability_router.jobspec import JobSpec
from capability_router.profile import WorkerProfile
from webapp.api.validation import build_validator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "capability_router"))
from test_routing import POOLS  # noqa: E402


@pytest.mark.timeout(60)
def test_pool_metrics_shape_windows_errors_and_document(client, start_server,
                                                        tmp_path: Path) -> None:
    pools_path = tmp_path / "pools.toml"
    pools_path.write_text(POOLS)
    api = Api(start_server("api", EMP_POOLS_FILE=str(pools_path)).base)
    # One job claimed and completed in "default" now, through the real functions.
    queue = QueueFunctions(client, "default")
    profile = WorkerProfile.from_dict({"worker_id": "w1", "services": ["echo"]})
    queue.register_worker(profile)
    queue.enqueue("j1", JobSpec(service="echo"), "{}")
    claimed = queue.claim(profile.signature, "w1", 60_000)
    assert isinstance(claimed, Claimed)
    queue.start("j1", claimed.attempt)
    assert queue.complete("j1", claimed.attempt, {"ok": True}) == "ok"

    response = api.get("/api/pools/default/metrics")
    assert response.status_code == 200, response.text
    body = response.json()
    document = api.get("/api/openapi.json").json()
    assert not list(build_validator(document, "PoolMetrics").iter_errors(body))
    assert body["pool"] == "default" and body["window"] == "1h"
    series = body["series"]
    minute = int(time.time()) // 60 * 60_000
    assert len(series["t"]) == 60 and series["t"][-1] in (minute, minute - 60_000)
    assert series["t"] == [series["t"][0] + i * 60_000 for i in range(60)]
    assert sum(series["claims"]) == 1 and sum(series["throughput"]) == 1
    assert sum(series["hits"]["none"]) == 1 and body["totals"]["hit_rate"] is None
    assert body["now"] == {"queue_depth": 0, "busy": 0, "live_workers": 0, "desired": None}
    day = api.get("/api/pools/default/metrics", params={"window": "24h"}).json()
    assert len(day["series"]["t"]) == 1440 and day["totals"]["throughput"] == 1
    # A configured pool nothing ran in yet: empty series, not an error.
    heavy = api.get("/api/pools/heavy/metrics").json()
    assert sum(heavy["series"]["claims"]) == 0 and set(heavy["series"]["queue_depth"]) == {None}

    unknown = api.get("/api/pools/nowhere/metrics")
    assert unknown.status_code == 404
    assert unknown.json() == {"success": False, "error": (
        "no pool 'nowhere': known pools are fast, standard, heavy, default")}
    window = api.get("/api/pools/default/metrics", params={"window": "2h"})
    assert window.status_code == 400 and "window" in window.json()["error"]
    assert '"1h", "24h"' in window.json()["error"]  # the allowed windows, in JSON's quotes
    bad = api.get("/api/pools/no%20spaces/metrics")
    assert bad.status_code == 400 and "invalid pool name" in bad.json()["error"]
    operation = document["paths"]["/api/pools/{name}/metrics"]["get"]
    assert operation["operationId"] == "poolMetrics"
