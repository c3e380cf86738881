"""Check requests against the OpenAPI document's own schemas (one source of truth).

Bodies are parsed by ``webapp.strict_json`` (no NaN, Infinity or overflowing
numbers, bounded nesting), the parser of every input path, and checked with
jsonschema; query strings are converted by their declared types first. Every
refusal is an ``Invalid`` whose message names the field.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import current_app, request
from jsonschema import Draft4Validator, FormatChecker
from jsonschema.exceptions import ValidationError, best_match

from capability_router.whole_numbers import is_whole
from webapp import strict_json
from webapp.api.openapi import document
from webapp.bodies import request_body
from webapp.query import repeated
from webapp.schema_words import message

#: Longest error message returned.
MAX_MESSAGE = 300


class Invalid(ValueError):
    """A request the API refuses; ``status`` is the HTTP code (400, 415)."""

    def __init__(self, message: str, status: int = 400) -> None:
        if len(message) > MAX_MESSAGE:  # jsonschema's messages quote the value whole
            message = message[:MAX_MESSAGE] + "..."
        super().__init__(message)
        self.status = status


def to_json_schema(schema: Any) -> Any:
    """An OpenAPI 3.0 schema as plain JSON Schema: ``nullable`` becomes a null branch."""
    if isinstance(schema, list):
        return [to_json_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    converted = {key: to_json_schema(value) for key, value in schema.items()
                 if key != "nullable"}
    if schema.get("nullable"):
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


def _resolved(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with every ``#/components/schemas/...`` reference inlined."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if ref:
            return _resolved(components[ref.rsplit("/", 1)[-1]], components)
        return {key: _resolved(value, components) for key, value in schema.items()}
    if isinstance(schema, list):
        return [_resolved(item, components) for item in schema]
    return schema


#: The formats checked (jsonschema checks none unless told, and its own date-time
#: check needs a package this project does not install).
FORMATS = FormatChecker(formats=())


@FORMATS.checks("date-time", raises=ValueError)
def _date_time(value: Any) -> bool:
    """An ISO-8601 timestamp, as the job's ordering fields read it (``Z`` for UTC);
    an empty string is none."""
    if isinstance(value, str):
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    return True


def build_validator(doc: dict[str, Any], name: str) -> Draft4Validator:
    """The checker of one component schema of an OpenAPI document."""
    components = doc["components"]["schemas"]
    return Draft4Validator(to_json_schema(_resolved(components[name], components)),
                           format_checker=FORMATS)


def _validator(name: str) -> Draft4Validator:
    """The checker of a component schema, built once per app."""
    validators = current_app.extensions.setdefault("emp_validators", {})
    validator = validators.get(name)
    if validator is None:
        validator = validators[name] = build_validator(document(), name)
    return validator


def _field(error: ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path)


def _own_words(error: ValidationError) -> bool:
    """Whether the schema that refused says why itself (``x-error`` beside its anyOf/not)."""
    return (error.validator in ("anyOf", "not") and isinstance(error.schema, dict)
            and "x-error" in error.schema)


def describe(error: ValidationError) -> str:
    """A message naming the field, in the words of the schema where it has some."""
    if error.validator in ("anyOf", "oneOf") and error.context and not _own_words(error):
        # A nullable field: the error of the non-null branch says more.
        inner = best_match(e for e in error.context if e.validator != "type"
                           or e.validator_value != "null")
        if inner is not None:
            error = inner
    field = _field(error)
    if _own_words(error):
        return f"{field}: {error.schema['x-error']}" if field else error.schema["x-error"]
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        where = f" in {field}" if field else ""
        return f"unknown field(s){where}: {', '.join(extra)}"
    if error.validator == "required":
        return error.message.replace("'", "").replace(" is a required property", " is required")
    # JSON's words, not Python's reprs, where schema_words has them
    if field:
        return f"{field}: {message(error)}"
    return f"the body {message(error)}" if error.validator == "type" else message(error)


def check(schema_name: str, value: Any, validator: Draft4Validator | None = None) -> None:
    """Raise Invalid when ``value`` does not match the named component schema
    (checked by ``validator`` outside a Flask app)."""
    validator = validator or _validator(schema_name)
    error = best_match(validator.iter_errors(value))
    if error is not None:
        raise Invalid(describe(error))


def json_body(schema_name: str) -> dict[str, Any]:
    """The request's JSON body, checked against a component schema."""
    if not request.is_json:
        raise Invalid("Content-Type must be application/json", status=415)
    data = request_body()  # over MAX_CONTENT_LENGTH: 413 from the factory
    try:
        body = strict_json.loads(data, max_bytes=current_app.config["MAX_CONTENT_LENGTH"])
    except strict_json.JsonRefused as exc:
        raise Invalid(f"request body is not valid JSON: {exc}") from None
    check(schema_name, body)
    return body


def _operation(path: str, method: str) -> dict[str, Any]:
    return document()["paths"][path][method]


#: Digits past which a whole number is beyond every bound a parameter has: it is refused
#: by its bound without being converted (before, "must be an integer" said of one).
_MAX_DIGITS = 18


def _convert(name: str, text: str, schema: dict[str, Any]) -> Any:
    kind = schema.get("type")
    if kind == "integer":
        if not is_whole(text, signed=True):
            raise Invalid(f"{name} must be an integer, got {text!r}")
        if len(text.lstrip("-")) > _MAX_DIGITS:
            shown = text if len(text) <= 24 else f"{text[:20]}... ({len(text)} characters)"
            if text.startswith("-"):
                raise Invalid(f"{name}: {shown} is less than the minimum of "
                              f"{schema.get('minimum', -(10 ** _MAX_DIGITS))}")
            raise Invalid(f"{name}: {shown} is greater than the maximum of "
                          f"{schema.get('maximum', 10 ** _MAX_DIGITS)}")
        return int(text)
    if kind == "boolean":
        if text not in ("true", "false"):
            raise Invalid(f"{name} must be true or false, got {text!r}")
        return text == "true"
    return text


def query(path: str, method: str) -> dict[str, Any]:
    """The operation's query parameters, converted, checked, defaults filled in. Each
    takes one value: a repeated one (``?status=a&status=b``) is refused naming it,
    rather than all but the first dropped without a word."""
    values: dict[str, Any] = {}
    for parameter in _operation(path, method).get("parameters", []):
        if parameter["in"] != "query":
            continue
        name, schema = parameter["name"], parameter["schema"]
        given = request.args.getlist(name)
        if len(given) > 1:
            raise Invalid(repeated(name, len(given)))
        text = given[0] if given else None
        if text is None:
            values[name] = schema.get("default")
            continue
        value = _convert(name, text, schema)
        error = best_match(Draft4Validator(to_json_schema(schema)).iter_errors(value))
        if error is not None:
            raise Invalid(f"{name}: {message(error)}")
        values[name] = value
    return values
