"""The simulator: deterministic, right on a trace worked by hand, preloads ahead of demand."""

from __future__ import annotations

import json

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from capability_router.pools import DEFAULT_POOLS_FILE, load_pools_file, parse_pools
from capability_router.simulator import POLICIES, Simulation, TraceJob, synthetic_day
from capability_router.simulator.trace import Scenario, load_trace, write_trace

ONE_POOL = """
[pools.one]
gpu = true
gpu_memory_gb = [16, 24]
storage_gb = 100
durations_seconds = [0, 3600]
services = ["text", "simulation"]
price_per_hour = 1.0
"""


def one_pool():  # noqa: ANN201 - PoolsFile
    return parse_pools(ONE_POOL, "one-pool.toml")


def test_same_seed_same_result(client: redis.Redis) -> None:
    """Every policy, run twice on the same seed, gives the same figures and claim order."""
    pools_file = load_pools_file(DEFAULT_POOLS_FILE)
    scenario = synthetic_day(seed=7, scale=0.3, start_hour=13, hours=0.25)
    history = synthetic_day(seed=1007, scale=0.3, start_hour=12, hours=1.5).jobs
    assert len(scenario.jobs) > 100
    for policy in POLICIES.values():
        runs = []
        for _ in range(2):
            result = Simulation(client, scenario, policy, pools_file, history=history).run()
            summary = {k: v for k, v in result.summary.items() if k != "wall_seconds"}
            runs.append((summary, result.record.claim_order, result.record.residency_log))
        assert runs[0] == runs[1], policy.name
        assert runs[0][0]["jobs"] == len(scenario.jobs)


def test_synthetic_day_is_a_function_of_its_seed() -> None:
    first = synthetic_day(seed=3, scale=0.2, start_hour=10, hours=1)
    again = synthetic_day(seed=3, scale=0.2, start_hour=10, hours=1)
    other = synthetic_day(seed=4, scale=0.2, start_hour=10, hours=1)
    assert [j.as_dict() for j in first.jobs] == [j.as_dict() for j in again.jobs]
    assert [j.as_dict() for j in first.jobs] != [j.as_dict() for j in other.jobs]
    assert len(first.model_gb) >= 50
    assert all(2 <= gb <= 25 for gb in first.model_gb.values())
    assert min(first.fleet_by_hour) == 2 and max(first.fleet_by_hour) == 10


def test_trace_worked_by_hand(client: redis.Redis, tmp_path) -> None:
    """2 idle workers, 3 jobs without models (no load time), arriving at 1, 2 and 3 s,
    running 10, 10 and 5 s. A woken worker claims 5 ms after the enqueue (WAKE_MS):
    a waits 0.005 s, b 0.005 s; c waits for the first to finish, at 1.005 + 10 s,
    so 8.005 s. Claims in arrival order; the last ends at 11.005 + 5 s."""
    jobs = [TraceJob("a", 1.0, "text", 10.0), TraceJob("b", 2.0, "text", 10.0),
            TraceJob("c", 3.0, "text", 5.0)]
    path = tmp_path / "hand.jsonl"
    write_trace(jobs, path)
    scenario = load_trace(path)
    scenario.fleet_by_hour = [2] * 24
    result = Simulation(client, scenario, POLICIES["uniform"], one_pool()).run()
    record = result.record
    assert record.claim_order == ["a", "b", "c"]
    waits = {job_id: round(o.started - o.arrival, 3) for job_id, o in record.jobs.items()}
    assert waits == {"a": 0.005, "b": 0.005, "c": 8.005}
    assert record.jobs["c"].completed == pytest.approx(16.005)
    assert record.jobs["a"].worker != record.jobs["b"].worker
    assert record.jobs["c"].worker == record.jobs["a"].worker
    assert result.summary["completion"] == 1.0
    assert result.summary["wait_p50_s"] == 0.005 and result.summary["wait_p99_s"] == 8.005
    # The record in Redis went through the functions, in virtual time.
    record_c = client.hgetall("emp:{default}:job:c")
    assert record_c["status"] == "completed"
    assert int(record_c["started_at"]) - int(record_c["created_at"]) == 8005


def test_model_load_counts_in_the_wait(client: redis.Redis) -> None:
    """One worker, one job on a 1 GB model it must download: 1/0.25 s download plus
    1/1.0 s disk load = 5 s, then the run; the second job of that model finds it warm."""
    jobs = [TraceJob("cold", 1.0, "text", 2.0, models=["m"]),
            TraceJob("warm", 20.0, "text", 2.0, models=["m"])]
    scenario = Scenario(jobs, {"m": 1.0}, [1] * 24, 0.0, 21.0)
    result = Simulation(client, scenario, POLICIES["uniform"], one_pool()).run()
    cold, warm = result.record.jobs["cold"], result.record.jobs["warm"]
    assert cold.started - cold.arrival == pytest.approx(5.005)
    assert not cold.warm and warm.warm
    assert warm.started - warm.arrival == pytest.approx(0.005)
    assert result.summary["downloads"] == 1 and result.summary["download_gb"] == 1.0
    assert client.hget("emp:{default}:models:one-1", "m") == "gpu"


def test_predictive_preloads_before_demand(client: redis.Redis) -> None:
    """Yesterday, model "hot" was asked for every 20 s in the first hour; today its first
    job comes at 10 min. The predictive policy has an idle worker load it before then
    (a residency change in Redis), so that first job finds it warm; pools+warm does not."""
    history = [TraceJob(f"h{i}", i * 20.0, "text", 2.0, models=["hot"]) for i in range(180)]
    jobs = [TraceJob("first", 600.0, "text", 2.0, models=["hot"])]
    scenario = Scenario(jobs, {"hot": 4.0}, [2] * 24, 0.0, 601.0)
    predictive = Simulation(client, scenario, POLICIES["pools+warm+predictive"], one_pool(),
                            history=history).run().record
    preloads = [entry for entry in predictive.residency_log
                if entry[2] == "hot" and entry[3] == "gpu" and entry[4] == "preload"]
    assert preloads and preloads[0][0] < 600.0
    assert predictive.preloads >= 1
    assert predictive.jobs["first"].warm
    assert predictive.jobs["first"].started - 600.0 < 0.1
    plain = Simulation(client, scenario, POLICIES["pools+warm"], one_pool(),
                       history=history).run().record
    assert plain.preloads == 0 and not plain.jobs["first"].warm


def test_elastic_policy_stays_within_the_uniform_budget(client: redis.Redis) -> None:
    pools_file = load_pools_file(DEFAULT_POOLS_FILE)
    scenario = synthetic_day(seed=5, scale=0.3, start_hour=13, hours=0.25)
    uniform = Simulation(client, scenario, POLICIES["uniform"], pools_file).run()
    elastic = Simulation(client, scenario, POLICIES["pools+warm+predictive"], pools_file,
                         history=synthetic_day(1005, 0.3, 12, 1.5).jobs).run()
    assert elastic.summary["machine_hours"] <= uniform.summary["machine_hours"] + 1e-9
    for _, sample in elastic.record.samples:
        assert sum(live for _, live, _ in sample.values()) <= max(scenario.fleet_by_hour)


def test_emp_simulate_writes_the_table_json_and_charts(redis_server, client: redis.Redis,
                                                       tmp_path) -> None:
    from click.testing import CliRunner

    from emp_tasks.cli import main

    trace = tmp_path / "small.jsonl"
    write_trace(synthetic_day(seed=2, scale=0.2, start_hour=13, hours=0.1).jobs, trace)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [
        "simulate", "--trace", str(trace), "--scale", "0.2", "--policies", "uniform,pools",
        "--out", str(out), "--redis-url", redis_server.url])
    assert result.exit_code == 0, result.output
    assert "| uniform |" in result.output and "| pools |" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert [p["policy"] for p in summary["policies"]] == ["uniform", "pools"]
    assert all(p["completion"] == 1.0 for p in summary["policies"])
    for name in ("sim-wait-cdf.png", "sim-queue-per-pool.png", "sim-machines-per-pool.png"):
        assert (out / name).stat().st_size > 1000
    bad = CliRunner().invoke(main, ["simulate", "--quick", "--policies", "nope",
                                    "--redis-url", redis_server.url])
    assert bad.exit_code == 2 and "unknown policy 'nope'" in bad.output
    # A list naming no policy: it ran all four (an empty list read as "the default").
    none = CliRunner().invoke(main, ["simulate", "--quick", "--policies", ",",
                                     "--out", str(tmp_path / "none"),
                                     "--redis-url", redis_server.url])
    assert none.exit_code == 2 and "--policies names no policy" in none.output, none.output
    # A policy named twice: the whole simulation ran again for it, its row printed twice.
    twice = CliRunner().invoke(main, ["simulate", "--quick", "--policies", "uniform, uniform",
                                      "--out", str(tmp_path / "twice"),
                                      "--redis-url", redis_server.url])
    assert twice.exit_code == 2 and "--policies names uniform twice" in twice.output, twice.output
    assert not (tmp_path / "twice").exists()


def test_fleet_follows_the_schedule_down(client: redis.Redis) -> None:
    """3 machines in hour 0, 1 from hour 1 on. At 3600 s two run jobs (from 3590 and
    3591 s, 60 s each): the idle one stops at once, one busy one after its job (about
    3650 s), and machine-hours count each machine until it stopped."""
    jobs = [TraceJob("early", 10.0, "text", 5.0), TraceJob("long1", 3590.0, "text", 60.0),
            TraceJob("long2", 3591.0, "text", 60.0), TraceJob("late", 4000.0, "text", 5.0)]
    scenario = Scenario(jobs, {}, [3] + [1] * 23, 0.0, 4001.0)
    result = Simulation(client, scenario, POLICIES["uniform"], one_pool()).run()
    lives = {t: sample["default"][1] for t, sample in result.record.samples}
    assert lives[3540.0] == 3 and lives[3600.0] == 2 and lives[3660.0] == 1
    assert client.zcard("emp:{default}:workers") == 1
    expected = (3600 + 3650.005 + 4005.005) / 3600  # the last one until "late" is done
    assert result.record.machine_hours == pytest.approx(expected, abs=0.0001)
    assert result.summary["completion"] == 1.0


def test_simulate_refuses_inputs_it_cannot_run_and_writes_strict_json(redis_server,
                                                                     tmp_path) -> None:
    """Tried (an audit): ``--scale 0`` (a ZeroDivisionError traceback), ``--scale -1`` (an
    endless loop at 100% CPU), a job needing ``gpu_memory_gb: "all"`` (a TypeError), a
    trace with one id on two lines (accepted: the second was refused by the queue as a
    duplicate and the results counted 1 job, none completed), and a trace without jobs
    (its JSON line held bare NaN percentiles, and its table "nan": now null and n/a)."""
    from click.testing import CliRunner

    from emp_tasks.cli import main

    def simulate(*args: str):  # noqa: ANN202 - click's Result
        return CliRunner().invoke(main, ["simulate", "--redis-url", redis_server.url, *args])

    for scale in ("0", "-1"):
        refused = simulate("--quick", "--scale", scale)
        assert refused.exit_code == 2 and "--scale" in refused.output, refused.output
    twice = tmp_path / "twice.jsonl"
    write_trace([TraceJob("c1", 1.0, "text", 1.0), TraceJob("c1", 2.0, "text", 1.0)], twice)
    with pytest.raises(ValueError, match=r"twice.jsonl:2: job id 'c1' is already the job of "
                                         r"line 1"):
        load_trace(twice)
    whole = tmp_path / "whole-gpu.jsonl"  # a documented value: was a TypeError traceback
    write_trace([TraceJob("g1", 1.0, "comfyui", 2.0,
                          requirements={"hardware": {"gpu_memory_gb": "all"}})], whole)
    ran = simulate("--trace", str(whole), "--policies", "pools", "--out", str(tmp_path / "g"))
    assert ran.exit_code == 0, ran.output
    # A job no pool can run stopped the run without naming the job (one of thousands).
    unrunnable = tmp_path / "unrunnable.jsonl"
    write_trace([TraceJob("ok1", 1.0, "text", 1.0),
                 TraceJob("huge7", 2.0, "comfyui", 2.0,
                          requirements={"hardware": {"gpu_memory_gb": 500}})], unrunnable)
    stopped = simulate("--trace", str(unrunnable), "--policies", "pools",
                       "--out", str(tmp_path / "u"))
    assert stopped.exit_code == 2, stopped.output
    assert "trace job 'huge7'" in stopped.output and "no pool can run" in stopped.output
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = tmp_path / "out"
    done = simulate("--trace", str(empty), "--policies", "uniform", "--out", str(out))
    assert done.exit_code == 0, done.output
    assert "nan" not in done.output and "| uniform | 0 | n/a | n/a | n/a |" in done.output
    assert "nan" not in (out / "table.md").read_text()
    line = (out / "summary.json").read_text()
    json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in the JSON line"))


BAD_TRACE_LINES = {  # a trace line, and what the refusal names
    '{"id": "a", "at": "x", "service": "text", "run_seconds": 2}': "at",
    '{"id": "a", "at": 1e308, "service": "text", "run_seconds": 2}': "at",
    '{"id": "a", "at": -100, "service": "text", "run_seconds": 2}': "at",
    '{"id": "a", "at": 1, "service": "text", "run_seconds": NaN}': "run_seconds",
    '{"id": "a", "at": 1, "service": "text", "run_seconds": -5}': "run_seconds",
    '{"id": "a", "at": 1, "service": "text", "run_seconds": 2, "models": "sdxl"}': "models",
    '{"id": "a", "at": 1, "service": "text", "run_seconds": 2, "model_gb": {"m": -3}}':
        "model_gb.m",
    '{"id": "a", "at": 1, "service": "text", "run_seconds": 2, "payload": [1]}': "payload",
    '{"id": "a", "at": 1, "service": "text", "run_seconds": 2, "priority": 1000}': "priority",
    '{"id": "a", "at": 1, "service": 7, "run_seconds": 2}': "service",
    '[1, 2]': "a trace line must be a JSON object",
    # a name given twice was taken silently, the last one winning
    '{"id": "a", "at": 1, "service": "text", "run_seconds": 2, "run_seconds": 900}':
        'not a trace job: name "run_seconds" appears twice',
}


@pytest.mark.parametrize("line", list(BAD_TRACE_LINES))
def test_a_bad_trace_line_is_one_line_naming_the_line_and_the_field(redis_server, tmp_path,
                                                                    line: str) -> None:
    """Tried: ``emp simulate --trace`` with a line whose field has the wrong type or an
    impossible value. Before, ``at: "x"`` was a TypeError traceback and ``at: 1e308`` an
    OverflowError traceback; NaN run seconds said only "cannot convert float NaN to
    integer" (no file, line or field); negative arrival or run seconds, negative model
    sizes and ``models: "sdxl"`` (read as the models s, d, x and l) ran without a word,
    and a field named twice kept its last value. Now each is a usage error naming the
    file, the line and the field."""
    from click.testing import CliRunner

    from emp_tasks.cli import main

    trace = tmp_path / "bad.jsonl"
    trace.write_text('{"id": "ok", "at": 1, "service": "text", "run_seconds": 1}\n' + line + "\n")
    result = CliRunner().invoke(main, ["simulate", "--redis-url", redis_server.url, "--trace",
                                       str(trace), "--policies", "pools",
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert f"bad.jsonl:2: {BAD_TRACE_LINES[line]}" in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_machine_hours_count_until_the_last_job_is_done(client: redis.Redis) -> None:
    """Tried: a trace of four 30-minute jobs arriving in the first 13 s, on 2 machines.
    Before, machine-hours (GPU-hours, cost) stopped at the trace's end, the last arrival
    + 1 s: 0.008 machine-hours for 2 hours of work, so a policy that finished its jobs
    later looked as cheap or cheaper (``--quick``: uniform, pools and pools+warm all 50
    machine-hours though pools' p95 wait was twice uniform's). Now the fleet counts until
    the run ends, the last job done: 2 machines x about 3,610 s."""
    jobs = [TraceJob(f"long{i}", 10.0 + i, "text", 1800.0) for i in range(4)]
    scenario = Scenario(jobs, {}, [2] * 24, 0.0, 14.0)
    result = Simulation(client, scenario, POLICIES["uniform"], one_pool()).run()
    assert result.summary["completion"] == 1.0
    last_done = max(j.completed for j in result.record.jobs.values())
    assert last_done > 3600
    assert result.record.machine_hours >= 4 * 1800 / 3600
    assert result.record.machine_hours == pytest.approx(2 * last_done / 3600, abs=0.001)
    assert result.record.gpu_hours == result.record.machine_hours
    assert result.record.cost == pytest.approx(result.record.machine_hours)


def test_a_job_no_pool_can_run_stops_every_policy_before_it_starts(redis_server,
                                                                   tmp_path) -> None:
    """Tried: ``emp simulate --trace t.jsonl --policies uniform`` with a job of a service no
    pool runs (``nosuch``) or asking 200 GB of GPU memory. Before, only the router's
    policies stopped on it; ``uniform`` ran, the job waited the whole run and the table
    said 0.0% completed, wait p50 3599 s, with no word why. Now every policy stops before
    the run starts, naming the job, as the README says."""
    from click.testing import CliRunner

    from emp_tasks.cli import main

    for job in (TraceJob("typo3", 1.0, "nosuch", 1.0),
                TraceJob("huge7", 2.0, "comfyui", 2.0,
                         requirements={"hardware": {"gpu_memory_gb": 200}})):
        trace = tmp_path / f"{job.id}.jsonl"
        write_trace([TraceJob("ok1", 0.5, "text", 1.0), job], trace)
        out = tmp_path / f"out-{job.id}"
        result = CliRunner().invoke(main, ["simulate", "--redis-url", redis_server.url,
                                           "--trace", str(trace), "--policies", "uniform",
                                           "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert f"trace job {job.id!r}" in result.output, result.output
        assert "no pool can run this job" in result.output, result.output
        assert not out.exists()


@pytest.mark.parametrize("args", [("--day", "--quick"), ("--trace", "{trace}", "--quick"),
                                  ("--trace", "{trace}", "--day")])
def test_two_scenarios_at_once_are_refused(redis_server, tmp_path, args: tuple[str, ...]) -> None:
    """Tried: ``emp simulate --day --quick`` (meaning a quick day) ran the whole day, 20-25
    minutes, the ``--quick`` dropped without a word; ``--trace t.jsonl --quick`` replayed the
    whole trace and ``--trace t.jsonl --day`` the trace, not the day. Now a usage error
    names the options, before anything runs."""
    from click.testing import CliRunner

    from emp_tasks.cli import main

    trace = tmp_path / "t.jsonl"
    write_trace([TraceJob("ok1", 1.0, "text", 1.0)], trace)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [
        "simulate", "--redis-url", redis_server.url, "--policies", "uniform", "--out", str(out),
        *(a.format(trace=trace) for a in args)])
    assert result.exit_code == 2, result.output
    assert "one of --day, --quick or --trace" in result.output, result.output
    assert not out.exists()


def test_a_policy_starts_on_a_full_database_without_waiting_for_its_flush(
        redis_server) -> None:  # noqa: ANN001
    """Tried: a database holding 600,000 keys (what a policy of ``--day`` leaves, in
    miniature) and a client whose socket timeout is shorter than a synchronous FLUSHDB of
    them (100 ms; 250 ms here), without redis-py's retries (which, re-sending the FLUSHDB,
    hid it at this size; the sim's own client gave up after them). (With 300,000 keys and
    20 ms, one loaded run timed out on the policy's own calls, not the flush.) Before: the next
    policy's set-up FLUSHDB raised "Timeout reading from socket" (a full ``emp simulate
    --day --scale 10`` died so after 32 minutes, before its last policy, on the client's
    default 5 s timeout, its Redis sharing a loaded machine). Now the database is emptied
    asynchronously and the policy runs."""
    filler = redis.Redis(port=redis_server.port)
    filler.flushall()
    with filler.pipeline(transaction=False) as pipe:
        for start in range(0, 600_000, 5_000):
            pipe.mset({f"left:{i}": "x" * 64 for i in range(start, start + 5_000)})
        pipe.execute()
    timed = redis.Redis(port=redis_server.port, decode_responses=True, socket_timeout=0.1,
                        retry=Retry(NoBackoff(), 0))  # (redis-py's retries would hide it)
    try:
        jobs = [TraceJob("a", 1.0, "text", 1.0)]
        scenario = Scenario(jobs, {}, [1] * 24, 0.0, 2.0)
        result = Simulation(timed, scenario, POLICIES["uniform"], one_pool()).run()
    finally:
        timed.close()
    assert result.summary["completion"] == 1.0
    assert filler.exists("left:0", "left:599999") == 0
