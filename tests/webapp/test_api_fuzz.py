"""Fuzz a live ``emp api`` from its own OpenAPI document with schemathesis.

Every operation gets valid and invalid requests (as an admin). No answer may
be a 5xx; every answer must be a documented status with a body matching its
schema; requests the document calls invalid must be refused with a 4xx.
Bounded: 30 examples per operation and mode (``EMP_FUZZ_EXAMPLES`` raises it),
derandomized so CI runs are repeatable.
"""

from __future__ import annotations

import os

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from rest_helpers import ADMIN, TOKENS_ENV
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, negative_data_rejection]
#: Examples per operation and generation mode; raise it for a deeper run
#: (``EMP_FUZZ_EXAMPLES=500 pytest tests/webapp/test_api_fuzz.py``).
EXAMPLES = int(os.environ.get("EMP_FUZZ_EXAMPLES", "30"))


@pytest.mark.timeout(max(240, EXAMPLES * 8))
def test_api_answers_every_generated_request_as_documented(client, start_server) -> None:
    server = start_server("api", **TOKENS_ENV)
    schema = schemathesis.openapi.from_url(server.base + "/api/openapi.json")
    session = requests.Session()
    headers = {"Authorization": f"Bearer {ADMIN}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    # Every documented route but the document itself, which schemathesis leaves out.
    paths = session.get(server.base + "/api/openapi.json", timeout=10).json()["paths"]
    documented = {f"{method.upper()} {path}" for path, methods in paths.items()
                  for method in methods if path != "/api/openapi.json"}
    assert {operation.label for operation in operations} == documented
    assert len(documented) >= 15  # jobs, machines, pools (and their metrics), models, ...

    for operation in operations:
        modes = [GenerationMode.POSITIVE]
        if len(operation.query) or len(operation.path_parameters) or len(operation.body):
            modes.append(GenerationMode.NEGATIVE)  # something to get wrong
        for mode in modes:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                      phases=[Phase.explicit, Phase.generate, Phase.shrink],
                      suppress_health_check=list(HealthCheck))
            def answers_as_documented(case: schemathesis.Case) -> None:
                case.call_and_validate(base_url=server.base, session=session, headers=headers,
                                       checks=CHECKS)

            answers_as_documented()
