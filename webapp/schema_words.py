"""A JSON Schema type refusal in JSON's words, for every service's 400s.

jsonschema words its type errors in Python: ``None is not of type 'integer'``,
``'high' is not of type 'integer'``. A client wrote ``null`` and ``"high"``,
and reads of ``None`` and single quotes as a server-side slip. The REST API and
the webhook service both say ``must be an integer, got "high"`` instead.
"""

from __future__ import annotations

import json

from jsonschema.exceptions import ValidationError

#: A JSON type, as "must be ..." says it.
TYPE_WORDS = {"object": "a JSON object", "array": "an array", "string": "a string",
              "integer": "an integer", "number": "a number", "boolean": "true or false",
              "null": "null"}
#: Characters of the refused value quoted back.
QUOTE = 40


def type_message(error: ValidationError) -> str:
    """``must be an integer, got "high"`` for a ``type`` error (the field not named)."""
    wanted = error.validator_value
    kinds = " or ".join(TYPE_WORDS.get(name, str(name))
                        for name in ([wanted] if isinstance(wanted, str) else wanted))
    got = json.dumps(error.instance, default=str)
    return f"must be {kinds}, got {got if len(got) <= QUOTE else got[:QUOTE] + '...'}"
