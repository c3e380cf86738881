"""The production-shape run of ``claim_cost.py``: many workflows, many customers, spread profiles.

Shape (full; quick divides counts by 5): 100k pending jobs over 20,000
workflows (5 jobs each; a job's class includes its workflow and customer, so
each workflow is a class today) of 1,000 customers; 1,000 registered
profiles. A workflow needs one service (render 60%, upscale, caption, tts),
one model of it (render's ``legacy`` model: 15% of all workflows) and a GPU
size: 1% need 6 GB, the rest 12-80 GB. Profiles: GPU 0-80 GB, 1-3 services,
a subset of their models, a region. Four named profiles: ``small-1pct`` (8
GB, everything else: serves exactly the lowest 1% of the work), ``nothing``
(CPU only: serves nothing pending), ``drain`` (80 GB, render ``legacy`` only)
and ``big`` (80 GB, everything). Which workflows a profile serves is computed
here from the shape, and every claim's answer is checked against it.

Measured, server time two ways: wall time from SLOWLOG (what the target
names; on a shared 2-core machine it includes the scheduler taking Redis off
the CPU mid-call, which shows as calls of ~4 and ~8 ms, the kernel's tick) and
the main thread's CPU time for each call (``INFO cpu`` read between pipelined
claims, less an ``INFO``'s own cost: what the function itself costs, immune to
preemption). Claims by random profiles, bucketed by
the share of pending work the profile can serve, and by each named profile
(claimed jobs are refilled into their own workflow, so the shape holds); the
same at 1,000 workflows (quick 200), for the growth of p99; at 20,000: the
longest single call of registering a new profile and of the first enqueue
into a new workflow, and the first claims of the new profile; then
``drain`` claims and completes all its work, and its misses (dead classes in
its compatibility set, other classes still pending) and ``nothing``'s misses
are measured.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from typing import Any

import redis

from bench._common import summary, verdict
from capability_router.functions import QueueFunctions, claim_args
from capability_router.jobspec import JobSpec
from capability_router.profile import WorkerProfile

NAMESPACE = "prod"
LEASE_MS = 3_600_000  # no lease expires during the run
MODELS = {"render": ["sdxl", "flux", "sd15", "legacy"], "upscale": ["esrgan", "swinir"],
          "caption": ["blip", "llava"], "tts": ["xtts", "bark"]}
SERVICE_WEIGHTS = {"render": 60, "upscale": 15, "caption": 15, "tts": 10}
RENDER_MODEL_WEIGHTS = [35, 25, 15, 25]  # legacy: 25% of render = 15% of all workflows
#: GPU GB a workflow needs, and its share in percent: 6 GB is the lowest 1%.
JOB_GPU = [(6, 1), (12, 10), (16, 20), (24, 30), (40, 20), (48, 10), (80, 9)]
PROFILE_GPU = [0, 8, 12, 16, 24, 24, 40, 48, 48, 80, 80]
REGIONS = [f"r{i}" for i in range(10)]
#: Profiles bucketed by the share of pending jobs they can serve: (label, low, high].
SHARE_BUCKETS = [("0% (miss)", -1.0, 0.0), ("<=1%", 0.0, 0.01), ("1-10%", 0.01, 0.10),
                 ("10-50%", 0.10, 0.50), (">50%", 0.50, 1.0)]
NAMED = ("small-1pct", "nothing", "drain", "big")
CLAIM_P99_TARGET_US = 1000.0
MISS_P99_TARGET_US = 500.0
GROWTH_TARGET = 1.5
LONGEST_CALL_TARGET_US = 5000.0


@dataclass(frozen=True)
class Workflow:
    name: str
    service: str
    model: str
    gpu: int
    customer: str


@dataclass
class Scale:
    """Counts of one run (full, or quick = full / 5)."""

    jobs: int
    workflows: int
    workflows_low: int  # the small end of the growth comparison
    customers: int
    profiles: int
    claims_random: int
    claims_named: int

    @classmethod
    def of(cls, quick: bool) -> Scale:
        d = 5 if quick else 1
        return cls(100_000 // d, 20_000 // d, 1_000 // d, 1_000 // d, 1_000 // d,
                   1500 if quick else 5000, 300 if quick else 1000)


def make_workflows(n: int, customers: int, rng: random.Random, tag: str) -> list[Workflow]:
    """``n`` workflows; GPU sizes in exact shares (every 100 hold each size its share)."""
    services, weights = list(SERVICE_WEIGHTS), list(SERVICE_WEIGHTS.values())
    gpus = [gpu for gpu, share in JOB_GPU for _ in range(share)]
    out = []
    for i in range(n):
        service = rng.choices(services, weights)[0]
        models = MODELS[service]
        model = (rng.choices(models, RENDER_MODEL_WEIGHTS)[0] if service == "render"
                 else rng.choice(models))
        out.append(Workflow(f"{tag}-wf{i}", service, model, gpus[i % len(gpus)],
                            f"cust{rng.randrange(customers)}"))
    return out


def named_profiles() -> dict[str, WorkerProfile]:
    everything = {"services": list(MODELS), "models": {s: list(m) for s, m in MODELS.items()}}
    return {
        "small-1pct": WorkerProfile(worker_id="small-1pct", hardware={"gpu_memory_gb": 8},
                                    **everything),
        "nothing": WorkerProfile(worker_id="nothing", hardware={"gpu_memory_gb": 0},
                                 **everything),
        "drain": WorkerProfile(worker_id="drain", services=["render"],
                               hardware={"gpu_memory_gb": 80}, models={"render": ["legacy"]}),
        "big": WorkerProfile(worker_id="big", hardware={"gpu_memory_gb": 80}, **everything),
    }


def random_profile(rng: random.Random, worker_id: str, region: str | None = None
                   ) -> WorkerProfile:
    services = rng.sample(list(MODELS), rng.randint(1, 3))
    models = {s: rng.sample(MODELS[s], rng.randint(1, len(MODELS[s]))) for s in services}
    return WorkerProfile(worker_id=worker_id, services=services, models=models,
                         hardware={"gpu_memory_gb": rng.choice(PROFILE_GPU)},
                         custom={"region": region or rng.choice(REGIONS)})


def make_profiles(n: int, rng: random.Random) -> list[WorkerProfile]:
    """The named profiles, then random ones with distinct signatures, ``n`` in all."""
    profiles = {p.signature: p for p in named_profiles().values()}
    while len(profiles) < n:
        profile = random_profile(rng, f"w{len(profiles)}")
        profiles.setdefault(profile.signature, profile)
    return list(profiles.values())


def serves(profile: WorkerProfile, wf: Workflow) -> bool:
    """What the matcher decides for this shape (service, GPU size, model)."""
    return (wf.service in profile.services
            and profile.hardware.get("gpu_memory_gb", 0) >= wf.gpu
            and wf.model in profile.models.get(wf.service, ()))


class Backlog:
    """Pending jobs of the shape, filed with pipelined ``emp_enqueue``; tracks job -> workflow."""

    def __init__(self, client: redis.Redis, rng: random.Random) -> None:
        self.client = client
        self.functions = QueueFunctions(client, NAMESPACE)
        self.rng = rng
        self.workflows: list[Workflow] = []
        self.headers: list[dict[str, Any]] = []
        self.job_workflow: list[int] = []  # job "p<n>" belongs to workflow job_workflow[n]
        self.pending: list[int] = []  # pending jobs per workflow, as this client filed and took
        self.wrong_misses = 0  # claims that found nothing while the profile had work

    def add_workflows(self, workflows: list[Workflow]) -> None:
        for wf in workflows:
            spec = JobSpec(service=wf.service, pool=NAMESPACE, customer_id=wf.customer,
                           workflow_id=wf.name, priority=self.rng.choice((20, 50, 50, 50, 80)),
                           requirements={"hardware": {"gpu_memory_gb": wf.gpu},
                                         "models": [wf.model]})
            self.workflows.append(wf)
            self.headers.append(spec.header())
            self.pending.append(0)

    def call(self, index: int) -> tuple[str, list[str], list[Any]]:
        job_id = f"p{len(self.job_workflow)}"
        self.job_workflow.append(index)
        self.pending[index] += 1
        message = json.dumps({"headers": {"id": job_id, "task": "bench.prod"},
                              "properties": {}, "body": ""})
        return self.functions.enqueue_call(job_id, self.headers[index], message)

    def fill(self, indexes: list[int], batch: int = 1000) -> None:
        for first in range(0, len(indexes), batch):
            pipe = self.client.pipeline(transaction=False)
            for index in indexes[first:first + batch]:
                name, keys, args = self.call(index)
                pipe.fcall(name, len(keys), *keys, *args)
            for reply in pipe.execute():
                if reply[0] not in (b"queued", "queued"):
                    raise RuntimeError(f"enqueue refused: {reply}")

    def workflow_of(self, job_id: bytes | str) -> int:
        text = job_id.decode() if isinstance(job_id, bytes) else job_id
        return self.job_workflow[int(text[1:])]

    def share(self, profile: WorkerProfile) -> float:
        """Share of the pending jobs the profile can serve."""
        total = sum(self.pending)
        return sum(n for wf, n in zip(self.workflows, self.pending, strict=True)
                   if n and serves(profile, wf)) / total


def slowlog_calls(client: redis.Redis) -> list[tuple[float, list[bytes]]]:
    """(µs, command) of each logged call since the reset, oldest first, bench calls left out."""
    entries = sorted(client.execute_command("SLOWLOG", "GET", -1), key=lambda e: e[0])
    return [(float(e[2]), e[3]) for e in entries
            if e[3] and e[3][0].upper() not in (b"SLOWLOG", b"CONFIG", b"INFO")]


@dataclass(frozen=True)
class Timed:
    """One claim: its server wall time (SLOWLOG), its CPU time, whether it found a job."""

    wall_us: float
    cpu_us: float
    hit: bool
    profile: WorkerProfile


METRICS = ("wall", "cpu")
#: The main thread's CPU counters in ``INFO cpu`` (Redis >= 7; precise, from the kernel's
#: per-thread runtime, unlike the process-wide pair that includes background threads).
MAIN_THREAD_CPU = ("used_cpu_user_main_thread", "used_cpu_sys_main_thread")


def main_thread_cpu_us(info: dict[str, Any]) -> float:
    return 1e6 * sum(float(info[key]) for key in MAIN_THREAD_CPU)


def info_cost_us(client: redis.Redis, n: int = 201) -> float:
    """Median CPU µs between two pipelined ``INFO cpu`` with nothing between them."""
    pipe = client.pipeline(transaction=False)
    for _ in range(n):
        pipe.info("cpu")
    marks = [main_thread_cpu_us(info) for info in pipe.execute()]
    gaps = sorted(b - a for a, b in zip(marks, marks[1:], strict=False))
    return gaps[len(gaps) // 2]


def timed_claims(backlog: Backlog, profiles: list[WorkerProfile], refill: bool = True
                 ) -> list[Timed]:
    """Claim once per profile given, pipelined, an ``INFO cpu`` between claims.

    Checks each answer against the shape: a job the profile cannot serve is an
    error; a miss while it could serve pending work is counted in
    ``backlog.wrong_misses``. ``refill`` files a new job into the workflow of
    each job taken.
    """
    client, keys = backlog.client, backlog.functions.keys
    info_us = info_cost_us(client)
    out: list[Timed] = []
    for first in range(0, len(profiles), 100):
        chunk = profiles[first:first + 100]
        client.slowlog_reset()
        pipe = client.pipeline(transaction=False)
        pipe.info("cpu")
        for p in chunk:
            pipe.execute_command(*claim_args(keys, p.signature, p.worker_id, LEASE_MS, 5000))
            pipe.info("cpu")
        answers = pipe.execute()
        marks = [main_thread_cpu_us(info) for info in answers[0::2]]
        replies = answers[1::2]
        cpu = [max(0.0, b - a - info_us) for a, b in zip(marks, marks[1:], strict=False)]
        calls = [us for us, cmd in slowlog_calls(client)
                 if cmd[0].upper() == b"FCALL" and cmd[1] == b"emp_claim"]
        if len(calls) != len(chunk):
            raise RuntimeError(f"SLOWLOG held {len(calls)} of {len(chunk)} claims")
        taken = []
        for us, cpu_us, reply, p in zip(calls, cpu, replies, chunk, strict=True):
            hit = int(reply[0]) == 1
            if hit:
                index = backlog.workflow_of(reply[1])
                if not serves(p, backlog.workflows[index]):
                    raise RuntimeError(f"{p.worker_id} got a job of {backlog.workflows[index]}")
                backlog.pending[index] -= 1
                taken.append(index)
            elif any(n and serves(p, wf) for wf, n in
                     zip(backlog.workflows, backlog.pending, strict=True)):
                backlog.wrong_misses += 1
            out.append(Timed(us, round(cpu_us, 3), hit, p))
        if refill and taken:
            backlog.fill(taken)
    return out


def longest_call(client: redis.Redis, action: Any) -> float:
    """µs of the longest single Redis call made while ``action()`` runs."""
    client.slowlog_reset()
    action()
    return max((us for us, _ in slowlog_calls(client)), default=0.0)


@dataclass
class Stage:
    """A server holding one backlog of the shape, with its profiles registered."""

    backlog: Backlog
    profiles: list[WorkerProfile]
    shares: dict[str, float]
    class_fill_s: float
    job_fill_s: float


def build(client: redis.Redis, scale: Scale, n_workflows: int, rng: random.Random) -> Stage:
    client.flushall()  # the function library stays
    client.config_set("slowlog-log-slower-than", 0)
    client.config_set("slowlog-max-len", 100_000)
    profiles = make_profiles(scale.profiles, rng)
    backlog = Backlog(client, rng)
    for p in profiles:
        backlog.functions.register_worker(p)
    backlog.add_workflows(make_workflows(n_workflows, scale.customers, rng, f"s{n_workflows}"))
    t0 = time.monotonic()
    backlog.fill(list(range(n_workflows)))  # one job per workflow: every class is new
    class_fill_s = time.monotonic() - t0
    t0 = time.monotonic()
    rest = [i % n_workflows for i in range(scale.jobs - n_workflows)]
    rng.shuffle(rest)
    backlog.fill(rest)
    shares = {p.signature: backlog.share(p) for p in profiles}
    return Stage(backlog, profiles, shares, class_fill_s, time.monotonic() - t0)


def bucket_of(share: float) -> str:
    return next(label for label, low, high in SHARE_BUCKETS if low < share <= high)


def of(rows: list[Timed], metric: str) -> list[float]:
    """The ``metric`` ("wall" or "cpu") µs of each claim."""
    return [row.wall_us if metric == "wall" else row.cpu_us for row in rows]


def sample_claims(stage: Stage, scale: Scale, rng: random.Random
                  ) -> tuple[list[Timed], dict[str, list[Timed]]]:
    """Claims by random profiles, and by each named profile."""
    picks = [rng.choice(stage.profiles) for _ in range(scale.claims_random)]
    rows = timed_claims(stage.backlog, picks)
    named = named_profiles()
    return rows, {name: timed_claims(stage.backlog, [named[name]] * scale.claims_named)
                  for name in NAMED}


def claim_figures(stage: Stage, rows: list[Timed], named_rows: dict[str, list[Timed]],
                  metric: str) -> dict[str, Any]:
    """Summaries of one metric: random claims bucketed by share, each named profile."""
    buckets: dict[str, dict[str, Any]] = {}
    for label, _, _ in SHARE_BUCKETS:
        mine = [r for r in rows if bucket_of(stage.shares[r.profile.signature]) == label]
        buckets[label] = {"all": summary(of(mine, metric)),
                          "hit": summary(of([r for r in mine if r.hit], metric)),
                          "miss": summary(of([r for r in mine if not r.hit], metric)),
                          "profiles": sum(1 for p in stage.profiles
                                          if bucket_of(stage.shares[p.signature]) == label)}
    named = named_profiles()
    by_name = {name: {"share": round(stage.shares[named[name].signature], 4),
                      "all": summary(of(got, metric)), "hits": sum(r.hit for r in got)}
               for name, got in named_rows.items()}
    return {"random": {"all": summary(of(rows, metric)), "buckets": buckets},
            "named": by_name}


def first_calls(stage: Stage, scale: Scale, rng: random.Random, count: int = 5
                ) -> dict[str, Any]:
    """Longest call of registering new profiles, of first enqueues into new classes."""
    client, backlog = stage.backlog.client, stage.backlog
    register: list[float] = []
    claims: list[float] = []
    for k in range(count):
        profile = random_profile(rng, f"new{k}", region=f"new-{k}")
        register.append(longest_call(
            client, lambda p=profile: backlog.functions.register_worker(p)))
        claims += timed_claims(backlog, [profile] * 20)
    out = {"register_longest_us": summary(register), "new_profile_first_claims_us":
           summary(of(claims, "wall")), "new_profile_first_claims_cpu_us":
           summary(of(claims, "cpu"))}
    # New workflows of known requirements (each a new class today, as a class holds its
    # workflow), and workflows needing a model never seen (a new class in any design).
    known = make_workflows(count, scale.customers, rng, "first")
    fresh = [Workflow(f"fresh-wf{k}", "render", f"fresh-model-{k}", 24, f"cust{k}")
             for k in range(count)]
    for label, workflows in (("new_workflow", known), ("new_requirements", fresh)):
        start = len(backlog.workflows)
        backlog.add_workflows(workflows)
        out[f"enqueue_{label}_longest_us"] = summary([
            longest_call(client, lambda i=index: backlog.fill([i]))
            for index in range(start, start + count)])
    return out


def drain_and_miss(stage: Stage, scale: Scale) -> dict[str, Any]:
    """``drain`` takes and completes all it can serve; then its misses and ``nothing``'s."""
    named = named_profiles()
    drain, functions = named["drain"], stage.backlog.functions
    t0 = time.monotonic()
    drained = 0
    while True:
        claimed = functions.claim(drain.signature, drain.worker_id, LEASE_MS)
        if isinstance(claimed, int):
            break
        functions.complete(claimed.job_id, claimed.attempt, None)
        stage.backlog.pending[stage.backlog.workflow_of(claimed.job_id)] -= 1
        drained += 1
    drain_s = time.monotonic() - t0
    dead = sum(1 for wf, n in zip(stage.backlog.workflows, stage.backlog.pending, strict=True)
               if n == 0 and serves(drain, wf))
    out: dict[str, Any] = {"drained_jobs": drained, "drain_seconds": round(drain_s, 2),
                           "drained_workflows": dead, "pending_after": sum(stage.backlog.pending)}
    for name in ("drain", "nothing"):
        got = timed_claims(stage.backlog, [named[name]] * scale.claims_named, refill=False)
        if any(r.hit for r in got):
            raise RuntimeError(f"{name} found work after the drain")
        out[f"{name}_miss_us"] = summary(of(got, "wall"))
        out[f"{name}_miss_cpu_us"] = summary(of(got, "cpu"))
    return out


def run(client: redis.Redis, quick: bool) -> dict[str, Any]:
    """The whole production-shape run; prints a table, returns the figures and verdicts."""
    scale = Scale.of(quick)
    rng = random.Random(11)
    stages: dict[str, Any] = {}
    for n_workflows in (scale.workflows_low, scale.workflows):
        t0 = time.monotonic()
        stage = build(client, scale, n_workflows, rng)
        shares = sorted(stage.shares.values())
        print(f"production shape, {n_workflows} workflows: {scale.jobs} jobs, "
              f"{len(stage.profiles)} profiles; new classes filed in {stage.class_fill_s:.1f}s, "
              f"other jobs in {stage.job_fill_s:.1f}s; share of work per profile: median "
              f"{shares[len(shares) // 2]:.1%}, max {shares[-1]:.1%}", flush=True)
        rows, named_rows = sample_claims(stage, scale, rng)
        result = claim_figures(stage, rows, named_rows, "wall")
        result["cpu"] = claim_figures(stage, rows, named_rows, "cpu")
        result.update(class_fill_s=round(stage.class_fill_s, 2),
                      job_fill_s=round(stage.job_fill_s, 2))
        result["wrong_misses"] = stage.backlog.wrong_misses
        if n_workflows == scale.workflows:
            result["first_calls"] = first_calls(stage, scale, rng)
            result["after_drain"] = drain_and_miss(stage, scale)
        result["seconds"] = round(time.monotonic() - t0, 1)
        stages[str(n_workflows)] = result
        print_stage(n_workflows, result)
    out = verdicts(stages, scale, "wall")
    out["cpu"] = verdicts(stages, scale, "cpu")
    return out


def fmt(s: dict[str, float]) -> str:
    if not s["n"]:
        return "        -"
    return f"{s['p50']:>7.0f} {s['p99']:>7.0f} {s['mean']:>8.1f} {s['max']:>7.0f} {s['n']:>6}"


def print_claims(n_workflows: int, figures: dict[str, Any], what: str) -> None:
    print(f"  claims at {n_workflows} workflows, {what}:    p50     p99     mean     max"
          "      n", flush=True)
    print(f"    random profiles, all          {fmt(figures['random']['all'])}", flush=True)
    for label, b in figures["random"]["buckets"].items():
        print(f"    serving {label:<10} ({b['profiles']:>4} p) {fmt(b['all'])}", flush=True)
    for name, b in figures["named"].items():
        print(f"    {name:<11} (serves {b['share']:>6.2%})  {fmt(b['all'])}  "
              f"hits {b['hits']}", flush=True)


def print_stage(n_workflows: int, result: dict[str, Any]) -> None:
    print_claims(n_workflows, result, "server wall us")
    print_claims(n_workflows, result["cpu"], "server CPU us ")
    first = result.get("first_calls")
    if first:
        rows = [("register new profile, longest call  ", "register_longest_us"),
                ("its first claims                    ", "new_profile_first_claims_us"),
                ("first enqueue, new workflow, longest", "enqueue_new_workflow_longest_us"),
                ("first enqueue, new model, longest   ", "enqueue_new_requirements_longest_us")]
        for label, key in rows:
            print(f"    {label} {fmt(first[key])}", flush=True)
    after = result.get("after_drain")
    if after:
        print(f"    drain took {after['drained_jobs']} jobs of {after['drained_workflows']} "
              f"workflows in {after['drain_seconds']:.1f}s; {after['pending_after']} pending",
              flush=True)
        for metric, suffix in (("wall", "us"), ("CPU", "cpu_us")):
            print(f"    miss, drain (dead classes), {metric:<4} "
                  f"{fmt(after['drain_miss_' + suffix])}", flush=True)
            print(f"    miss, nothing, {metric:<4}              "
                  f"{fmt(after['nothing_miss_' + suffix])}", flush=True)


def verdicts(stages: dict[str, Any], scale: Scale, metric: str) -> dict[str, Any]:
    """Targets judged on one metric ("wall": the headline, or "cpu"); prints them."""
    low, high = stages[str(scale.workflows_low)], stages[str(scale.workflows)]
    lo, hi = (low, high) if metric == "wall" else (low["cpu"], high["cpu"])
    suffix = "us" if metric == "wall" else "cpu_us"
    hit_p99 = {label: b["hit"]["p99"] for label, b in hi["random"]["buckets"].items()
               if b["hit"]["n"]}
    hit_p99.update({name: b["all"]["p99"] for name, b in hi["named"].items() if b["hits"]})
    miss_p99 = {"random_miss": hi["random"]["buckets"]["0% (miss)"]["miss"]["p99"],
                "nothing": high["after_drain"][f"nothing_miss_{suffix}"]["p99"],
                "drain_dead_classes": high["after_drain"][f"drain_miss_{suffix}"]["p99"]}
    growth = {"random_all": hi["random"]["all"]["p99"] / max(1.0, lo["random"]["all"]["p99"])}
    growth.update({name: hi["named"][name]["all"]["p99"]
                   / max(1.0, lo["named"][name]["all"]["p99"]) for name in NAMED})
    first = high["first_calls"]
    longest = {"register": first["register_longest_us"]["max"],
               "first_enqueue": max(first["enqueue_new_workflow_longest_us"]["max"],
                                    first["enqueue_new_requirements_longest_us"]["max"])}
    met = {
        "claim_p99": max(hit_p99.values()) <= CLAIM_P99_TARGET_US,
        "miss_p99": max(v for v in miss_p99.values() if v == v) <= MISS_P99_TARGET_US,
        "growth": max(growth["random_all"], growth["small-1pct"]) <= GROWTH_TARGET,
    }
    print(f"  targets on server {metric} time: claim p99 <= {CLAIM_P99_TARGET_US:.0f} us for "
          f"every bucket and named profile (worst {max(hit_p99.values()):.0f}): "
          f"{verdict(met['claim_p99'])}; miss p99 <= {MISS_P99_TARGET_US:.0f} us (worst "
          f"{max(v for v in miss_p99.values() if v == v):.0f}): {verdict(met['miss_p99'])}",
          flush=True)
    print(f"  growth of {metric} p99 {scale.workflows_low} -> {scale.workflows} workflows: "
          + ", ".join(f"{k} {v:.2f}x" for k, v in growth.items())
          + f" (target <= {GROWTH_TARGET}x for random_all and small-1pct: "
          f"{verdict(met['growth'])})", flush=True)
    out: dict[str, Any] = {
        "claim_hit_p99_us": hit_p99,
        "miss_p99_us": miss_p99,
        "growth_p99": {k: round(v, 3) for k, v in growth.items()},
        "met": met,
    }
    if metric == "wall":  # the longest single call is SLOWLOG's alone
        met["longest_call"] = max(longest.values()) < LONGEST_CALL_TARGET_US
        print(f"  longest call: register {longest['register']:.0f} us, first enqueue "
              f"{longest['first_enqueue']:.0f} us (target < {LONGEST_CALL_TARGET_US:.0f}: "
              f"{verdict(met['longest_call'])})", flush=True)
        out.update({"scale": vars(scale), "stages": stages, "longest_call_us": longest,
                    "targets": {"claim_p99_us_max": CLAIM_P99_TARGET_US, "miss_p99_us_max":
                                MISS_P99_TARGET_US, "growth_max": GROWTH_TARGET,
                                "longest_call_us_below": LONGEST_CALL_TARGET_US}})
    return out
