"""A cold start in the job's trace: the ``preparing`` span of a real worker that downloads
the job's model from a real HTTP model server names the model and its download."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from model_server import ModelServer
from otlp_spans import job_spans

from capability_router import catalog
from conftest import wait_for
from emp_tasks.producer import submit

SIZE = 256 * 1024


@pytest.fixture
def server() -> Iterator[ModelServer]:
    served = ModelServer().start()
    yield served
    served.stop()


@pytest.mark.timeout(90)
def test_the_preparing_span_shows_the_model_download(app, client, server, start_worker,
                                                     receiver, tmp_path) -> None:
    sink = receiver()
    catalog.put_model(client, catalog.parse_entry("m-traced", server.add("m-traced", SIZE)))
    server.chunk_delay = 0.02  # 16 chunks: about 0.3 s of download
    start_worker("cold-t", EMP_MODEL_CACHE_DIR=str(tmp_path / "cache"),
                 OTEL_EXPORTER_OTLP_ENDPOINT=sink.url, OTEL_BSP_SCHEDULE_DELAY="100",
                 # The simulated service's own GPU load, inside the run: short.
                 EMP_SIMULATION_MODELS="m-traced", EMP_SIMULATION_DISK_LOAD_SECONDS="0.1")
    job = submit("simulation", {"steps": 1, "duration": 0.05},
                 requirements={"models": ["m-traced"]}, max_retries=0, app=app)
    assert job.get(timeout=60)["success"] is True
    spans = wait_for(lambda: (lambda got: got if {"preparing", "run"} <= set(got) else None)(
        job_spans(sink, job.id)), timeout=20, message="the worker's spans")
    (preparing,), (run,) = spans["preparing"], spans["run"]
    assert preparing.attributes["emp.models"] == ["m-traced"]
    assert [name for name, _ in preparing.events] == ["model remote", "model disk"]
    assert all(attrs == {"emp.model": "m-traced", "emp.model_bytes": SIZE}
               for _, attrs in preparing.events)
    # The download took its time inside the span, before the run.
    assert preparing.end_ns - preparing.start_ns >= 200_000_000
    assert preparing.end_ns <= run.start_ns
