"""JSON Schema refusals in JSON's words, for every service's 400s.

jsonschema words its refusals in Python: ``None is not of type 'integer'``,
``'bogus' is not one of ['pending', 'failed']``, a pattern's repr with each
backslash doubled. The client wrote ``null`` and ``"bogus"``; Python's ``None``
and single quotes read like a slip of the server. The REST API (bodies, socket
messages, the monitor's submit, query parameters) and the webhook service say
``must be an integer, got null`` and ``must be one of "pending", "failed", got
"bogus"`` instead.
"""

from __future__ import annotations

import json

from jsonschema.exceptions import ValidationError

#: A JSON type, as "must be ..." says it.
TYPE_WORDS = {"object": "a JSON object", "array": "an array", "string": "a string",
              "integer": "an integer", "number": "a number",
              "boolean": "a boolean (true or false)", "null": "null"}
#: Characters of the refused value quoted back.
QUOTE = 40


def message(error: ValidationError) -> str:
    """What ``error`` says, the field not named: in JSON's words for a type, enum,
    format, pattern or length error, in jsonschema's otherwise."""
    rule, got = error.validator_value, quoted(error.instance)
    if error.validator == "type":
        kinds = " or ".join(TYPE_WORDS.get(name, str(name))
                            for name in ([rule] if isinstance(rule, str) else rule))
        return f"must be {kinds}, got {got}"
    if error.validator == "enum":
        return f"must be one of {', '.join(json.dumps(value) for value in rule)}, got {got}"
    if error.validator == "format":
        return f"must be a {rule}, got {got}"
    if error.validator == "pattern":
        return f"{got} does not match {rule}"
    if error.validator == "minLength" and rule == 1:
        return f"must be non-empty, got {got}"
    if error.validator in ("maxLength", "minLength") and isinstance(error.instance, str):
        bound = "at most" if error.validator == "maxLength" else "at least"
        return f"must be {bound} {rule} characters, got {len(error.instance)}: {got}"
    return error.message


def quoted(value: object) -> str:
    """``value`` as JSON, cut at ``QUOTE`` characters: what a refusal quotes back."""
    text = json.dumps(value, default=str)
    return text if len(text) <= QUOTE else text[:QUOTE] + "..."
