"""The model catalog over REST: list, read, put and delete entries (``/api/models``).

Any valid token reads (a customer sees URLs without password and query);
writing needs an admin token (the catalog serves every customer's jobs). A
body is checked against the OpenAPI schema, then by
``capability_router.catalog.parse_entry``; bad input is a 400 naming the
field and writes nothing.
"""

from __future__ import annotations

from flask import Blueprint, g, jsonify

from capability_router import catalog
from webapp.api import validation
from webapp.auth import error, require_auth
from webapp.backend import backend

blueprint = Blueprint("models", __name__)


@blueprint.errorhandler(validation.Invalid)
def invalid(exc: validation.Invalid):  # noqa: ANN201 - Flask response
    return error(exc.status, str(exc))


@blueprint.errorhandler(catalog.InvalidModel)
def invalid_model(exc: catalog.InvalidModel):  # noqa: ANN201 - Flask response
    return error(400, str(exc))


def _shown(entry: catalog.ModelEntry) -> dict:
    """An entry as the caller may see it: a customer reads its URL without password
    and query (a private mirror's credentials, a signed link); an admin, who
    edits it, as written."""
    shown = entry.as_dict()
    if not g.principal.admin:
        shown["url"] = catalog.redacted_url(entry.url)
    return shown


def _not_found(name: str):  # noqa: ANN202 - Flask response
    return error(404, f"model {name!r} is not in the catalog")


@blueprint.get("/api/models")
@require_auth()
def list_models():  # noqa: ANN201 - Flask response
    """Every catalog entry, by name."""
    entries = catalog.list_models(backend().redis)
    return jsonify(success=True, models=[_shown(entry) for entry in entries])


@blueprint.get("/api/models/<name>")
@require_auth()
def get_model(name: str):  # noqa: ANN201 - Flask response
    """One entry; 404 when the catalog does not know it."""
    catalog.check_name(name)
    entry = catalog.get_model(backend().redis, name)
    if entry is None:
        return _not_found(name)
    return jsonify(success=True, model=_shown(entry))


@blueprint.put("/api/models/<name>")
@require_auth(admin=True)
def put_model(name: str):  # noqa: ANN201 - Flask response
    """Add or replace an entry (admin): 201 when new, 200 when replaced."""
    entry = catalog.parse_entry(name, validation.json_body("ModelEntryInput"))
    created = catalog.put_model(backend().redis, entry)
    response = jsonify(success=True, model=entry.as_dict(), created=created)
    response.status_code = 201 if created else 200
    return response


@blueprint.delete("/api/models/<name>")
@require_auth(admin=True)
def delete_model(name: str):  # noqa: ANN201 - Flask response
    """Remove an entry (admin); copies already on machines stay until evicted."""
    catalog.check_name(name)
    if not catalog.delete_model(backend().redis, name):
        return _not_found(name)
    return jsonify(success=True, name=name, deleted=True)
