"""``/api/pools``: the pools file and each pool's live state (workers, pending, expected wait);
``/api/pools/<name>/metrics``: one pool's per-minute series (``capability_router.pool_metrics``)."""

from __future__ import annotations

from flask import Blueprint, jsonify

from capability_router.errors import PoolsFileError
from capability_router.keys import check_namespace
from capability_router.pool_metrics import pool_series
from capability_router.pool_view import known_pools, pools_view
from emp_tasks import placement
from webapp.api import validation
from webapp.auth import error, require_auth
from webapp.backend import backend

blueprint = Blueprint("pools", __name__)


@blueprint.get("/api/pools")
@require_auth()
def list_pools():  # noqa: ANN201 - Flask response
    """Pools from EMP_POOLS_FILE (routing on) and those live workers serve, with their load.

    The file shown is the one routing uses: after an edit that does not load, the last
    good version, with ``pools_file_error`` saying why the file on disk was refused."""
    pools_file, refusal = placement.pools_file_in_force(backend().celery)
    return jsonify(success=True, routing=pools_file is not None,
                   pools_file=pools_file.path if pools_file else None,
                   pools_file_error=refusal,
                   spill_wait_seconds=(pools_file.routing.spill_wait_seconds
                                       if pools_file else None),
                   pools=pools_view(backend().redis, pools_file))


@blueprint.errorhandler(PoolsFileError)
def no_pools_file(exc: PoolsFileError):  # noqa: ANN201 - Flask response
    """No version of EMP_POOLS_FILE ever loaded in this process (``emp api`` refuses to
    start so; an app built otherwise answers this until the file is fixed)."""
    return error(503, f"EMP_POOLS_FILE: {exc}")


@blueprint.errorhandler(validation.Invalid)
def invalid(exc: validation.Invalid):  # noqa: ANN201 - Flask response
    return error(exc.status, str(exc))


@blueprint.get("/api/pools/<name>/metrics")
@require_auth()
def pool_metrics(name: str):  # noqa: ANN201 - Flask response
    """One pool's series over ``?window=1h|24h`` at 1-minute resolution; 404 for a pool
    neither the pools file names nor any job or worker ever used."""
    params = validation.query("/api/pools/{name}/metrics", "get")
    try:
        check_namespace(name)
    except ValueError as exc:
        return error(400, str(exc))
    pools_file, _ = placement.pools_file_in_force(backend().celery)
    client = backend().redis
    known = known_pools(client, pools_file)
    if name not in known:
        return error(404, f"no pool {name!r}: known pools are {', '.join(known)}")
    return jsonify(success=True, **pool_series(client, name, params["window"]))
