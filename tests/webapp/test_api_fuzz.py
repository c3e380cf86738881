"""Fuzz a live ``emp api`` from its own OpenAPI document with schemathesis.

Every operation gets valid and invalid requests (as an admin). No answer may
be a 5xx; every answer must be a documented status with a body matching its
schema; requests the document calls invalid must be refused with a 4xx.
Then sequences of calls along the document's links (submit, then read, cancel
or retry that job), with the same checks and schemathesis's stateful ones.
Bounded: 30 examples per operation and mode (``EMP_FUZZ_EXAMPLES`` raises it),
derandomized so CI runs are repeatable.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from rest_helpers import ADMIN, TOKENS_ENV
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ensure_resource_availability,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
    use_after_free,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, negative_data_rejection]
#: Along links: what one call made, the next can use (and what was deleted is gone).
STATEFUL_CHECKS = [ensure_resource_availability, use_after_free]
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

    sent: Counter[str] = Counter()
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
                sent[case.operation.label] += 1
                case.call_and_validate(base_url=server.base, session=session, headers=headers,
                                       checks=CHECKS)

            answers_as_documented()
    print(f"stateless run: {sum(sent.values())} requests over {len(sent)} operations")


@pytest.mark.timeout(max(240, EXAMPLES * 8))
def test_api_sequences_along_the_documents_links_answer_as_documented(client,
                                                                      start_server) -> None:
    """Tried: sequences of calls that follow the document's links (a submit, then reading,
    cancelling or retrying the job it made, with generated bodies and parameters), checked
    as above plus schemathesis's stateful checks (a job the API created can be read)."""
    server = start_server("api", **TOKENS_ENV)
    # The job operations: their state is what links carry (each scenario starts from an
    # empty Redis, so what one generates does not depend on the scenarios before it).
    schema = schemathesis.openapi.from_url(server.base + "/api/openapi.json").include(
        path_regex=r"^/api/jobs")
    document = requests.get(server.base + "/api/openapi.json", timeout=10).json()
    links = document["paths"]["/api/jobs"]["post"]["responses"]["201"]["links"]
    assert {link["operationId"] for link in links.values()} == {"getJob", "cancelJob",
                                                                 "retryJob"}
    session = requests.Session()
    calls: list[str] = []

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            client.flushdb()  # keys only: the function libraries stay loaded

        def get_call_kwargs(self, case: schemathesis.Case) -> dict:
            calls.append(case.operation.label)
            return {"base_url": server.base, "session": session,
                    "headers": {"Authorization": f"Bearer {ADMIN}"}}

        def validate_response(self, response, case, additional_checks=None,  # noqa: ANN001
                              **kwargs) -> None:  # noqa: ANN003
            # The stateless checks, not "every schema-valid body is accepted": the
            # document cannot say that a model's body name must equal its path's.
            case.validate_response(response, checks=[*CHECKS, *STATEFUL_CHECKS],
                                   transport_kwargs=kwargs or None,
                                   recorder=getattr(self, "recorder", None))

    Workflow.run(settings=settings(max_examples=EXAMPLES, stateful_step_count=6, deadline=None,
                                   phases=[Phase.generate],  # a live server: no replays
                                   derandomize=True, database=None,
                                   suppress_health_check=list(HealthCheck)))
    print(f"stateful run: {len(calls)} calls, {dict(Counter(calls))}")
    followed = {label for label in calls if label != "POST /api/jobs"}
    assert "POST /api/jobs" in calls and followed & {
        "GET /api/jobs/{job_id}", "POST /api/jobs/{job_id}/cancel",
        "POST /api/jobs/{job_id}/retry"}, f"no link was followed: {sorted(set(calls))}"
