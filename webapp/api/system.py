"""Operational endpoints: health, versions, open connections, forgetting a machine."""

from __future__ import annotations

import redis
from flask import Blueprint, current_app, jsonify

from capability_router.functions import library_version
from webapp.api.openapi import package_version
from webapp.auth import error, require_auth
from webapp.backend import backend
from webapp.outage import RETRY_AFTER_SECONDS, ungated

blueprint = Blueprint("system", __name__)


@blueprint.get("/health")
@ungated
def health():  # noqa: ANN201 - Flask response
    """200 while Redis answers, 503 when it does not (no token needed)."""
    outage = current_app.extensions["emp_outage"]
    try:
        backend().redis.ping()
    except redis.RedisError as exc:
        outage.failed(exc)
        response = jsonify(success=False, status="error", redis="unreachable",
                           error=f"redis: {exc}")
        response.status_code = 503
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
    outage.succeeded()
    return jsonify(success=True, status="ok", redis="ok")


@blueprint.get("/version")
@ungated
def version():  # noqa: ANN201 - Flask response
    """This package's version and the function library's, as loaded in Redis (no token)."""
    try:
        loaded = backend().redis.fcall_ro("emp_version", 0)
    except redis.RedisError:
        loaded = None
    return jsonify(success=True, version=package_version(), library_version=loaded,
                   library_source_version=library_version())


@blueprint.get("/api/connections")
@require_auth(admin=True)
def connections():  # noqa: ANN201 - Flask response
    """The open WebSocket clients and monitors (admin)."""
    return jsonify(success=True, **current_app.extensions["emp_events"].connections())


@blueprint.delete("/api/machines/<machine_id>")
@require_auth(admin=True)
def forget_machine(machine_id: str):  # noqa: ANN201 - Flask response
    """Drop a machine's workers and return its jobs to pending (admin); 404 when it has
    neither live workers nor jobs."""
    result = backend().registry.forget_machine(machine_id, reason="machine removed by API")
    if not result["workers"] and not result["requeued_jobs"]:
        return error(404, f"machine {machine_id!r} has no live workers and no running jobs")
    return jsonify(success=True, **result)
