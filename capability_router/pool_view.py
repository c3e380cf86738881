"""What the pools look like now: the pools file beside each pool's live state.

Read by ``/api/pools`` and the monitor; it decides nothing. A pool is listed
when the pools file names it, a live worker serves it, or it holds unfinished jobs. Its
``desired_machines`` is the scaler's answer for it now
(``capability_router.prediction.elastic``): none for a pool the pools file in force
does not name. ``waiting_reason`` says why a pool's unfinished jobs wait when no live
worker serves it (null otherwise).
"""

from __future__ import annotations

from typing import Any

from capability_router.functions import QueueFunctions, redis_now_ms
from capability_router.keys import MODEL_CATALOG_KEY, Keys, known_namespaces
from capability_router.pools import PoolsFile
from capability_router.prediction.elastic import (
    PoolState,
    desired_of,
    read_states,
    scaling_policies,
)
from capability_router.registry import WorkerRegistry
from capability_router.routing import PoolLoad


def read_loads(client: Any, pools: list[str]) -> dict[str, tuple[PoolLoad, int]]:
    """Each pool's load and its pending job count, in one pipelined round trip."""
    now_ms = redis_now_ms(client)  # worker heartbeats are scored on Redis' clock
    with client.pipeline(transaction=False) as pipe:
        for pool in pools:
            keys = Keys(pool)
            pipe.zcount(keys.workers, now_ms, "+inf")
            pipe.zcount(keys.idle, now_ms, "+inf")
            pipe.hget(keys.load, "unfinished_ms")
            pipe.zcard(keys.status_index("pending"))
        replies = iter(pipe.execute())
    out = {}
    for pool in pools:
        live, idle, unfinished, pending = (next(replies) for _ in range(4))
        out[pool] = (PoolLoad(int(live), int(idle), max(0.0, float(unfinished or 0) / 1000)),
                     int(pending))
    return out


def unserved_pools(client: Any, pools: list[str]) -> list[str]:
    """The pools among ``pools`` that no live worker serves (one round trip)."""
    loads = read_loads(client, pools)
    return [pool for pool in pools if not loads[pool][0].live]


def pools_view(client: Any, pools_file: PoolsFile | None,
               every_used: bool = False) -> list[dict[str, Any]]:
    """Every pool: its configuration (when the file names it), live workers, pending jobs,
    predicted unfinished work and expected wait now. ``every_used`` also keeps the pools
    used once that nothing serves or waits in now (the monitor's Pools page lists them,
    their charts still hold the last day)."""
    workers: dict[str, list[dict[str, Any]]] = {}
    for record in WorkerRegistry(client).workers():
        for pool in record.get("pools") or []:
            workers.setdefault(pool, []).append(record)
    configured = dict(pools_file.pools) if pools_file else {}
    names = list(configured) + sorted(
        {*workers, *known_namespaces(client)} - set(configured))
    loads = read_loads(client, names)
    policies = scaling_policies(pools_file, names)
    states = read_states(client, {n: loads[n][0] for n in names}, workers, policies)
    # A pool the file does not name and no live worker serves is still listed while it holds
    # unfinished jobs (one removed from the file, a typo in a job's pool, machines moved
    # elsewhere): else those jobs would wait with nothing saying where.
    names = [n for n in names
             if every_used or n in configured or n in workers or states[n].backlog_jobs]
    view = []
    for name in names:
        load, pending = loads[name]
        pool = configured.get(name)
        state = states[name]
        desired = desired_of(state, policies[name])
        view.append({
            "name": name, "configured": pool is not None,
            **(pool.as_dict() if pool else {}),
            "workers": sorted(r["worker_id"] for r in workers.get(name, [])),
            "pending": pending, **load.as_dict(),
            "live_machines": state.live_machines,
            "desired_machines": desired,
            "forecast_arrivals_per_second": state.forecast.arrival_rate,
            "waiting_reason": waiting_reason(name, state, desired, pools_file),
        })
    return view


def waiting_reason(name: str, state: PoolState, desired: int,
                   pools_file: PoolsFile | None) -> str | None:
    """Why the pool's unfinished jobs wait, when no live worker serves it; else None."""
    jobs = state.backlog_jobs or 0
    if not jobs or state.load.live:
        return None
    waiting = f"no live worker serves pool {name}: its {jobs} unfinished job(s) wait until one does"
    if pools_file is not None and name not in pools_file.pools:
        return (f"{waiting}. The pools file {pools_file.path} does not name it, so no "
                "machines are desired for it: add it back to the file, start a worker "
                f"serving it (emp worker -Q {name}), or cancel the jobs")
    return f"{waiting}; desired machines now: {desired}"


def unserved_pool_warning(pool: str, pools_file: PoolsFile | None) -> str:
    """The sentence ``unserved_warnings`` gives for ``pool``: the job waits until a live
    worker serves it, and the pools file (when routing is on) does not name it."""
    unnamed = ""
    if pools_file is not None and pool not in pools_file.pools:
        unnamed = (f", and the pools file {pools_file.path} does not name it (it has "
                   f"{', '.join(pools_file.pools)})")
    return f"no live worker serves pool {pool}{unnamed}: the job waits until one does"


def worker_fit_warnings(pools_file: PoolsFile, pools: list[str], services: list[str],
                        gpu_memory_gb: float | None) -> list[str]:
    """What a worker serving ``pools`` cannot take of what the router files there.

    The router files a job in a pool by the file's description of its machines, and
    counts any live worker as capacity: a worker below the pool's GPU memory (no
    ``--gpu-memory-gb``: 0) leaves its bigger jobs waiting for ever, and a service the
    pool does not run never reaches it unless a job names the pool.
    """
    gpu = float(gpu_memory_gb or 0)
    warnings = []
    for name in pools:
        pool = pools_file.pools.get(name)
        if pool is None:
            continue
        foreign = [s for s in services if not pool.runs_service(s)]
        if foreign:
            warnings.append(f"pool {name} does not run service {', '.join(foreign)} in the "
                            f"pools file {pools_file.path}: the router files no such job there")
        low, high = pool.gpu_memory_gb
        if pool.gpu and gpu < low:
            warnings.append(
                f"it has {gpu:g} GB of GPU memory (--gpu-memory-gb, WORKER_GPU_MEMORY_GB) and "
                f"pool {name}'s machines {low:g}-{high:g} GB in the pools file: a job filed "
                f"there asking more than {gpu:g} GB waits for another worker")
    return warnings


def required_models(job_class: dict[str, Any]) -> tuple[str, list[str]]:
    """A normalized job class's service and the models it requires
    (``requirements.models``), sorted: the ``models`` of ``unserved_warnings``."""
    service = str(job_class.get("service") or "")
    want = (job_class.get("pos") or {}).get(f"models.{service}")
    return service, sorted({want} if isinstance(want, str) else set(want or []))


def unknown_model_warnings(client: Any, pool: str, service: str,
                           models: list[str]) -> list[str]:
    """A warning per model ``service``'s job requires that is neither in the catalog
    (``capability_router.catalog``) nor had in ``pool`` while a worker of it is live
    (``emp_models_held``: reported in any tier by a live worker, or offered by a
    registered profile): no machine can download it and none has it, so the job waits
    until one that has it starts.

    One round trip (the catalog read) for a job whose models the catalog lists, the
    usual case; the pool's function (it reads every resident worker of the pool and,
    for a model none reports, every profile) only for models the catalog lacks, one
    more. None for a job that requires no model."""
    if not models:
        return []
    listed = client.hmget(MODEL_CATALOG_KEY, models)
    unlisted = [m for m, raw in zip(models, listed, strict=True) if raw is None]
    if not unlisted:
        return []
    held = QueueFunctions(client, pool).models_held(service, unlisted)
    return [f"model {m} is not in the model catalog and no live worker of pool {pool} "
            "has it: the job waits until a worker with that model starts or the "
            "model is added to the catalog (/api/models)"
            for m in unlisted if m not in held]


def unserved_warnings(client: Any, pool: str, named: bool,
                      pools_file: PoolsFile | None,
                      models: tuple[str, list[str]] = ("", [])) -> list[str]:
    """What the submitter of a job just filed in ``pool`` is warned of; empty when nothing
    is amiss. One rule for every way in (``emp submit`` on stderr, ``POST /api/jobs``'s
    201 ``warnings``, the client socket's ``job_submitted``, the monitor's submit form), so
    that none says a job waits where another says nothing:

    - only a job that names its pool (``named``: ``pool=`` or ``requirements.pool``): a
      routed job went where the router chose, and one naming none goes to ``default``;
    - not a pool the pools file in force (``pools_file``; None: routing off) names: its
      scaler asks machines for its jobs, so they do not wait for nobody;
    - a warning when no live worker serves the pool: a typo or a pool removed from the
      file, where the job waits until a worker serving it starts.

    - and, for any job, a warning per model it requires (``models``: its service and
      model names, ``required_models``) that the catalog does not list and the pool
      does not have (``unknown_model_warnings``).

    Only such a job costs a lookup (two round trips); a job requiring models one more,
    and one more again when the catalog lacks one of them. Raises what the Redis client raises:
    the job is filed by then, so each caller guards the call and at most notes it."""
    warnings = []
    if named and (pools_file is None or pool not in pools_file.pools):
        if unserved_pools(client, [pool]):
            warnings.append(unserved_pool_warning(pool, pools_file))
    service, names = models
    return warnings + unknown_model_warnings(client, pool, service, list(names))


def known_pools(client: Any, pools_file: PoolsFile | None) -> list[str]:
    """Every pool a metrics reader may ask about: the pools file's, then those ever used."""
    configured = list(pools_file.pools) if pools_file else []
    return configured + [n for n in known_namespaces(client) if n not in configured]
