"""The API's OpenAPI 3.0 document: what clients read, and what requests are checked against.

One document, built from the code's own constants (job states, limits, the
registered services), is served at ``/api/openapi.json`` and handed to
``validation`` for request bodies and query strings, so the description
and the server cannot drift apart.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from flask import Blueprint, current_app, jsonify

from capability_router.pool_metrics import HIT_KINDS, WINDOWS
from capability_router.states import JobStatus
from emp_tasks.producer import services
from webapp.backend import backend
from webapp.outage import ungated

blueprint = Blueprint("openapi", __name__)

#: Job and customer ids, service and workflow names (``capability_router.jobspec``).
NAME_PATTERN = r"^[A-Za-z0-9_.:\-]{1,128}$"
#: Job ids and pool names a URL path cannot carry (``_submission``).
DOT_SEGMENTS = [".", ".."]
DOT_SEGMENT_ERROR = ("'.' and '..' cannot be job ids: HTTP clients drop such a path "
                     "segment, so /api/jobs/<id> could never reach the job")
POOL_DOT_SEGMENT_ERROR = ("'.' and '..' cannot be pool names: HTTP clients drop such a "
                          "path segment, so /api/pools/<pool> could never reach the pool")
#: The same, or empty: an empty query parameter means "no filter".
FILTER_PATTERN = r"^[A-Za-z0-9_.:\-]{0,128}$"
#: Pool names (``capability_router.keys``).
POOL_PATTERN = r"^[A-Za-z0-9_.\-]{1,64}$"
#: Page sizes of the job listing.
MAX_LIMIT = 500
DEFAULT_LIMIT = 50
#: Deepest page offset of the job listing.
MAX_OFFSET = 1_000_000

ERROR_REF = {"$ref": "#/components/schemas/Error"}
RETRY_AFTER = {"description": "Seconds to wait.", "schema": {"type": "integer", "minimum": 1}}
JOB_STATES = [status.value for status in JobStatus]


def package_version() -> str:
    try:
        return metadata.version("emp-job-queue")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


def _submission(service_names: list[str]) -> dict[str, Any]:
    service = {"type": "string", "enum": service_names, "nullable": True}
    name = {"type": "string", "pattern": NAME_PATTERN, "nullable": True}
    obj = {"type": "object", "nullable": True}
    # /api/jobs/. and /api/jobs/.. are dot segments, which HTTP clients remove (RFC 3986
    # 5.2.4): a job with such an id could never be read or cancelled by its URL.
    job_id = {**name, "not": {"enum": DOT_SEGMENTS}, "x-error": DOT_SEGMENT_ERROR}

    def integer(low: int, high: int, description: str) -> dict[str, Any]:
        return {"type": "integer", "minimum": low, "maximum": high, "nullable": True,
                "description": description}

    return {
        "type": "object",
        "description": "A job. One of service_required, job_type or type names its service.",
        "additionalProperties": False,
        "anyOf": [{"required": [alias]} for alias in ("service_required", "job_type", "type")],
        "x-error": "service_required is required (or its alias job_type or type)",
        # Two ids for one job: which one was meant cannot be known, so neither is guessed.
        "allOf": [{"not": {"required": ["message_id", "job_id"],
                           "properties": {"message_id": {"type": "string"},
                                          "job_id": {"type": "string"}}},
                   "x-error": "message_id and job_id both name the job id; send one"}],
        "properties": {
            "service_required": {**service, "description": "The service (job type) to run."},
            "job_type": {**service, "description": "Alias of service_required (must agree)."},
            "type": {**service, "description": "Alias of service_required (must agree)."},
            "priority": integer(0, 100, "Higher runs first; default 50."),
            "payload": {**obj, "description": "The job's input, handed to the task."},
            "requirements": {**obj, "description": (
                "What a worker must have: hardware, models, customer_isolation, "
                "custom capabilities; 'pool' picks the queue namespace.")},
            "customer_id": {**name, "description": (
                "Owner of the job; a customer token's own id by default.")},
            "max_retries": integer(0, 100, "Task retries allowed; default 3."),
            "workflow_id": name,
            "workflow_priority": integer(0, 100, "Replaces priority for ordering."),
            "workflow_datetime": {
                "nullable": True,
                "description": "Epoch seconds or ms, or ISO-8601; replaces submit time for "
                               "ordering.",
                "anyOf": [{"type": "integer", "minimum": 0, "maximum": 10**13 - 1},
                          {"type": "string", "format": "date-time"}],
            },
            "current_step": integer(0, 10**6, "This job's step in its workflow."),
            "total_steps": integer(0, 10**6, "Steps of its workflow."),
            "ctx": {**obj, "description": "Storage context, kept apart from the payload."},
            # A submit naming a pool may make it (an admin's): not a dot segment, as ids.
            "pool": {"type": "string", "pattern": POOL_PATTERN, "nullable": True,
                     "not": {"enum": DOT_SEGMENTS}, "x-error": POOL_DOT_SEGMENT_ERROR,
                     "description": "Queue namespace (pool); a customer token may name "
                                    "only one that exists. Unset: the router's choice when "
                                    "a pools file is configured (EMP_POOLS_FILE), else "
                                    "'default'. Not '.' or '..': HTTP clients drop such a "
                                    "path segment."},
            "message_id": {**job_id, "description": (
                "Becomes the job id (default: a UUID); each customer's ids are its own. "
                "Not '.' or '..': HTTP clients drop such a path segment.")},
            "job_id": {**job_id, "description": "Alias of message_id; send one of the two."},
        },
    }


def _schemas(service_names: list[str]) -> dict[str, Any]:
    success = {"type": "boolean", "enum": [True]}
    strings = {"type": "array", "items": {"type": "string"}}
    return {
        "Error": {
            "type": "object", "required": ["success", "error"],
            "properties": {"success": {"type": "boolean", "enum": [False]},
                           "error": {"type": "string"},
                           "job_status": {"type": "string", "enum": JOB_STATES,
                                          "description": "With 409: the job's state."},
                           "job_id": {"type": "string",
                                      "description": "With 409 to an Idempotency-Key retry: "
                                                     "the job it filed, since removed."}},
        },
        "Limited": {
            "type": "object", "required": ["success", "error", "limit"],
            "properties": {"success": {"type": "boolean", "enum": [False]},
                           "error": {"type": "string"},
                           "limit": {"type": "string",
                                     "enum": ["rate", "pending", "classes"],
                                     "description": "Which limit: submissions per second "
                                                    "(EMP_LIMIT_RATE/BURST), unfinished "
                                                    "jobs (EMP_LIMIT_PENDING) or their "
                                                    "requirement classes "
                                                    "(EMP_LIMIT_CLASSES)."}},
        },
        "JobSubmission": _submission(service_names),
        "Submitted": {
            "type": "object", "required": ["success", "job_id", "message", "timestamp"],
            "properties": {"success": success, "job_id": {"type": "string"},
                           "message": {"type": "string"},
                           "timestamp": {"type": "string", "format": "date-time"},
                           "warnings": {
                               "type": "array", "items": {"type": "string"},
                               "description": "Present when the job was filed but may "
                                              "wait: it names a pool that the pools file "
                                              "does not name and no live worker serves "
                                              "(it waits until one does), or requires "
                                              "a model the catalog does not list and no "
                                              "live worker of its pool reports. The client "
                                              "socket's job_submitted answer to a "
                                              "submit_job carries the same."}},
        },
        "Job": {
            "type": "object", "required": ["job_id", "status"],
            "description": "The job record. Times are epoch ms.",
            "properties": {
                "job_id": {"type": "string"},
                "status": {"type": "string", "enum": JOB_STATES},
                "service_required": {"type": "string"},
                "priority": {"type": "integer"},
                "customer_id": {"type": "string"},
                "workflow_id": {"type": "string"},
                "pool": {"type": "string"},
                "payload": {"type": "object"},
                "requirements": {"type": "object"},
                "attempts": {"type": "integer"},
                "retries": {"type": "integer", "description": (
                    "Retries of the task it runs now (its request.retries); a replace "
                    "starts them again at 0, as Celery's new message does.")},
                "service_releases": {"type": "integer", "description": (
                    "Times its service refused it before it ran (a down or restarting "
                    "service): it went back to pending, spending no retry.")},
                "unreceived": {"type": "integer", "description": (
                    "Claims its worker never received (the reply lost on a cut "
                    "connection): given back at once, spending no attempt.")},
                "max_retries": {"type": "integer"},
                "created_at": {"type": "integer"},
                "progress": {"type": "number"},
                "worker_id": {"type": "string"},
                "last_error": {"type": "string", "description": (
                    "Why the job failed or was cancelled, or why its last attempt ended "
                    "while it waits again; absent once it completed (every attempt's "
                    "error stays in its events).")},
                "result": {"description": "What the task returned (when completed)."},
                "preparing": {"type": "object", "description": (
                    "While an assigned job's worker gets its models ready (a cold start): "
                    "{model, tier, bytes_done, bytes_total, eta_seconds}; gone once it runs.")},
                "escalations": {"type": "array", "items": {"type": "object"}, "description": (
                    "Runs that ran out of GPU memory and were filed again with a raised "
                    "hardware.gpu_memory_gb: {from_gb, to_gb, worker_id, attempt, at, "
                    "error}, oldest first.")},
                "replaced": {"type": "array", "items": {"type": "object"}, "description": (
                    "Runs whose task replaced itself (Celery's Task.replace): the same job "
                    "ran the replacement next, {from_task, to_task, from_service, "
                    "to_service, attempt, retries (the replaced task's), at}, oldest "
                    "first.")},
                "replaces": {"type": "integer", "description": (
                    "How many runs replaced themselves; they spend no attempt.")},
                "replaced_retries": {"type": "integer", "description": (
                    "Retries of the tasks it replaced, together; they spend no attempt.")},
                "routing": {
                    "type": "object", "description": (
                        "Where the router filed the job and why (routing on: "
                        "EMP_POOLS_FILE set)."),
                    "properties": {
                        "pool": {"type": "string"},
                        "predicted_seconds": {"type": "number"},
                        "predicted_from": {"type": "string", "enum": ["prior", "learned"],
                                           "description": (
                            "prior: the pools file's [priors] guess (no run of this kind "
                            "completed yet); learned: from learned_runs completed runs.")},
                        "learned_runs": {"type": "integer"},
                        "reason": {"type": "string"},
                        "alternatives": {"type": "array", "items": {
                            "type": "object", "properties": {
                                "pool": {"type": "string"}, "note": {"type": "string"},
                                "expected_wait_seconds": {"type": "number",
                                                          "nullable": True}}}},
                    },
                },
                "predicted_ms": {"type": "integer",
                                 "description": "Predicted run time (duration model)."},
                "duration_key": {"type": "string", "description": (
                    "What the duration model learns this job's run time under: service, "
                    "models, size features.")},
                "work_units": {"type": "number"},
            },
        },
        "Pools": {
            "type": "object", "required": ["success", "routing", "pools"],
            "properties": {
                "success": success,
                "routing": {"type": "boolean", "description": "EMP_POOLS_FILE is set."},
                "pools_file": {"type": "string", "nullable": True},
                "pools_file_error": {"type": "string", "nullable": True, "description": (
                    "Why the pools file as it is now on disk was refused (naming the file "
                    "and the field); routing and this answer keep its last good version. "
                    "null when the file in force is the file on disk.")},
                "spill_wait_seconds": {"type": "number", "nullable": True},
                "pools": {"type": "array", "items": {
                    "type": "object",
                    "required": ["name", "configured", "workers", "pending", "live_workers",
                                 "idle_workers", "unfinished_seconds",
                                 "expected_wait_seconds", "live_machines",
                                 "desired_machines"],
                    "properties": {
                        "name": {"type": "string"},
                        "configured": {"type": "boolean",
                                       "description": "The pools file names it."},
                        "description": {"type": "string"},
                        "order": {"type": "integer"},
                        "gpu": {"type": "boolean"},
                        "gpu_memory_gb": {"type": "array", "items": {"type": "number"}},
                        "storage_gb": {"type": "number"},
                        "durations_seconds": {"type": "array", "items": {"type": "number"}},
                        "services": strings, "preload_models": strings,
                        "price_per_hour": {"type": "number"},
                        "workers": strings,
                        "pending": {"type": "integer", "minimum": 0},
                        "live_workers": {"type": "integer", "minimum": 0},
                        "idle_workers": {"type": "integer", "minimum": 0},
                        "unfinished_seconds": {"type": "number", "description": (
                            "Predicted seconds of its unfinished jobs.")},
                        "expected_wait_seconds": {
                            "type": "number", "nullable": True, "description": (
                                "0 with an idle worker, else unfinished seconds per live "
                                "worker; null without a live worker.")},
                        "scaling": {"type": "object", "description": (
                            "The pool's [pools.<name>.scaling] settings, defaults filled in."),
                            "properties": {
                                "min_machines": {"type": "integer", "minimum": 0},
                                "max_machines": {"type": "integer", "minimum": 0},
                                "workers_per_machine": {"type": "integer", "minimum": 1},
                                "wait_target_seconds": {"type": "number"},
                                "startup_seconds": {"type": "number"},
                                "target_utilization": {"type": "number"}}},
                        "live_machines": {"type": "integer", "minimum": 0, "description": (
                            "Machines behind its live workers (distinct machine ids).")},
                        "desired_machines": {"type": "integer", "minimum": 0, "description": (
                            "Machines the pool should have now: the forecast load at the "
                            "target utilization plus the pending predicted work cleared "
                            "within the wait target, within [min, max] (README, \"Model "
                            "intelligence and elastic pools\").")},
                        "forecast_arrivals_per_second": {"type": "number", "description": (
                            "The intelligence leader's forecast (0 while none runs).")},
                    },
                }},
            },
        },
        "PoolMetrics": _pool_metrics_schema(success),
        "JobFound": {
            "type": "object", "required": ["success", "job"],
            "properties": {"success": success, "job": _ref("Job")},
        },
        "JobList": {
            "type": "object", "required": ["success", "jobs", "total", "limit", "offset"],
            "properties": {
                "success": success, "jobs": {"type": "array", "items": _ref("Job")},
                "total": {"type": "integer", "minimum": 0},
                "limit": {"type": "integer"}, "offset": {"type": "integer"},
            },
        },
        "JobStatusChange": {
            "type": "object", "required": ["success", "job_id", "status"],
            "properties": {"success": success, "job_id": {"type": "string"},
                           "status": {"type": "string", "enum": JOB_STATES}},
        },
        "Health": {
            "type": "object", "required": ["status", "redis"],
            "properties": {"success": {"type": "boolean"},
                           "status": {"type": "string", "enum": ["ok", "error"]},
                           "redis": {"type": "string", "enum": ["ok", "unreachable"]},
                           "error": {"type": "string"}},
        },
        "Version": {
            "type": "object", "required": ["success", "version", "library_version"],
            "properties": {
                "success": success, "version": {"type": "string"},
                "library_version": {
                    "type": "string", "nullable": True,
                    "description": "Function library loaded in Redis (null: not loaded yet, "
                                   "or Redis unreachable)."},
                "library_source_version": {"type": "string"},
            },
        },
        "Connections": {
            "type": "object", "required": ["success", "clients", "monitors"],
            "properties": {"success": success,
                           "clients": {"type": "array", "items": {"type": "object"}},
                           "monitors": {"type": "array", "items": {"type": "object"}}},
        },
        **_model_schemas(success),
        "MachineForgotten": {
            "type": "object", "required": ["success", "machine_id", "workers", "requeued_jobs"],
            "properties": {"success": success, "machine_id": {"type": "string"},
                           "workers": strings, "requeued_jobs": strings},
        },
    }


#: Model names (``capability_router.catalog.MODEL_NAME_RE``).
MODEL_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,127}$"


def _model_schemas(success: dict[str, Any]) -> dict[str, Any]:
    """The model catalog's bodies (``webapp.api.models``)."""
    fields = {
        "url": {"type": "string", "pattern": "^https?://[^/?#]+", "maxLength": 2048,
                "description": "http(s) URL the machines download the file from (read "
                               "with a customer token: password and query as ***)."},
        "size": {"type": "integer", "minimum": 1, "maximum": 1 << 40,
                 "description": "File size, bytes."},
        "sha256": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$",
                   "description": "Hex SHA-256 of the file; a download that does not "
                                  "match is discarded (a model error)."},
    }
    entry = {"type": "object", "required": ["name", "url", "size", "sha256"],
             "properties": {"name": {"type": "string"}, **fields}}
    return {
        "ModelEntryInput": {"type": "object", "required": ["url", "size", "sha256"],
                            "additionalProperties": False,
                            "properties": {"name": {"type": "string",
                                                    "pattern": MODEL_NAME_PATTERN},
                                           **fields}},
        "ModelEntry": entry,
        "ModelList": {"type": "object", "required": ["success", "models"],
                      "properties": {"success": success,
                                     "models": {"type": "array", "items": entry}}},
        "ModelFound": {"type": "object", "required": ["success", "model"],
                       "properties": {"success": success, "model": entry,
                                      "created": {"type": "boolean"}}},
        "ModelDeleted": {"type": "object", "required": ["success", "name", "deleted"],
                         "properties": {"success": success, "name": {"type": "string"},
                                        "deleted": {"type": "boolean", "enum": [True]}}},
    }


def _responses() -> dict[str, Any]:
    return {
        "BadRequest": _json(ERROR_REF, "Malformed input; the error names the field."),
        "Unauthorized": _json(ERROR_REF, "Missing or unknown bearer token."),
        "Forbidden": _json(ERROR_REF, "The token may not do this."),
        "NotFound": _json(ERROR_REF, "No such job (or not the caller's), model, pool or "
                                     "machine, whichever the path names; the error says "
                                     "which."),
        "Conflict": _json(ERROR_REF, "The job's state forbids this; the error says which."),
        "TooLarge": _json(ERROR_REF, "Request body over the size limit."),
        "UnsupportedMediaType": _json(ERROR_REF, "The body must be application/json."),
        "IdTaken": _json(ERROR_REF, "This customer already has a job of this id "
                                    "(message_id or job_id), or the job this "
                                    "Idempotency-Key filed was removed after its pool's "
                                    "retention (job_id); nothing was written."),
        "KeyReused": _json(ERROR_REF, "This Idempotency-Key was first used with another "
                                      "body; nothing was written."),
        "TooMany": {**_json(_ref("Limited"), "Over one of the customer's limits (submission "
                                             "rate, unfinished jobs or their classes); "
                                             "nothing was written."),
                    "headers": {"Retry-After": RETRY_AFTER}},
        # Of every operation that reaches Redis (``webapp.outage``).
        "Unavailable": {**_json(ERROR_REF, "Redis is unreachable, or refuses writes "
                                           "(out of memory, read-only); nothing was "
                                           "written; try again after Retry-After."),
                        "headers": {"Retry-After": RETRY_AFTER}},
    }


def _pool_metrics_schema(success: dict[str, Any]) -> dict[str, Any]:
    """``/api/pools/{name}/metrics``; definitions in ``capability_router.pool_metrics``."""
    numbers = {"type": "array", "items": {"type": "number", "nullable": True}}
    counts = {"type": "array", "items": {"type": "integer", "minimum": 0}}
    figure = {"type": "number", "nullable": True}
    described = {
        "queue_depth": "Pending jobs, the last an observation saw in the minute.",
        "busy": "Jobs assigned or running.",
        "live_workers": "Workers with a live heartbeat in the pool (the live machines' "
                        "GPU slots).",
        "desired": "Desired machines (the scaler's key P..desired); null when absent.",
        "wait_p95_seconds": "95th percentile of claimed jobs' wait, from fixed buckets.",
        "wait_mean_seconds": "Mean wait of claimed jobs.",
        "run_mean_seconds": "Mean run time (started to completed) of completed jobs.",
        "queue_efficiency": "Total wait / total run time (lower is better).",
        "utilization": "Busy worker-seconds / live worker-seconds.",
        "hit_rate": "Claims finding every model in the GPU / claims of jobs with models "
                    "on workers that report a residency.",
        "routing_accuracy": "Routed completions that ran within 2x the predicted time / "
                            "routed completions.",
        "routing_pool_accuracy": "Routed completions that ran in the pool the router chose.",
        "busy_worker_seconds": "", "live_worker_seconds": "",
    }
    series_props: dict[str, Any] = {
        "t": {"type": "array", "items": {"type": "integer"},
              "description": "Start of each minute, ms since the epoch."},
        "claims": counts, "throughput": {**counts, "description": "Jobs completed."},
        "failed": counts, "routed": counts,
        "hits": {"type": "object", "properties": {k: counts for k in HIT_KINDS}},
    }
    for name, text in described.items():
        series_props[name] = {**numbers, **({"description": text} if text else {})}
    totals = {name: figure for name in described}
    totals.update({"claims": {"type": "integer"}, "throughput": {"type": "integer"},
                   "failed": {"type": "integer"}, "routed": {"type": "integer"},
                   "hits": {"type": "object", "additionalProperties": {"type": "integer"}}})
    return {
        "type": "object",
        "required": ["success", "pool", "window", "resolution_seconds", "series", "totals",
                     "now"],
        "properties": {
            "success": success, "pool": {"type": "string"},
            "window": {"type": "string", "enum": list(WINDOWS)},
            "resolution_seconds": {"type": "integer"},
            "from_ms": {"type": "integer"}, "to_ms": {"type": "integer"},
            "series": {"type": "object", "required": ["t"], "properties": series_props},
            "totals": {"type": "object", "properties": totals,
                       "description": "The same figures over the whole window."},
            "now": {"type": "object", "properties": {
                "queue_depth": {"type": "integer"}, "busy": {"type": "integer"},
                "live_workers": {"type": "integer"}, "desired": figure}},
        },
    }


def _r(*codes: str) -> dict[str, Any]:
    names = {"400": "BadRequest", "401": "Unauthorized", "403": "Forbidden", "404": "NotFound",
             "409": "Conflict", "413": "TooLarge", "415": "UnsupportedMediaType",
             "422": "KeyReused", "429": "TooMany", "503": "Unavailable"}
    return {code: {"$ref": f"#/components/responses/{names[code]}"} for code in codes}


#: Said of every query parameter: the code refuses a repeated one (``validation.query``).
ONCE = " Given at most once: a repeated parameter is 400 naming it."


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    """A query parameter; one value (a repeat is refused, not partly used)."""
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description + ONCE}


def _path(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True,
            "schema": {"type": "string", "minLength": 1}, "description": description}


def _listing_parameters() -> list[dict[str, Any]]:
    text = {"type": "string", "pattern": FILTER_PATTERN}
    return [
        _query("status", {"type": "string", "enum": ["", *JOB_STATES]}, "Only jobs in this state."),
        _query("customer_id", text, "Only this customer's jobs (a customer token: its own)."),
        _query("service", text, "Only jobs of this service."),
        _query("workflow_id", text, "Only jobs of this workflow."),
        _query("pool", {"type": "string", "pattern": r"^[A-Za-z0-9_.\-]{0,64}$"},
               "Only this queue namespace (default: all)."),
        _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT,
                         "default": DEFAULT_LIMIT}, "Page size."),
        _query("offset", {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET,
                          "default": 0}, "Jobs to skip."),
    ]


#: ``POST /api/jobs``'s idempotency header (``webapp.api.idempotency``).
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "schema": {"type": "string", "pattern": "^[!-+\\--~]{1,255}$"},
    "description": "Makes a retry safe: within EMP_IDEMPOTENCY_SECONDS (24 h) a request "
                   "with the same key and body gets the first request's answer (status and "
                   "body, also a 4xx) and no second job; the same key with another body "
                   "gets 422; once the job it filed was removed after its pool's retention, "
                   "409 saying so. Keys are per customer; a key holds no comma (a header "
                   "sent twice arrives with its values joined by commas: 400).",
}
REPLAYED = {"description": "true when this answer is the stored answer to an earlier "
                           "request with the same Idempotency-Key.",
            "schema": {"type": "string", "enum": ["true"]}}


#: What a client can do next with a job it submitted (OpenAPI links; schemathesis's
#: stateful run follows them).
SUBMITTED_LINKS = {
    name: {"operationId": operation, "parameters": {"job_id": "$response.body#/job_id"},
           "description": description}
    for name, operation, description in [
        ("ReadJob", "getJob", "Read the job just submitted."),
        ("CancelJob", "cancelJob", "Cancel it."),
        ("RetryJob", "retryJob", "Run it again once it failed or was cancelled."),
    ]
}


def _paths() -> dict[str, Any]:
    job_id = _path("job_id", "The job id.")
    model = {"name": "name", "in": "path", "required": True, "description": "Model name.",
             "schema": {"type": "string", "pattern": MODEL_NAME_PATTERN}}
    public: list[dict[str, Any]] = []
    return {
        "/api/jobs": {
            "post": {
                "operationId": "submitJob", "summary": "Submit a job",
                "parameters": [IDEMPOTENCY_KEY],
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": _ref("JobSubmission")}}},
                "responses": {"201": {**_json(_ref("Submitted"), "Queued."),
                                      "headers": {"Idempotent-Replayed": REPLAYED},
                                      "links": SUBMITTED_LINKS},
                              **_r("400", "401", "403", "413", "415", "422", "429", "503"),
                              "409": {"$ref": "#/components/responses/IdTaken"}},
            },
            "get": {
                "operationId": "listJobs",
                "summary": "List jobs, newest first (by submit time; by the time they entered "
                           "the state when filtering on status alone)",
                "parameters": _listing_parameters(),
                "responses": {"200": _json(_ref("JobList"), "A page of jobs."),
                              **_r("400", "401", "403", "503")},
            },
        },
        "/api/jobs/{job_id}": {
            "get": {
                "operationId": "getJob", "summary": "Read a job", "parameters": [job_id],
                "responses": {"200": _json(_ref("JobFound"), "The job."),
                              **_r("401", "404", "503")},
            },
        },
        "/api/jobs/{job_id}/cancel": {
            "post": {
                "operationId": "cancelJob",
                "summary": "Cancel a pending or running job",
                "parameters": [job_id, _query(
                    "terminate", {"type": "boolean", "default": False},
                    "Also kill the process running it (Celery revoke with terminate).")],
                "responses": {"200": _json(_ref("JobStatusChange"), "Cancelled."),
                              **_r("400", "401", "404", "409", "503")},
            },
        },
        "/api/jobs/{job_id}/retry": {
            "post": {
                "operationId": "retryJob",
                "summary": "Run a failed or cancelled job again under its id",
                "parameters": [job_id],
                "responses": {"200": _json(_ref("JobStatusChange"), "Pending again."),
                              **_r("401", "404", "409", "503")},
            },
        },
        "/api/machines/{machine_id}": {
            "delete": {
                "operationId": "forgetMachine",
                "summary": "Forget a machine: drop its workers, return its jobs to pending "
                           "(admin)",
                "parameters": [_path("machine_id", "The machine id.")],
                "responses": {"200": _json(_ref("MachineForgotten"), "Forgotten."),
                              **_r("401", "403", "404", "503")},
            },
        },
        "/api/pools": {
            "get": {
                "operationId": "listPools",
                "summary": "Pools: the pools file's and those live workers serve, with "
                           "live workers, pending jobs and expected wait",
                "responses": {"200": _json(_ref("Pools"), "The pools."),
                              **_r("401", "503")},
            },
        },
        "/api/pools/{name}/metrics": {
            "get": {
                "operationId": "poolMetrics",
                "summary": "One pool's figures per minute over the last hour or day: queue "
                           "depth, wait p95, throughput, model hit rate, utilization, queue "
                           "efficiency, routing accuracy, live and desired machines",
                "parameters": [
                    {**_path("name", "The pool."),
                     "schema": {"type": "string", "pattern": POOL_PATTERN}},
                    _query("window", {"type": "string", "enum": list(WINDOWS),
                                      "default": "1h"},
                           "How far back: the last hour or the last 24 hours (1-minute "
                           "points either way)."),
                ],
                "responses": {"200": _json(_ref("PoolMetrics"), "The pool's series."),
                              **_r("400", "401", "404", "503")},
            },
        },
        "/api/models": {
            "get": {
                "operationId": "listModels", "summary": "The model catalog",
                "responses": {"200": _json(_ref("ModelList"), "Every entry, by name."),
                              **_r("401", "503")},
            },
        },
        "/api/models/{name}": {
            "get": {
                "operationId": "getModel", "summary": "One catalog entry",
                "parameters": [model],
                "responses": {"200": _json(_ref("ModelFound"), "The entry."),
                              **_r("400", "401", "404", "503")},
            },
            "put": {
                "operationId": "putModel",
                "summary": "Add or replace a catalog entry (admin)",
                "parameters": [model],
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": _ref("ModelEntryInput")}}},
                "responses": {"200": _json(_ref("ModelFound"), "Replaced."),
                              "201": _json(_ref("ModelFound"), "Added."),
                              **_r("400", "401", "403", "413", "415", "503")},
            },
            "delete": {
                "operationId": "deleteModel",
                "summary": "Remove a catalog entry (admin); machines keep their copies "
                           "until their cache evicts them",
                "parameters": [model],
                "responses": {"200": _json(_ref("ModelDeleted"), "Removed."),
                              **_r("400", "401", "403", "404", "503")},
            },
        },
        "/api/connections": {
            "get": {
                "operationId": "listConnections",
                "summary": "Open WebSocket connections (admin)",
                "responses": {"200": _json(_ref("Connections"), "Clients and monitors."),
                              **_r("401", "403", "503")},
            },
        },
        "/health": {
            "get": {
                "operationId": "health", "summary": "Liveness and Redis reachability",
                "security": public,
                "responses": {"200": _json(_ref("Health"), "Up."),
                              "503": _json(_ref("Health"), "Redis unreachable.")},
            },
        },
        "/version": {
            "get": {
                "operationId": "version", "summary": "Package and function library versions",
                "security": public,
                "responses": {"200": _json(_ref("Version"), "Versions.")},
            },
        },
        "/api/openapi.json": {
            "get": {
                "operationId": "openapi", "summary": "This document", "security": public,
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.0 document.")},
            },
        },
    }


def build(service_names: list[str]) -> dict[str, Any]:
    """The document for a server whose Celery app knows ``service_names``."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "EMP Job Queue API", "version": package_version(),
            "description": "Submit capability-matched jobs, read, list, cancel and retry "
                           "them. Errors are {success: false, error}.",
        },
        "paths": _paths(),
        "components": {
            "schemas": _schemas(service_names),
            "responses": _responses(),
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer",
                               "description": "EMP_API_TOKENS (one customer's jobs) or "
                                              "EMP_ADMIN_TOKENS (everything); none set: open."},
                "queryToken": {"type": "apiKey", "in": "query", "name": "token",
                               "description": "The same token as ?token=, for clients that "
                                              "cannot set headers; given at most once (a "
                                              "repeated one is 400 naming it)."},
            },
        },
        "security": [{"bearerAuth": []}, {"queryToken": []}],
    }


def document() -> dict[str, Any]:
    """The current app's document, built once from its Celery app's services."""
    built = current_app.extensions.get("emp_openapi")
    if built is None:
        built = build(sorted(services(backend().celery)))
        current_app.extensions["emp_openapi"] = built
    return built


@blueprint.get("/api/openapi.json")
@ungated
def openapi_json():  # noqa: ANN201 - Flask response
    """Serve the document (no token needed)."""
    return jsonify(document())
