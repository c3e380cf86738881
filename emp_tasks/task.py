"""The GPU job task base class: a Celery task whose lifecycle is recorded in Redis.

Subclasses (or ``@app.task`` functions, since the app uses this class) name
the ``service`` they implement and take the job payload as keyword
arguments. Start, completion, failure and retries each call one Redis
Function, fenced by the attempt the claim handed out; progress and
cancellation checks are in ``progress`` and ``cancellation``.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, ExitStack, nullcontext
from typing import Any

import redis
from celery import Signature, Task, chord, group, signature
from celery.backends.base import DisabledBackend
from celery.canvas import _chain
from celery.exceptions import Ignore, Reject, Retry
from celery.utils.serialization import get_pickleable_exception
from kombu.serialization import dumps as serialize
from kombu.utils.uuid import uuid

from capability_router.duration import check_size_fields
from capability_router.errors import (
    InvalidJob,
    JobCancelled,
    ReplaceRefused,
    ReplaceUnsupported,
    RetryRefused,
)
from capability_router.functions import CLUSTER_REDIRECTS, submittable_job_id
from capability_router.job_id_reservations import NEW_ID_HEADER
from capability_router.jobspec import HEADER, MAX_RETRIES_LIMIT, JobSpec
from capability_router.keys import check_new_pool
from capability_router.states import JobStatus
from capability_router.transport import ATTEMPT_HEADER, MAX_RETRIES_HEADER, REPLACES_HEADER
from emp_tasks import tracing
from emp_tasks.cancellation import (
    check_cancelled,
    end_cancelled_run,
    is_cancelled,
    record_lost,
    recorded_already,
)
from emp_tasks.celery_queue import NamedPool, named_pools, skip_redundant_declare
from emp_tasks.context import JobContext, job_context
from emp_tasks.job_types import job_type
from emp_tasks.lease_keeper import lease_kept
from emp_tasks.placement import place
from emp_tasks.progress import PROGRESS_STATE, percent_of_meta, report_progress

#: apply_async keywords that belong to the job, not to Celery.
JOB_OPTIONS = (
    "requirements", "priority", "customer_id", "max_retries", "workflow_id",
    "workflow_priority", "workflow_datetime", "current_step", "total_steps", "ctx", "pool",
    "routing",
)

#: The queue's Redis could not be reached, or its cluster was failing over, or it
#: refuses writes (at maxmemory under noeviction, a read-only replica): the run's
#: outcome cannot be recorded now, so the job goes back to pending (``Reject`` with
#: requeue) rather than being counted as failed. (A refused progress report failed the
#: run, and that FAILURE reached a result backend kept elsewhere while the job ran
#: again and completed.)
STORE_UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, redis.OutOfMemoryError,
                     redis.ReadOnlyError, *CLUSTER_REDIRECTS)

#: Celery's built-in tasks that run another task's function inside their own run
#: (``task.map``, ``task.starmap``, ``task.chunks``): their job is that task's, filed
#: under its service (as a service of their own, no worker served them).
MAPPING_BUILTINS = ("celery.map", "celery.starmap", "celery.chunks")

logger = logging.getLogger(__name__)

#: Per thread: (weak reference to a request, its JobContext), for ``EmpTask.job``.
_last_job = threading.local()


class Requeued(Reject):
    """A run given back because the queue's Redis could not take its writes; its message
    says which job and why."""


class Replaced(Ignore):
    """A run that replaced itself (``EmpTask.replace``): its job was refiled as the
    replacement's run, so Celery stores nothing for this one."""


def replacement_options(context: JobContext, sig: Signature, task: Any) -> dict[str, Any]:
    """What a replacement of the job keeps: its pool, customer, workflow and priority.

    Read from the job record (the run's request carries none of them); InvalidJob when
    the replacement ``sig`` (of job type ``task``) names another, before anything is
    written. A job is refiled in its own pool only: its record, events and attempt
    fence live there."""
    options = sig.options
    functions = context.functions
    kept = dict(zip(KEPT_FIELDS, functions.client.hmget(functions.keys.job(context.job_id),
                                                        *KEPT_FIELDS), strict=True))
    # A field the job lacks is kept too (None): a replacement naming a customer or
    # workflow would be filed under a class the record does not say.
    kept = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in kept.items()}
    if kept["priority"] is not None:
        kept["priority"] = int(kept["priority"])
    for name, value in kept.items():
        if options.get(name) not in (None, value):
            raise InvalidJob(f"job {context.job_id}: a replacement keeps the job's {name} "
                             f"({value!r}); {options[name]!r} names another (submit a new "
                             "job instead)")
    for named_by, pool in named_pools(task, sig.args, sig.kwargs, dict(options),
                                      options).values():
        if pool not in (None, context.namespace):
            raise InvalidJob(f"job {context.job_id}: a replacement stays in the job's pool "
                             f"{context.namespace!r}; {named_by} names pool {pool!r} (submit "
                             "a new job to that pool instead)")
    return {**kept, "queue": context.namespace, "pool": None}


def _said(named: NamedPool) -> str:
    """How a message names where a pool was given: ``queue='a'``, ``requirements.pool='b'``,
    ``the queue option of task 't' ('a')``."""
    by = named.named_by.rstrip("=")
    return f"{by}={named.pool!r}" if " " not in by else f"{by} ({named.pool!r})"


def _check_new_pool(pool: str, named_by: str) -> str:
    """``pool``, or InvalidJob naming what named it (Celery's queue options are EMP pools,
    which a submit may make: only a name a URL can carry, ``check_new_pool``)."""
    try:
        return check_new_pool(pool, named_by)
    except ValueError as exc:
        raise InvalidJob(str(exc)) from None


#: Record fields a replacement keeps (``replacement_options``).
KEPT_FIELDS = ("customer_id", "workflow_id", "priority")


class _RequeueWithoutTraceback(logging.Filter):
    """Celery logs every rejection with its traceback (its log policy for ``Reject``):
    while Redis is full or away that was 20 lines per running job, each saying only what
    the rejection's own line says. Drops the traceback of ours, keeps the line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], Requeued):
            record.exc_info, record.exc_text = None, None
        return True


logging.getLogger("celery.app.trace").addFilter(_RequeueWithoutTraceback())


def _check_retries(retries: Any) -> None:
    """Refuse a new job's ``retries`` (Celery's count of the runs before this one) that is
    not a whole number >= 0: a message saying -1 ran as a retry of nothing, and its
    task's first retry then failed the job with a KeyError."""
    if retries is not None and (isinstance(retries, bool) or not isinstance(retries, int)
                                or retries < 0):
        raise InvalidJob(f"retries must be a whole number >= 0, got {retries!r}")


class EmpTask(Task):
    """Base class of every EMP job type."""

    #: The service (job type) this task implements; defaults to the task name.
    service: str | None = None

    #: Size features of its payload for the duration model: field -> the amount of it
    #: that is one work unit (e.g. ``{"steps": 1, "width": 1024, "height": 1024}``).
    #: Jobs of one service, model set and present features share a learnt estimate
    #: per unit (``capability_router.duration``). None: every job is one unit.
    duration_features: Mapping[str, float] | None = None
    #: Where those features are: payload -> flat size fields (a ``staticmethod``), for a
    #: job type whose size sits deeper than the payload's top level (a ComfyUI
    #: workflow's sampler and latent nodes). None: the payload's own fields.
    duration_fields: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None
    #: Get the job's catalog models onto the machine before it starts (a cold start,
    #: ``emp_tasks.model_prep``); for job types that run on a GPU service.
    prepares_models: bool = False

    #: A cancel ends the run (as REVOKED), whatever a job type's ``autoretry_for`` says.
    dont_autoretry_for = (JobCancelled,)

    #: Always: a job's message is acknowledged when its run ended. The ack is what tells
    #: the queue a run ended (without an outcome: crashed), and the lease is renewed
    #: until then; acknowledged at the start, a job would be failed while it runs.
    acks_late = True

    #: A hard time limit fails the job before Celery stores the result, as every other
    #: outcome is (``emp_tasks.hard_time_limit``).
    Request = "emp_tasks.hard_time_limit:EmpRequest"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # read through the method order: a user's base class mixed in before EmpTask
        # (emp_tasks.task_bases) may say False
        if cls.acks_late is False:
            logger.warning("task %s: acks_late=False is ignored; EMP acknowledges a job when "
                           "its run ends (a crashed run is retried through its lease)",
                           cls.__dict__.get("name") or cls.__name__)
            cls.acks_late = True

    @property
    def service_name(self) -> str:
        return self.service or self.name

    # -- producer side --------------------------------------------------------

    def service_of(self, kwargs: Any) -> str:
        """The service a job of this task with ``kwargs`` is filed under: its own, or for
        Celery's ``map``/``starmap``/``chunks`` the service of the task they run."""
        mapped = (kwargs or {}).get("task") if self.name in MAPPING_BUILTINS else None
        if self.service is None and isinstance(mapped, Mapping) and mapped.get("task"):
            return job_type(self.app, str(mapped["task"])).service_name
        return self.service_name

    def job_spec(self, args: Any, kwargs: Any, options: dict[str, Any]) -> JobSpec:
        """Build and validate the job spec; raises InvalidJob, sending nothing."""
        payload = dict(kwargs or {})
        if args:
            payload["args"] = list(args)
        fields = {k: options.pop(k) for k in JOB_OPTIONS if k in options}
        fields = {k: v for k, v in fields.items() if v is not None}
        _check_retries(options.get("retries"))
        named = named_pools(self, args, kwargs, options, fields, routes=False)
        queues = [n for n in (named["queue"], named["task queue"]) if n.pool is not None]
        if queues:  # the call's queue, else the task's
            named_by, queue = queues[0]
            _check_new_pool(queue, named_by.rstrip("="))
            # Filed in the queue while the record named another pool, the job was lost
            # to both (``emp_tasks.celery_queue``).
            for other in (named["pool"], named["requirements.pool"]):
                if other.pool is not None and other.pool != queue:
                    raise InvalidJob(f"{_said(queues[0])} and {_said(other)} name two "
                                     "pools; a job is filed in one (queue is Celery's "
                                     "name for it)")
            fields.setdefault("pool", queue)
        elif "route" in named and named["route"].pool is not None:  # a task_routes route
            fields["pool"] = _check_new_pool(named["route"].pool, named["route"].named_by)
        # The task's own defaults, as Celery applies them to a call that names none.
        if "priority" not in fields and self.priority is not None:
            fields["priority"] = self.priority
        if "max_retries" not in fields:
            fields["max_retries"] = self.default_max_retries()
        spec = JobSpec(service=self.service_of(kwargs), payload=payload, **fields)
        # the payload's own size fields; sizes read from deeper (a ComfyUI workflow's
        # nodes) are the job type's to judge, and not named ``payload.<field>``
        if self.duration_features and (self.duration_fields is None
                                       or self.duration_fields(payload) is payload):
            check_size_fields(payload, self.duration_features)
        with tracing.span("routing") as span:  # inside the submit span; nothing when off
            spec = place(self.app, spec, self.duration_features, self.duration_fields)
            if span is not None:
                span.set_attribute(tracing.POOL, spec.pool)
                span.set_attribute("emp.routing", (spec.routing or {}).get("routing", ""))
        return spec

    def default_max_retries(self) -> int:
        """The retry limit of a job whose submit names none: the one Celery's autoretry
        passes to every retry it makes (``retry_kwargs``, read only with
        ``autoretry_for``), else the task's ``max_retries`` (None, "for ever", is the
        most a job may have). The record said the task's 3 until the first retry."""
        if getattr(self, "autoretry_for", None):
            named = (getattr(self, "retry_kwargs", None) or {}).get("max_retries")
            if named is not None:
                return int(named)
        return MAX_RETRIES_LIMIT if self.max_retries is None else self.max_retries

    def apply_async(self, args: Any = None, kwargs: Any = None, task_id: str | None = None,
                    **options: Any) -> Any:
        """Celery's apply_async, plus the job keywords in ``JOB_OPTIONS``.

        With tracing on, a new job's submit is its trace's root span (``emp_tasks.tracing``).
        """
        tracer = tracing.job_tracer()
        if task_id is None and HEADER not in (options.get("headers") or {}):
            task_id = uuid()  # a new job's id made here: no other job can have it
            options["headers"] = {**(options.get("headers") or {}), NEW_ID_HEADER: task_id}
        if tracer is None or HEADER in (options.get("headers") or {}):
            return self._apply_async(args, kwargs, task_id, None, **options)
        with tracer.root(task_id, attributes={tracing.SERVICE: self.service_name}) as span:
            return self._apply_async(args, kwargs, task_id, span, **options)

    def _apply_async(self, args: Any, kwargs: Any, task_id: str | None, span: Any,
                     **options: Any) -> Any:
        headers = dict(options.pop("headers", None) or {})
        if HEADER not in headers:
            if self.app.conf.task_always_eager and task_id:  # runs here, nothing filed:
                submittable_job_id(task_id)  # check the id as the enqueue would
            headers[HEADER] = self.job_spec(args, kwargs, options).header()
            if span is not None:
                span.set_attribute(tracing.POOL, headers[HEADER]["pool"])
        else:
            # A retry (or a re-send) carries the job's header already; Celery's
            # retry passes ``priority`` too, which must not rebuild the header
            # and lose the job's own max_retries and pool. The priority stays a
            # message property: the retried run's ``delivery_info`` reads it.
            for key in JOB_OPTIONS:
                if key != "priority":
                    options.pop(key, None)
        options["queue"] = options.get("queue") or headers[HEADER]["pool"]
        skip_redundant_declare(self.app, options)
        return super().apply_async(args, kwargs, task_id=task_id, headers=headers, **options)

    # -- worker side ----------------------------------------------------------

    @property
    def job(self) -> JobContext | None:
        """The job this execution runs for (None when run eagerly).

        Kept for the request it was built from (Celery's per-run ``Context``, a new
        one for each run, retry and ``push_request``), per thread: a connector job
        reads it at every progress report, and building it (the broker URL, the
        functions) cost ~10 µs each time.
        """
        request = self.request
        kept = getattr(_last_job, "kept", None)
        if kept is not None and kept[0]() is request:
            return kept[1]
        context = job_context(self)
        _last_job.kept = (weakref.ref(request), context) if context is not None else None
        return context

    def progress(self, percent: float, message: str | None = None, **details: Any) -> None:
        """Report progress; raises JobCancelled when the job was cancelled."""
        report_progress(self.job, percent, message, **details)

    def update_state(self, task_id: str | None = None, state: str | None = None,
                     meta: Any = None, **kwargs: Any) -> None:
        """Celery's ``update_state``; a ``PROGRESS`` state of this run whose meta gives a
        ``percent``, or ``current`` of ``total``, is also the job's progress (its record,
        ``update_job_progress`` event, sockets and webhooks), the meta its details. Like
        ``progress()``, it then raises JobCancelled when the job was cancelled."""
        super().update_state(task_id, state, meta, **kwargs)
        own = task_id is None or task_id == self.request.id
        percent = percent_of_meta(meta) if state == PROGRESS_STATE and own else None
        if percent is not None and self.job is not None:
            details = {k: v for k, v in meta.items() if isinstance(k, str) and k != "percent"}
            report_progress(self.job, percent, None, **details)

    def is_cancelled(self) -> bool:
        return is_cancelled(self.job)

    def check_cancelled(self) -> None:
        check_cancelled(self.job)

    def prepare(self, context: JobContext) -> AbstractContextManager[Any]:
        """What runs before the job starts, held until it ends: its models onto the
        machine for a type that ``prepares_models`` (``emp_tasks.model_prep``)."""
        if not self.prepares_models:
            return nullcontext()
        from emp_tasks.model_prep import models_ready

        return models_ready(self, context)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the job: prepare, start, then complete or fail, each fenced by the attempt.

        Preparing (a cold start) happens while the job is still assigned; the
        start ends it. The outcome is recorded here, before Celery stores the
        result, so a caller whose ``AsyncResult.get()`` returned reads a
        finished record. A run that learns its job was cancelled ends as
        Celery's REVOKED. An outcome the record refuses is stored nowhere: the
        run ends with ``Ignore`` (REVOKED if the job was cancelled).
        """
        context = self.job
        if context is None:
            return super().__call__(*args, **kwargs)
        try:
            return self._run(context, *args, **kwargs)
        except STORE_UNREACHABLE as exc:
            # Reject's requeue goes through emp_requeue (bounded by max_attempts); when
            # Redis is still away the lease lapses and the sweep requeues the job.
            raise Requeued(f"job {context.job_id}: the queue's Redis was unreachable or "
                           f"refused writes ({type(exc).__name__}: {exc}); requeued",
                           requeue=True) from None

    def _run(self, context: JobContext, *args: Any, **kwargs: Any) -> Any:
        task_id = self.request.id
        profile = (self.app.conf.broker_transport_options or {}).get("worker_profile") or {}
        hostname, machine_id = self.request.hostname or "", profile.get("machine_id") or ""
        # With tracing on: the wait span, and the attributes of this run's spans.
        traced = tracing.record_wait(
            context, self.service_name, profile.get("worker_id") or hostname, machine_id,
        ) if tracing.job_tracer() is not None else None
        with ExitStack() as held:
            held.enter_context(lease_kept(self.app, context))  # solo pool: nothing else renews
            with tracing.span("preparing", task_id, traced):
                self._recorded(context, lambda: held.enter_context(self.prepare(context)))
            outcome = context.functions.start(task_id, context.attempt, hostname, machine_id)
            if outcome == JobStatus.CANCELLED:  # cancelled after the claim, before the start
                raise end_cancelled_run(context)
            if outcome != "ok":
                raise Ignore(f"job {task_id} is {outcome}; not running it")
            with tracing.span("run", task_id, traced):
                retval = self._recorded(context, lambda: self._storable(
                    super(EmpTask, self).__call__(*args, **kwargs)))
        outcome = context.functions.complete(task_id, context.attempt, retval,
                                             load_ms=load_ms_of(retval))
        if outcome != "ok" and not recorded_already(context, outcome, JobStatus.COMPLETED) \
                and not record_lost(context, outcome):
            # Refused (fenced off, or cancelled): Celery keeps the first SUCCESS it
            # stores, so this run's value would hide the outcome of the attempt that
            # holds the job.
            raise end_cancelled_run(context)
        return retval

    def _storable(self, retval: Any) -> Any:
        """``retval``, once the result backend can store it; otherwise the error Celery's
        store would raise (EncodeError), so the record fails as Celery's FAILURE says
        rather than saying ``completed`` beside it."""
        if not self.ignore_result and not isinstance(self.backend, DisabledBackend):
            serialize(retval, serializer=self.app.conf.result_serializer)
        return retval

    def _recorded(self, context: JobContext, step: Callable[[], Any]) -> Any:
        """Run ``step``; a failure is recorded on the job (fenced) before it propagates."""
        try:
            return step()
        except Replaced:
            raise  # the job runs the replacement now (emp_replace recorded it)
        except Ignore as exc:
            # The task asked Celery to store no state; the job still ends, and says why
            # (the ack would call it a crash). Fenced: refused once the attempt was taken
            # away or the job cancelled (the Ignore of end_cancelled_run).
            context.functions.fail(self.request.id, context.attempt,
                                   f"the task raised Ignore ({exc or 'no reason'}): Celery "
                                   "stores no outcome for it")
            raise
        except (Retry, Reject):
            raise
        except JobCancelled:
            # Recorded already by the cancel; ends as a revoked task, not a failure.
            raise end_cancelled_run(context) from None
        except STORE_UNREACHABLE:
            raise  # nothing can be recorded now: __call__ requeues the job
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            outcome = context.functions.fail(self.request.id, context.attempt, error)
            if outcome != "ok" and not recorded_already(context, outcome, JobStatus.FAILED,
                                                        error) \
                    and not record_lost(context, outcome):
                raise end_cancelled_run(context) from None  # refused: store no FAILURE
            # The pool process pickles the exception back to the worker: one holding a
            # lock or a socket would turn the recorded failure into a MaybeEncodingError.
            pickleable = get_pickleable_exception(exc)
            if pickleable is not exc:
                raise pickleable from None
            raise

    def replace(self, sig: Any) -> Any:
        """Celery's replace: in a job, the same job is refiled as the replacement's run.

        A job's id is filed once (its record, events and attempt fencing belong to
        it), so the replacement does not become a new job under this id: this
        attempt ends and the job goes back to pending running ``sig``'s task with
        its arguments, filed as a submit of that task would be (service and
        requirements), in the job's pool, keeping its customer, workflow and
        priority, and the chain, callbacks and chord Celery carries over
        (``emp_replace``). A group, chord or chain is refused before anything is
        written (``ReplaceUnsupported``), as is a task no job type has or a signature
        naming another customer, workflow, priority or pool (``InvalidJob``); a run
        whose attempt was taken away changes nothing and ends quietly. Run eagerly (no
        job), it is Celery's own replace."""
        context = self.job
        if context is None:
            return super().replace(sig)
        sig = signature(sig, app=self.app)
        if isinstance(sig, (group, chord, _chain)) or type(sig) is not Signature:
            raise ReplaceUnsupported(
                f"job {context.job_id}: Task.replace() with a {type(sig).__name__} is not "
                f"supported in EMP jobs ({self.name} -> {sig!r}): a job is refiled as one "
                "task's run, and Celery would give its id to a task that another job's run "
                "files later; replace it with one task signature, or submit the "
                f"{type(sig).__name__} as jobs of their own")
        task = job_type(self.app, sig.task)  # InvalidJob, nothing written, if unknown
        sig.set(**replacement_options(context, sig, task))
        sig.set(headers={**(sig.options.get("headers") or {}), ATTEMPT_HEADER: context.attempt,
                         REPLACES_HEADER: self.name})
        return super().replace(sig)

    def on_replace(self, sig: Any) -> Any:
        """Send the replacement; in a job, end this run with ``Replaced`` (an ``Ignore``
        that records nothing: the job is pending again, running the replacement)."""
        context = self.job
        if context is None:
            return super().on_replace(sig)
        try:
            sig.delay()
        except ReplaceRefused:
            raise end_cancelled_run(context) from None  # the attempt no longer holds the job
        raise Replaced(f"job {context.job_id} replaced by {sig!r}")

    def retry(self, args: Any = None, kwargs: Any = None, exc: BaseException | None = None,
              throw: bool = True, eta: Any = None, countdown: Any = None,
              max_retries: int | None = None, **options: Any) -> Any:
        """Celery's retry; the job waits in Redis, keeping its place in line."""
        context = self.job
        named_max = max_retries
        if max_retries is None:
            job_max = (getattr(self.request, HEADER, None) or {}).get("max_retries")
            if job_max is not None:
                max_retries = int(job_max)
        if context is not None:
            queue = options.get("queue")
            if queue and queue != context.namespace:
                # The record, its events and the attempt fence live in the job's pool; a
                # retry filed in another was refused there, failing the job with no result.
                raise InvalidJob(
                    f"job {context.job_id}: a retry stays in the job's pool "
                    f"{context.namespace!r}; queue={queue!r} names another (submit a new "
                    "job to that pool instead)")
            headers = dict(options.pop("headers", None) or {})
            headers[ATTEMPT_HEADER] = context.attempt
            headers["emp_error"] = f"{type(exc).__name__}: {exc}" if exc else ""
            spec = getattr(self.request, HEADER, None)
            if named_max is not None:  # the record shows what this retry allows
                headers[MAX_RETRIES_HEADER] = named_max
                # and so does the next message: a later retry naming no limit read the
                # message's again, and the job ran fewer times than its record said
                spec = {**spec, "max_retries": named_max} if spec else spec
            headers[HEADER] = spec
            options["headers"] = headers
        try:
            return super().retry(args, kwargs, exc=exc, throw=throw, eta=eta,
                                 countdown=countdown, max_retries=max_retries, **options)
        except Reject as reject:
            # Celery wraps a failed send in Reject, which it would store as FAILURE; a
            # refused retry is an outcome of a run that no longer holds the job.
            if context is not None and isinstance(reject.reason, RetryRefused):
                raise end_cancelled_run(context) from None
            raise
        finally:
            # Celery keeps this on the task object, which every job of the type shares, and
            # autoretry clears it only after a retry that was sent: one job's limit would
            # become the next job's.
            self.__dict__.pop("override_max_retries", None)


def load_ms_of(retval: Any) -> int:
    """Milliseconds of the run its service spent loading models, as a connector's result
    reports them (``load_seconds``); 0 when it says nothing."""
    try:
        seconds = float(retval.get("load_seconds") or 0) if isinstance(retval, Mapping) else 0.0
    except (TypeError, ValueError):
        return 0
    return int(seconds * 1000) if 0 < seconds < 86_400 else 0


__all__ = ["EmpTask"]
