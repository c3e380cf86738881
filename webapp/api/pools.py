"""``/api/pools``: the pools file and each pool's live state (workers, pending, expected wait);
``/api/pools/<name>/metrics``: one pool's per-minute series (``capability_router.pool_metrics``)."""

from __future__ import annotations

from flask import Blueprint, jsonify

from capability_router.errors import PoolsFileError
from capability_router.keys import check_namespace
from capability_router.pool_metrics import pool_series
from capability_router.pool_view import known_pools, pools_view
from capability_router.pools import pools_file_from_env
from webapp.api import validation
from webapp.auth import error, require_auth
from webapp.backend import backend

blueprint = Blueprint("pools", __name__)


@blueprint.get("/api/pools")
@require_auth()
def list_pools():  # noqa: ANN201 - Flask response
    """Pools from EMP_POOLS_FILE (routing on) and those live workers serve, with their load."""
    try:
        pools_file = pools_file_from_env()
    except PoolsFileError as exc:
        return error(500, str(exc))
    return jsonify(success=True, routing=pools_file is not None,
                   pools_file=pools_file.path if pools_file else None,
                   spill_wait_seconds=(pools_file.routing.spill_wait_seconds
                                       if pools_file else None),
                   pools=pools_view(backend().redis, pools_file))


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
    try:
        pools_file = pools_file_from_env()
    except PoolsFileError as exc:
        return error(500, str(exc))
    client = backend().redis
    known = known_pools(client, pools_file)
    if name not in known:
        return error(404, f"no pool {name!r}: known pools are {', '.join(known)}")
    return jsonify(success=True, **pool_series(client, name, params["window"]))
