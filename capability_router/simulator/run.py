"""``emp simulate`` as a plain function: pick the scenario, run each policy, write outputs.

It starts its own Redis (no persistence, a throwaway directory) unless a URL
is given; the database it uses is emptied before each policy, so never point
it at a Redis that holds anything of value.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from capability_router.errors import InvalidJob
from capability_router.pools import DEFAULT_POOLS_FILE, PoolsFile, load_pools_file
from capability_router.routing import Router
from capability_router.simulator.engine import Simulation
from capability_router.simulator.metrics import RunRecord
from capability_router.simulator.policies import POLICIES, policy
from capability_router.simulator.report import charts, json_line, markdown_table
from capability_router.simulator.trace import Scenario, load_trace, synthetic_day

#: The one-hour slice of ``--quick``: the afternoon peak.
QUICK_START_HOUR = 13.0


def scenario_for(trace: str | None, day: bool, quick: bool, scale: float,
                 seed: int) -> tuple[Scenario, list[Any] | None]:
    """The scenario to run and the history its forecast may learn from first."""
    if trace:
        return load_trace(trace, scale), None
    if quick and not day:
        scenario = synthetic_day(seed, scale, QUICK_START_HOUR, 1.0)
        history = synthetic_day(seed + 1000, scale, QUICK_START_HOUR - 2, 3.0).jobs
    else:
        scenario = synthetic_day(seed, scale)
        history = synthetic_day(seed + 1000, scale).jobs
    return scenario, history


def refuse_unrunnable(scenario: Scenario, pools_file: PoolsFile) -> None:
    """Stop before any policy runs on a job no pool can run, naming it.

    The router's policies met it only at its arrival, and ``uniform`` (no router)
    never: its machines are the pools' types too, so the job waited the whole run.
    """
    for job in scenario.jobs:
        gpu = (job.requirements.get("hardware") or {}).get("gpu_memory_gb")
        gpu = float(gpu) if isinstance(gpu, (int, float)) and not isinstance(gpu, bool) else None
        notes = {pool.name: Router.why_not(pool, job.service, gpu)
                 for pool in pools_file.pools.values()}
        if all(notes.values()):
            raise InvalidJob(
                f"trace job {job.id!r} (service {job.service}, at {job.at:g} s): "
                "no pool can run this job: " + "; ".join(
                    f"{name}: {(note or '').removeprefix('cannot run: ')}"
                    for name, note in notes.items()))


def simulate(redis_url: str | None = None, trace: str | None = None, day: bool = True,
             quick: bool = False, scale: float = 1.0, seed: int = 1,
             policies: list[str] | None = None, out: str | Path = "sim-out",
             pools_path: str | Path | None = None,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the policies on one scenario; writes summary.json, table.md and charts in ``out``."""
    names = policies or list(POLICIES)
    chosen = [policy(name) for name in names]
    pools_file = load_pools_file(pools_path or DEFAULT_POOLS_FILE)
    scenario, history = scenario_for(trace, day, quick, scale, seed)
    refuse_unrunnable(scenario, pools_file)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log(f"scenario: {len(scenario.jobs)} jobs, {scenario.start / 3600:g}-"
        f"{scenario.end / 3600:g} h, fleet {min(scenario.fleet_by_hour)}-"
        f"{max(scenario.fleet_by_hour)} machines, {len(scenario.model_gb)} models")
    server = None
    if redis_url is None:
        from emp_tasks.local_redis import LocalRedis

        server = LocalRedis(tempfile.mkdtemp(prefix="emp-sim-"), appendonly=False).start()
        redis_url = server.url
    records: list[RunRecord] = []
    summaries = []
    try:
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        for chosen_policy in chosen:
            sim = Simulation(client, scenario, chosen_policy, pools_file,
                             history=history, progress=log)
            result = sim.run()
            records.append(result.record)
            summaries.append(result.summary)
            log(f"[{chosen_policy.name}] done in {result.record.wall_seconds:.1f} s: "
                f"{result.summary['function_calls']} calls")
        client.flushdb(asynchronous=True)  # (as before each policy: see Simulation.prepare)
        client.close()
    finally:
        if server is not None:
            server.stop(kill=True)
    meta = {"seed": seed, "scale": scale, "trace": trace,
            "slice": "quick" if quick and not day and not trace else "day",
            "jobs": len(scenario.jobs)}
    line = json_line(summaries, meta)
    table = markdown_table(summaries)
    (out / "summary.json").write_text(line + "\n")
    (out / "table.md").write_text(table + "\n")
    written = charts(records, out)
    if not written:
        log("charts skipped: matplotlib is not installed (pip install 'emp-job-queue[sim]')")
    return {"json": line, "table": table, "charts": [str(p) for p in written],
            "records": records, "summaries": summaries}
