"""The event loop: virtual time, virtual workers, the real functions.

Events sit in one heap ordered by (virtual ms, sequence), so a run is a pure
function of the trace, the policy and the seed. Each event makes the calls
production makes at that moment, passing the virtual time:

* arrival: the router's decision (pools), ``emp_enqueue``; the enqueue
  wakes an idle worker the way production does (``wake_warm``/``wake_one``
  drop its idle mark), which the loop sees as a member gone from the pool's
  idle set, and that worker claims ``WAKE_MS`` later;
* claim: ``emp_claim``; a job: the worker's models are loaded (tiers,
  downloads), then residency changes (``emp_residency``) and ``emp_start``,
  then ``emp_complete`` after the true run time and a claim again; nothing:
  the worker stays idle until woken, or retries when the claim said a job
  was left to a warm worker for a while;
* fleet changes, forecast preloads and the elastic scaler (``predictive``)
  once a virtual minute.

Presence (a pool's live workers, ``P.."workers"``) is written with plain
commands, as the worker registry does; a stopped worker's idle mark is
dropped with it (in production it would expire).
"""

from __future__ import annotations

import heapq
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from capability_router.duration import duration_key, job_size
from capability_router.errors import InvalidJob
from capability_router.functions import (
    Claimed,
    QueueFunctions,
    ensure_library,
    held_connection,
    parse_claim,
)
from capability_router.jobspec import JobSpec
from capability_router.keys import Keys
from capability_router.pools import PoolsFile
from capability_router.profile import WorkerProfile
from capability_router.routing import Router
from capability_router.simulator.fleet import Fleet, Machine
from capability_router.simulator.machines import Hardware, ModelCache, hardware_for
from capability_router.simulator.metrics import JobOutcome, RunRecord
from capability_router.simulator.policies import Policy
from capability_router.simulator.predictive import Predictor
from capability_router.simulator.trace import Scenario, TraceJob
from capability_router.workflow_size import COMFYUI_FEATURES, comfyui_size_fields

#: Virtual time 0 (a UTC midnight, 2023-11-15), in ms since the epoch.
BASE_MS = 1_700_006_400_000
#: A woken worker claims this long after the enqueue that woke it, ms.
WAKE_MS = 5
#: Leases longer than any run (no renewals needed), ms.
LEASE_MS = 6 * 3600 * 1000
#: Idle marks outlive the run: a worker claims again only when woken.
IDLE_MS = 7 * 86_400 * 1000
#: Fleet, forecast and sampling period, ms.
TICK_MS = 60_000
#: Expected load ms per tier for warm-first delays (emp_claim's load_ms_*).
LOAD_MS = {"load_ms_ram": 2000, "load_ms_disk": 8000, "load_ms_remote": 60000}
#: Duration features per service (as job types declare them: one unit each).
FEATURES = {"text": {"tokens": 500}, "comfyui": COMFYUI_FEATURES,
            "simulation": {"steps": 1, "width": 1024, "height": 1024, "frames": 1}}
#: Where a service's size fields are, as its job type reads them (the payload if unlisted):
#: a trace's comfyui job may carry a workflow graph, as production's do.
SIZE_FIELDS = {"comfyui": comfyui_size_fields}
#: Virtual seconds after the last arrival the run goes on, to finish jobs.
DRAIN_SECONDS = 3600


@dataclass
class SimResult:
    """A finished run: its record and summary."""

    record: RunRecord
    summary: dict[str, Any] = field(default_factory=dict)


class Worker:
    """One virtual machine's worker."""

    def __init__(self, machine: Machine, hardware: Hardware, sizes: dict[str, float],
                 signature: str) -> None:
        self.machine = machine
        self.id = machine.id
        self.pool = machine.pool
        self.hardware = hardware
        self.cache = ModelCache(hardware, sizes)
        self.signature = signature
        #: Bumped whenever a scheduled claim must be forgotten.
        self.token = 0
        self.job: str | None = None
        self.idle = False
        self.stopped = False
        self.draining = False
        self.busy_until = 0
        self.reported = False


class Simulation:
    """One policy on one scenario, against ``client``'s Redis (emptied first).

    :param client: redis-py client (``decode_responses=True``) of a server the run owns.
    :param scenario: the trace, model sizes and the uniform fleet per hour.
    :param policy: what is switched on.
    :param pools_file: the pools (their hardware, routing and prices).
    :param history: jobs of an earlier day the forecast learns from first.
    """

    def __init__(self, client: Any, scenario: Scenario, policy: Policy, pools_file: PoolsFile,
                 history: list[TraceJob] | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        self.client = client
        self.scenario = scenario
        self.policy = policy
        self.pools_file = pools_file
        self.progress = progress
        self.now = int(scenario.start * 1000)
        self.heap: list[tuple[int, int, str, Any]] = []
        self.seq = 0
        self.record = RunRecord(policy.name)
        services = sorted({job.service for job in scenario.jobs} | set(FEATURES))
        self.hardware = {name: hardware_for(pool, services)
                         for name, pool in pools_file.pools.items()}
        self.namespaces = list(pools_file.pools) if policy.pools else ["default"]
        self.functions = {ns: QueueFunctions(client, ns) for ns in self.namespaces}
        self.router = (Router(client, pools_file, clock=self.clock_seconds)
                       if policy.pools else None)
        self.models_by_service: dict[str, list[str]] = {}
        for job in scenario.jobs:
            names = self.models_by_service.setdefault(job.service, [])
            names.extend(m for m in job.models if m not in names)
        self.workers: dict[str, Worker] = {}
        #: Per namespace: idle workers (insertion order: deterministic).
        self.idle: dict[str, dict[str, Worker]] = {ns: {} for ns in self.namespaces}
        #: Per namespace: pending job id -> (arrival s, predicted s).
        self.pending: dict[str, dict[str, tuple[float, float]]] = {
            ns: {} for ns in self.namespaces}
        self.jobs = {job.id: job for job in scenario.jobs}
        self.predicted: dict[str, float] = {}
        self.signatures: dict[tuple[str, str], str] = {}
        self.fleet = Fleet(scenario, pools_file, self.hardware, policy, self.hindsight_pool)
        self.history = history or []
        self.predictor = Predictor(self, history) if (policy.preload or policy.elastic) else None

    # -- time and calls -------------------------------------------------------

    def clock_seconds(self) -> float:
        """Virtual now, seconds since the epoch (the router's clock)."""
        return (BASE_MS + self.now) / 1000

    @property
    def now_ms(self) -> int:
        return BASE_MS + self.now

    def count(self, name: str, n: int = 1) -> None:
        self.record.calls[name] = self.record.calls.get(name, 0) + n

    def schedule(self, at_ms: int, kind: str, data: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (at_ms, self.seq, kind, data))

    # -- set-up ---------------------------------------------------------------

    def prepare(self) -> None:
        """An empty database with the library and each namespace's settings. Emptied
        asynchronously: a full day's policy leaves millions of keys, whose synchronous
        FLUSHDB outlasted the client's 5 s socket timeout and ended a 30-minute run."""
        self.client.flushdb(asynchronous=True)
        ensure_library(self.client)
        for _ns, functions in self.functions.items():
            functions.configure(affinity=int(self.policy.affinity), events_maxlen=1000,
                                job_events_maxlen=20, retention_ms=600_000, **LOAD_MS)
        if self.history and self.policy.pools:
            self.learn_history()

    def learn_history(self) -> None:
        """Start the duration model where the day before left it.

        A running system has learnt yesterday's jobs; without this, every
        (service, model) key's first jobs are routed by the pools file's prior.
        Written as ``emp_complete``'s EWMA would have left it (mean of ln seconds
        per unit, runs), in the pool each job belonged to.
        """
        learnt: dict[tuple[str, str], list[float]] = {}
        for job in self.history:
            pool = self.hindsight_pool(job)
            read = SIZE_FIELDS.get(job.service)
            size = job_size(read(job.payload) if read else job.payload,
                            FEATURES.get(job.service, {}))
            if not pool or size.work_units <= 0:
                continue
            key = duration_key(job.service, job.models, size.features)
            learnt.setdefault((pool, key), []).append(
                math.log(max(job.run_seconds, 0.001) / size.work_units))
        with self.client.pipeline(transaction=False) as pipe:
            for (pool, key), values in sorted(learnt.items()):
                pipe.hset(Keys(pool).durations, key,
                          f"{sum(values) / len(values):.6f},{len(values)}")
            pipe.execute()

    def signature_for(self, pool: str, hardware: Hardware) -> str:
        """Register the profile of ``hardware`` in ``pool`` once; its signature."""
        key = (pool, hardware.name)
        if key not in self.signatures:
            profile = self.profile(hardware, f"{hardware.name}-profile")
            self.functions[pool].register_worker(profile, now_ms=self.now_ms)
            self.count("emp_register_worker")
            self.signatures[key] = profile.signature
        return self.signatures[key]

    def profile(self, hardware: Hardware, worker_id: str) -> WorkerProfile:
        models = {s: list(self.models_by_service.get(s, [])) for s in hardware.services}
        return WorkerProfile(
            worker_id=worker_id, services=list(hardware.services),
            hardware={"gpu_memory_gb": hardware.gpu_memory_gb} if hardware.gpu else {},
            models={s: m for s, m in models.items() if m})

    # -- the loop -------------------------------------------------------------

    def run(self) -> SimResult:
        """Run the scenario to its end (plus the drain); returns the record and summary."""
        started = time.monotonic()
        self.prepare()
        for job in self.scenario.jobs:
            self.schedule(int(job.at * 1000), "arrive", job)
        end_ms = int((self.scenario.end + DRAIN_SECONDS) * 1000)
        self.schedule(self.now, "tick", None)
        last_report = time.monotonic()
        outstanding = len(self.scenario.jobs)
        work_done_ms = 0
        while self.heap:
            at, _, kind, data = heapq.heappop(self.heap)
            if at > end_ms:
                break
            self.now = at
            if kind == "arrive":
                self.arrive(data)
            elif kind == "claim":
                self.claim(*data)
            elif kind == "run":
                self.start_run(*data)
            elif kind == "complete":
                self.complete(*data)
                outstanding -= 1
                work_done_ms = at
            elif kind == "tick":
                self.tick()
                if outstanding > 0 or at < self.scenario.end * 1000:
                    self.schedule(at + TICK_MS, "tick", None)
            elif kind == "machine_up":
                self.machine_up(data)
            elif kind == "preloaded":
                self.preloaded(*data)
            if self.progress and time.monotonic() - last_report > 30:
                last_report = time.monotonic()
                self.progress(f"[{self.policy.name}] virtual {self.now / 3600000:.2f} h, "
                              f"{outstanding} jobs outstanding, "
                              f"{sum(self.record.calls.values())} calls")
        self.now = max(self.now, int(self.scenario.end * 1000))
        self.record.end = self.now / 1000
        # The fleet is paid until its work is done (the drain's limit when jobs remain),
        # not only until the last arrival: a policy that finishes later costs more.
        paid_until = self.now if outstanding else max(work_done_ms, self.scenario.end * 1000)
        self.fleet.close(paid_until / 1000, self.record)
        self.record.wall_seconds = time.monotonic() - started
        return SimResult(self.record, self.record.summary())

    def tick(self) -> None:
        """Once a virtual minute: housekeeping, forecast work, the fleet, a sample."""
        t = self.now / 1000
        if self.now % 600_000 < TICK_MS:
            for functions in self.functions.values():
                functions.sweep(100, now_ms=self.now_ms)
                self.count("emp_sweep")
        if self.predictor:
            self.predictor.tick(t)
        for hardware, count in self.fleet.targets(t, self.predictor).items():
            self.resize(hardware, count)
        sample = {}
        for ns in self.namespaces:
            live = [w for w in self.workers.values() if w.pool == ns and not w.stopped]
            busy = sum(1 for w in live if w.job is not None)
            sample[ns] = (len(self.pending[ns]), len(live), busy)
        self.record.samples.append((t, sample))

    # -- machines -------------------------------------------------------------

    def resize(self, hardware: str, count: int) -> None:
        """Start or stop machines of ``hardware`` until ``count`` run or are starting."""
        t = self.now / 1000
        for machine in self.fleet.resize(hardware, count, t, self.stop_order(hardware)):
            if machine.leaving:  # released: a running one stops (after its job)
                worker = self.workers.get(machine.id)
                if worker is not None and not worker.stopped:
                    self.stop_worker(worker)
            else:
                self.schedule(int(machine.ready_at * 1000), "machine_up", machine)

    def stop_order(self, hardware: str) -> list[str]:
        """Machines of ``hardware`` to stop first: idle ones (newest first), then busy."""
        live = [w for w in self.workers.values()
                if w.hardware.name == hardware and not w.stopped]
        idle = [w.id for w in reversed(live) if w.job is None and not w.draining]
        busy = [w.id for w in reversed(live) if w.job is not None and not w.draining]
        return idle + busy

    def machine_up(self, machine: Machine) -> None:
        if machine.stopped_at is not None or machine.leaving:
            return
        hardware = self.hardware[machine.hardware]
        worker = Worker(machine, hardware, self.scenario.model_gb,
                        self.signature_for(machine.pool, hardware))
        self.workers[worker.id] = worker
        keys = Keys(worker.pool)
        self.client.zadd(keys.workers, {worker.id: self.now_ms + IDLE_MS})
        self.count("presence")
        preload = [m for m in self.pools_file.pools[hardware.name].preload_models
                   if m in self.scenario.model_gb] if self.policy.pools else []
        load = worker.cache.load(preload)
        self.record.downloads += load.downloads
        self.record.download_gb += load.download_gb
        self.report(worker, load.changes, "boot", replace=True)
        self.schedule(self.now, "claim", (worker.id, worker.token))

    def stop_worker(self, worker: Worker) -> None:
        """The machine goes: an idle one now; a busy one, or one woken for a job, after
        that job (it claims once more, so the job that woke it is not stranded)."""
        if worker.job is not None or worker.id not in self.idle[worker.pool]:
            worker.draining = True
            return
        self.retire(worker)

    def retire(self, worker: Worker) -> None:
        """The machine is gone: presence, idle mark and residency dropped."""
        worker.stopped = True
        worker.draining = False
        worker.token += 1
        keys = Keys(worker.pool)
        self.idle[worker.pool].pop(worker.id, None)
        self.client.zrem(keys.workers, worker.id)
        self.client.zrem(keys.idle, f"{worker.signature}:{worker.id}")
        self.count("presence", 2)
        self.functions[worker.pool].residency(worker.id, mode="clear", now_ms=self.now_ms)
        self.count("emp_residency")
        self.fleet.stopped(worker.id, self.now / 1000)

    def residency_call(self, worker: Worker, changes: list[tuple[str, str]], cause: str,
                       replace: bool = False) -> tuple[str, list[str], list[Any]]:
        """The residency report of ``changes`` (logged with ``cause``), evictions first."""
        triples = [(m, tier, round(self.scenario.model_gb.get(m, 5.0) * 1e9) if tier else None)
                   for m, tier in changes]
        triples.sort(key=lambda c: c[1] == "gpu")
        t = self.now / 1000
        for model, tier, _ in triples:
            self.record.residency_log.append((t, worker.id, model, tier, cause))
        return self.functions[worker.pool].residency_call(
            worker.id, triples, "replace" if replace else "update", worker.signature,
            now_ms=self.now_ms)

    def report(self, worker: Worker, changes: list[tuple[str, str]], cause: str,
               replace: bool = False) -> None:
        """Report residency changes now (the first report replaces, with the profile)."""
        if changes or replace:
            reply = self.send([self.residency_call(worker, changes, cause, replace)])[0]
            if isinstance(reply, Exception):
                raise reply

    # -- jobs -----------------------------------------------------------------

    def hindsight_pool(self, job: TraceJob) -> str:
        """The pool that fits the job's true run time (metrics module docstring)."""
        gpu = (job.requirements.get("hardware") or {}).get("gpu_memory_gb")
        # As Router.decide reads it: a number, else none ("all" crashed the comparison).
        gpu = float(gpu) if isinstance(gpu, (int, float)) and not isinstance(gpu, bool) else None
        router = self.router or Router(self.client, self.pools_file)
        able = [p for p in self.pools_file.pools.values()
                if router.why_not(p, job.service, gpu) is None]
        if not able:
            return ""
        fitting = [p for p in able if p.fits_duration(job.run_seconds)]
        if fitting:
            return fitting[0].name

        def distance(pool: Any) -> tuple[float, int]:
            low, high = pool.durations_seconds
            seconds = job.run_seconds
            return (low - seconds if seconds < low else seconds - high), -pool.order
        return min(able, key=distance).name

    def arrive(self, job: TraceJob) -> None:
        spec = JobSpec(service=job.service, payload=dict(job.payload),
                       requirements=json.loads(json.dumps(job.requirements)),
                       priority=job.priority)
        predicted = 0.0
        if self.router:
            try:
                self.router.route(spec, FEATURES.get(job.service),
                                  SIZE_FIELDS.get(job.service))
            except InvalidJob as exc:  # named, or the run stopped on a job nobody could find
                raise InvalidJob(f"trace job {job.id!r} (service {job.service}, at "
                                 f"{job.at:g} s): {exc}") from None
            self.count("router_decide")
            predicted = float(spec.routing.get("predicted_ms", 0)) / 1000
        pool = spec.pool if self.policy.pools else "default"
        if not self.policy.pools:
            spec.pool = "default"
        outcome = JobOutcome(job.at, job.kind, pool,
                             self.hindsight_pool(job) if self.policy.pools else "")
        self.record.jobs[job.id] = outcome
        self.predicted[job.id] = predicted
        if self.predictor:
            self.predictor.observe(job.at, pool, job.models, predicted)
        functions = self.functions[pool]
        keys = functions.keys
        name, call_keys, args = functions.enqueue_call(job.id, spec, "{}", now_ms=self.now_ms)
        with self.client.pipeline(transaction=False) as pipe:
            pipe.execute_command("FCALL", name, len(call_keys), *call_keys, *args)
            pipe.zcard(keys.idle)
            reply, idle_count = pipe.execute()
        self.count("emp_enqueue")
        self.pending[pool][job.id] = (job.at, predicted)
        idle = self.idle[pool]
        if idle_count < len(idle):
            present = set(self.client.zrange(keys.idle, 0, -1))
            for worker in list(idle.values()):
                if f"{worker.signature}:{worker.id}" not in present:
                    self.wake(worker)

    def wake(self, worker: Worker) -> None:
        """The enqueue woke ``worker``: it claims shortly (after a preload it is doing)."""
        self.idle[worker.pool].pop(worker.id, None)
        worker.token += 1
        at = max(self.now + WAKE_MS, worker.busy_until)
        self.schedule(at, "claim", (worker.id, worker.token))

    def send(self, calls: list[tuple[str, list[str], list[Any]]]) -> list[Any]:
        """Function calls in one round trip, in order (one worker's successive calls);
        their replies, an error reply as its exception."""
        commands = [("FCALL", name, len(keys), *keys, *args) for name, keys, args in calls]
        for name, _, _ in calls:
            self.count(name)
        connection = held_connection(self.client, calls[0][1][0])
        if connection is None:
            with self.client.pipeline(transaction=False) as pipe:
                for command in commands:
                    pipe.execute_command(*command)
                return pipe.execute(raise_on_error=False)
        connection.send_packed_command(connection.pack_commands(commands))
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(connection.read_response())
            except redis.ResponseError as exc:
                replies.append(exc)
        return replies

    def claim(self, worker_id: str, token: int,
              before: list[tuple[str, list[str], list[Any]]] = ()) -> None:
        """The worker claims (after ``before``, its own earlier calls, sent together)."""
        worker = self.workers[worker_id]
        if worker.stopped or worker.token != token or worker.job is not None:
            return
        if self.now < worker.busy_until:  # a preload is still loading
            self.schedule(worker.busy_until, "claim", (worker_id, token))
            return
        self.idle[worker.pool].pop(worker.id, None)
        functions = self.functions[worker.pool]
        *earlier, raw = self.send([*before, functions.claim_call(
            worker.signature, worker.id, LEASE_MS, IDLE_MS, now_ms=self.now_ms)])
        for reply in earlier:
            if isinstance(reply, Exception):
                raise reply
        if isinstance(raw, redis.ResponseError) and "NOPROFILE" in str(raw):
            # Dropped after an hour without a claim (emp_sweep): register again, as
            # a production worker does, and claim again.
            self.signatures.pop((worker.pool, worker.hardware.name), None)
            self.signature_for(worker.pool, worker.hardware)
            raw = self.send([functions.claim_call(worker.signature, worker.id, LEASE_MS,
                                                  IDLE_MS, now_ms=self.now_ms)])[0]
            self.record.reregistered += 1
        if isinstance(raw, Exception):
            raise raw
        reply = parse_claim(raw)
        if not isinstance(reply, Claimed):
            if worker.draining:
                self.retire(worker)
                return
            self.idle[worker.pool][worker.id] = worker
            if reply > 0:  # a job left to a warm worker, or a retry falling due
                worker.token += 1
                self.schedule(self.now + reply, "claim", (worker.id, worker.token))
            return
        job = self.jobs[reply.job_id]
        self.record.claim_order.append(job.id)
        self.pending[worker.pool].pop(job.id, None)
        outcome = self.record.jobs[job.id]
        outcome.claimed = self.now / 1000
        outcome.worker = worker.id
        worker.job = job.id
        load = worker.cache.load(job.models)
        outcome.warm = load.warm
        self.record.downloads += load.downloads
        self.record.download_gb += load.download_gb
        self.schedule(self.now + load.ms, "run", (worker.id, job.id, reply.attempt, load.changes))

    def start_run(self, worker_id: str, job_id: str, attempt: int,
                  changes: list[tuple[str, str]]) -> None:
        """The models are in: residency changes and the start, in one round trip."""
        worker = self.workers[worker_id]
        functions = self.functions[worker.pool]
        calls = [functions.start_call(job_id, attempt, worker.id, worker.machine.id,
                                      now_ms=self.now_ms)]
        if changes:
            calls.insert(0, self.residency_call(worker, changes, "job"))
        for reply in self.send(calls):
            if isinstance(reply, Exception):
                raise reply
        self.record.jobs[job_id].started = self.now / 1000
        run_ms = max(1, round(self.jobs[job_id].run_seconds * 1000))
        self.schedule(self.now + run_ms, "complete", (worker_id, job_id, attempt))

    def complete(self, worker_id: str, job_id: str, attempt: int) -> None:
        """The run ended: complete, and claim again in the same round trip."""
        worker = self.workers[worker_id]
        call = self.functions[worker.pool].complete_call(job_id, attempt, {"ok": True},
                                                         now_ms=self.now_ms)
        self.record.jobs[job_id].completed = self.now / 1000
        worker.job = None
        worker.token += 1
        if worker.draining:
            reply = self.send([call])[0]
            if isinstance(reply, Exception):
                raise reply
            self.retire(worker)
            return
        self.claim(worker.id, worker.token, before=[call])

    # -- preloads (predictive) ------------------------------------------------

    def preload(self, worker: Worker, model: str) -> None:
        """Load ``model`` into an idle worker's GPU ahead of demand."""
        load = worker.cache.load([model])
        if load.warm:
            return
        self.record.preloads += 1
        self.record.downloads += load.downloads
        self.record.download_gb += load.download_gb
        worker.busy_until = self.now + load.ms
        self.schedule(worker.busy_until, "preloaded", (worker.id, load.changes))

    def preloaded(self, worker_id: str, changes: list[tuple[str, str]]) -> None:
        worker = self.workers[worker_id]
        if not worker.stopped:
            self.report(worker, changes, "preload")

