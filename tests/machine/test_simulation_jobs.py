"""emp.simulation jobs through the simulation connector on a real worker: failures decide retry."""

from __future__ import annotations

import pytest
from machine_helpers import wait_until

from emp_tasks.producer import get_job, submit


@pytest.mark.timeout(90)
def test_simulated_failures_retry_or_fail_by_their_class(app, start_worker) -> None:
    start_worker("sim-1")
    payload = {"steps": 2, "duration": 0.02, "failure_rate": 1}
    memory = submit("simulation", {**payload, "failure_type": "memory"}, max_retries=1, app=app)
    model = submit("simulation", {**payload, "failure_type": "model"}, app=app)
    fine = submit("simulation", {"steps": 2, "duration": 0.02, "note": "kept"}, app=app)
    wait_until(lambda: {get_job(j.id, app=app)["status"] for j in (memory, model)} == {"failed"},
               timeout=60, message="both failing jobs to fail")
    memory_record, model_record = get_job(memory.id, app=app), get_job(model.id, app=app)
    assert memory_record["attempts"] == 2 and "[memory] CUDA out of memory" in \
        memory_record["last_error"]
    assert model_record["attempts"] == 1 and "[model]" in model_record["last_error"]
    result = fine.get(timeout=30)
    assert result["success"] and result["steps"] == 2 and result["payload"] == {"note": "kept"}
