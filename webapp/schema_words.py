"""JSON Schema refusals in JSON's words, for every service's 400s.

jsonschema words its type errors in Python: ``None is not of type 'integer'``,
``'high' is not of type 'integer'``. A client wrote ``null`` and ``"high"``,
and reads of ``None`` and single quotes as a server-side slip. The REST API and
the webhook service both say ``must be an integer, got "high"`` instead, and
``must be one of "pending", "failed", got "bogus"`` for a value outside a list
(jsonschema: ``'bogus' is not one of ['pending', 'failed']``).
"""

from __future__ import annotations

import json

from jsonschema.exceptions import ValidationError

#: A JSON type, as "must be ..." says it.
TYPE_WORDS = {"object": "a JSON object", "array": "an array", "string": "a string",
              "integer": "an integer", "number": "a number", "boolean": "a boolean (true or false)",
              "null": "null"}
#: Characters of the refused value quoted back.
QUOTE = 40


def type_message(error: ValidationError) -> str:
    """``must be an integer, got "high"`` for a ``type`` error (the field not named)."""
    wanted = error.validator_value
    kinds = " or ".join(TYPE_WORDS.get(name, str(name))
                        for name in ([wanted] if isinstance(wanted, str) else wanted))
    return f"must be {kinds}, got {_quoted(error.instance)}"


def _quoted(value: object) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= QUOTE else text[:QUOTE] + "..."


def enum_message(error: ValidationError) -> str:
    """``must be one of "pending", "failed", got "bogus"`` for an ``enum`` error."""
    allowed = ", ".join(json.dumps(value) for value in error.validator_value)
    return f"must be one of {allowed}, got {_quoted(error.instance)}"


def message(error: ValidationError) -> str:
    """What ``error`` says, the field not named: in JSON's words for a type, enum,
    format, pattern or length error, in jsonschema's otherwise."""
    if error.validator == "type":
        return type_message(error)
    if error.validator == "enum":
        return enum_message(error)
    if error.validator == "format":
        return f"must be a {error.validator_value}, got {_quoted(error.instance)}"
    if error.validator == "pattern":  # its repr doubled each backslash of the pattern
        return f"{_quoted(error.instance)} does not match {error.validator_value}"
    if error.validator == "minLength" and error.validator_value == 1:
        return "must be non-empty, got \"\""
    if error.validator in ("maxLength", "minLength") and isinstance(error.instance, str):
        bound = "at most" if error.validator == "maxLength" else "at least"
        return (f"must be {bound} {error.validator_value} characters, got "
                f"{len(error.instance)}: {_quoted(error.instance)}")
    return error.message
