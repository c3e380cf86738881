"""Machine records on a real Redis Cluster: reports, a clean stop and the reaper (each a
MULTI over the live set, the ended set and the record, so they share one slot)."""

from __future__ import annotations

import pytest
from cluster_fixtures import *  # noqa: F403 - the cluster fixtures

from capability_router.functions import QueueFunctions
from capability_router.jobspec import JobSpec
from capability_router.keys import NAMESPACES_KEY
from capability_router.profile import WorkerProfile
from capability_router.registry import WorkerRegistry
from machine.gpus import GpuInventory
from machine.reaper import reap_gone_machines
from machine.runtime import MachineRuntime
from machine.settings import MachineSettings
from machine.status import MACHINES_KEY, now_ms, publish, publish_offline, read_machine
from machine.views import program_views

pytestmark = pytest.mark.slow


def report(machine_id: str, age_ms: int = 0) -> dict:
    return {"machine_id": machine_id, "status": "online", "last_report": now_ms() - age_ms,
            "gpus": [], "workers": [], "services": []}


def test_machine_reports_stop_and_reaping_work_on_a_cluster(cclient, pools) -> None:
    pool = pools[0]
    publish(cclient, report("box-a"), emit=True)
    assert read_machine(cclient, "box-a")["status"] == "online"
    publish_offline(cclient, report("box-a"), retention_seconds=60)
    assert read_machine(cclient, "box-a")["status"] == "offline"

    queue = QueueFunctions(cclient, pool)
    cclient.sadd(NAMESPACES_KEY, pool)  # as a producer's first job there does
    profile = WorkerProfile(worker_id="dead-w", machine_id="dead", services=["simulation"])
    queue.register_worker(profile)
    queue.enqueue("job-1", JobSpec.from_fields({"service_required": "simulation"}), "{}")
    claimed = queue.claim(profile.signature, profile.worker_id, 600_000)
    assert claimed.job_id == "job-1"
    WorkerRegistry(cclient).heartbeat(profile.as_dict(), [pool], ["job-1"], 600_000, first=True)
    publish(cclient, report("dead", age_ms=40_000), emit=False)
    results = reap_gone_machines(cclient, stale_after_seconds=30)
    assert results == [{"machine_id": "dead", "workers": ["dead-w"], "requeued_jobs": ["job-1"]}]
    assert read_machine(cclient, "dead")["status"] == "gone"
    assert cclient.hget(queue.keys.job("job-1"), "status") == "pending"


def test_emp_machine_reports_and_reaps_through_a_node_without_its_slot(cluster, cclient,
                                                                       tmp_path) -> None:  # noqa: ANN001
    """``emp machine``'s own client follows the cluster switch like every other process.

    Tried: a machine whose URL names a master that does not hold the machines' slot
    (a plain client there gets MOVED for every report); its report, its health view
    of its workers and its reaper must work all the same."""
    slot_port = cluster.port_of_slot(cclient.keyslot(MACHINES_KEY))
    other = next(port for port in cluster.master_ports() if port != slot_port)
    settings = MachineSettings(machine_id="box-c", workers="simulation:1",
                               redis_url=f"redis://127.0.0.1:{other}/0", run_dir=tmp_path)
    runtime = MachineRuntime(settings, GpuInventory(source="none"))
    try:
        runtime._publish(emit=True)
        record = read_machine(cclient, "box-c")
        assert record["status"] == "online" and record["machine_id"] == "box-c"
        assert [w["name"] for w in record["workers"]] == ["simulation-0"]
        publish(cclient, report("gone-box", age_ms=60_000), emit=False)
        runtime._reap()
        assert read_machine(cclient, "gone-box")["status"] == "gone"
        assert program_views(runtime.plan, {}, runtime.redis)[0]["role"] == "worker"
    finally:
        runtime.redis.close()
