"""``/api/pools``: the pools file and each pool's live state (workers, pending, expected wait)."""

from __future__ import annotations

from flask import Blueprint, jsonify

from capability_router.errors import PoolsFileError
from capability_router.pool_view import pools_view
from capability_router.pools import pools_file_from_env
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
