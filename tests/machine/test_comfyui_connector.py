"""The comfyui connector against a ComfyUI-protocol server over real HTTP and WebSocket."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from comfyui_server import ComfyUITestServer, txt2img
from machine_fixtures import *  # noqa: F403 - pytest fixtures
from machine_helpers import wait_until

from capability_router.errors import JobCancelled
from machine.connectors import (
    ConnectorError,
    ErrorType,
    JobCancelledByService,
    JobInput,
    Progress,
    make_connector,
)
from machine.connectors.comfyui import ComfyUIConnector
from machine.outputs import LocalOutputStore


def connector_for(server: ComfyUITestServer, store: LocalOutputStore,
                  **settings: object) -> ComfyUIConnector:
    connector = make_connector("comfyui", {"url": server.url, "output_store": store,
                                           "connector_id": "test-comfyui", **settings})
    connector.initialize()
    return connector  # type: ignore[return-value]


def job(job_id: str, workflow: dict) -> JobInput:
    return JobInput(job_id, "comfyui", {"workflow": workflow})


def test_workflow_runs_with_node_and_step_progress_and_stored_outputs(
        comfyui, store, caplog) -> None:
    connector = connector_for(comfyui, store)
    reports: list[Progress] = []
    caplog.set_level("INFO", logger="emp.connector")
    output = connector.run_job(job("job-1", txt2img(steps=5, batch=2)), reports.append)

    assert output.success and output.data["status"]["status_str"] == "success"
    percents = [r.percent for r in reports]
    assert percents == sorted(percents) and percents[-1] == 100
    steps = [r.details for r in reports if r.details["node_class"] == "KSampler"
             and r.details["step"]]
    assert [d["step"] for d in steps] == [1, 2, 3, 4, 5]
    assert all(d["max_steps"] == 5 and d["node"] == "3" and d["nodes_total"] == 7 for d in steps)
    assert reports[-1].details["nodes_done"] == 7 and reports[-1].message == "completed"

    assert len(output.output_files) == 2
    for entry in output.output_files:
        assert entry["node_id"] == "9" and entry["type"] == "output" and entry["size"] > 0
        path = store.path_for("job-1", entry["filename"])
        assert entry["url"] == path.resolve().as_uri()
        assert path.read_bytes().startswith(b"\x89PNG")
    events = [(r.event, r.job_id, r.connector_id, r.service_type) for r in caplog.records]
    assert [e[0] for e in events] == ["job_received", "job_started", "job_completed"]
    assert all(e[1:] == ("job-1", "test-comfyui", "comfyui") for e in events)


def test_second_run_reports_cached_nodes_and_subfolder_outputs(comfyui, store) -> None:
    connector = connector_for(comfyui, store)
    connector.run_job(job("first", txt2img(steps=2)), lambda report: None)
    reports: list[Progress] = []
    output = connector.run_job(job("second", txt2img(steps=3, prefix="run/b")), reports.append)
    # Loader, both encoders and the latent are unchanged: ComfyUI reports them cached.
    assert reports[1].details["nodes_done"] == 4
    [entry] = output.output_files
    assert entry["subfolder"] == "run"
    assert store.path_for("second", "run/" + entry["filename"]).is_file()


def test_available_models_are_the_servers_with_aliases(start_comfyui) -> None:
    for combo_format in (False, True):  # ComfyUI's old and new /object_info combo forms
        server = start_comfyui(checkpoints=["sd15.safetensors", "sdxl/base.safetensors"],
                               loras=["detail.safetensors"], combo_format=combo_format)
        models = make_connector("comfyui", {"url": server.url}).available_models()
        assert models == {"comfyui": ["detail", "detail.safetensors", "sd15",
                                      "sd15.safetensors", "sdxl/base",
                                      "sdxl/base.safetensors"]}


def test_health_reports_devices_and_vram(comfyui) -> None:
    health = make_connector("comfyui", {"url": comfyui.url}).report_health()
    assert health.healthy and health.details["devices"] == ["cuda:0 Test GPU"]
    assert health.details["vram_total_gb"] == 24.0
    down = make_connector("comfyui", {"url": "http://127.0.0.1:9"}).check_health()
    assert not down.healthy and "connection error" in down.details["error"]


@pytest.mark.timeout(60)
def test_cancel_interrupts_the_running_prompt(comfyui, store) -> None:
    connector = connector_for(comfyui, store)
    reports: list[Progress] = []
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            connector.run_job(job("long", txt2img(steps=500)), reports.append)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    wait_until(lambda: any(r.details["step"] >= 3 for r in reports), message="sampling")
    assert connector.cancel_job("other-job") is False
    started = time.monotonic()
    assert connector.cancel_job("long") is True
    thread.join(10)
    assert isinstance(outcome["error"], JobCancelledByService)
    assert time.monotonic() - started < 2
    prompt_id = next(iter(comfyui.history))
    assert comfyui.interrupts == [prompt_id]
    assert comfyui.history[prompt_id]["status"]["messages"][-1][0] == "execution_interrupted"
    # The server is free for the next job at once.
    assert connector.run_job(job("next", txt2img(steps=1)), lambda r: None).success


@pytest.mark.timeout(60)
def test_cancel_of_a_queued_prompt_unqueues_it_without_interrupting(comfyui, store) -> None:
    blocker = connector_for(comfyui, store)
    waiting = connector_for(comfyui, store)
    errors: dict[str, BaseException] = {}

    def run(connector: ComfyUIConnector, job_id: str, steps: int) -> None:
        try:
            connector.run_job(job(job_id, txt2img(steps=steps)), lambda r: None)
        except BaseException as exc:
            errors[job_id] = exc

    threads = [threading.Thread(target=run, args=(blocker, "blocker", 100))]
    threads[0].start()
    wait_until(lambda: comfyui.running is not None, message="the blocker to run")
    threads.append(threading.Thread(target=run, args=(waiting, "queued", 1)))
    threads[1].start()
    wait_until(lambda: comfyui.pending, message="the second prompt to queue")
    assert waiting.cancel_job("queued")
    threads[1].join(10)
    assert isinstance(errors["queued"], JobCancelledByService)
    assert comfyui.interrupts == [] and comfyui.pending == []
    assert comfyui.running is not None  # the other job was left alone
    blocker.cancel_job("blocker")
    threads[0].join(10)
    assert isinstance(errors["blocker"], JobCancelledByService)


def test_progress_callback_cancelling_interrupts_the_prompt(comfyui, store) -> None:
    """A job cancelled in Redis learns it on a progress call; ComfyUI must stop too."""
    connector = connector_for(comfyui, store)

    def progress(report: Progress) -> None:
        if report.details["step"] >= 2:
            raise JobCancelled("job-x")

    with pytest.raises(JobCancelled):
        connector.run_job(job("job-x", txt2img(steps=400)), progress)
    wait_until(lambda: comfyui.history, timeout=5, message="the prompt to end")
    prompt_id = next(iter(comfyui.history))
    assert comfyui.interrupts == [prompt_id]


@pytest.mark.parametrize(("options", "workflow", "error_type", "text"), [
    ({}, txt2img(width=4096, height=4096), ErrorType.MEMORY, "out of memory"),
    ({"broken_checkpoints": ["sd15.safetensors"]}, txt2img(), ErrorType.MODEL,
     "No such file or directory"),
    ({}, txt2img(ckpt="flux.safetensors"), ErrorType.MODEL, "Value not in list"),
    ({}, {"1": {"class_type": "NoSuchNode", "inputs": {}}}, ErrorType.VALIDATION,
     "does not exist"),
    ({}, {"1": {"class_type": "CLIPTextEncode", "inputs": {}}}, ErrorType.VALIDATION,
     "no outputs"),
], ids=["oom", "missing-checkpoint-file", "checkpoint-not-in-list", "unknown-node",
        "no-output"])
def test_errors_are_classified_and_decide_retry(start_comfyui, store, options, workflow,
                                               error_type, text) -> None:
    server = start_comfyui(**options)
    connector = connector_for(server, store)
    with pytest.raises(ConnectorError) as caught:
        connector.run_job(job("bad", workflow), lambda r: None)
    assert caught.value.error_type == error_type and text in str(caught.value)
    assert caught.value.retryable == (error_type == ErrorType.MEMORY)


@pytest.mark.parametrize("payload", [{}, {"workflow": "text"}, {"prompt": {"1": {"x": 1}}}])
def test_malformed_payload_is_a_validation_error(comfyui, store, payload) -> None:
    connector = connector_for(comfyui, store)
    with pytest.raises(ConnectorError) as caught:
        connector.run_job(JobInput("bad", "comfyui", payload), lambda r: None)
    assert caught.value.error_type == ErrorType.VALIDATION
    assert comfyui.history == {}


def test_prompt_payload_key_is_accepted(comfyui, store) -> None:
    connector = connector_for(comfyui, store)
    output = connector.run_job(JobInput("p", "comfyui", {"prompt": txt2img(steps=1)}),
                               lambda r: None)
    assert output.success and len(output.output_files) == 1
    # Well under the 5 s greeting wait: ComfyUI's first status frame, which can
    # arrive with the handshake reply, was read at once.
    assert output.processing_time_ms < 3000


def test_timeout_interrupts_and_is_a_timeout_error(comfyui, store) -> None:
    connector = connector_for(comfyui, store, timeout_seconds=0.5)
    with pytest.raises(ConnectorError) as caught:
        connector.run_job(job("slow", txt2img(steps=500)), lambda r: None)
    assert caught.value.error_type == ErrorType.TIMEOUT and caught.value.retryable
    assert len(comfyui.interrupts) == 1


@pytest.mark.timeout(60)
def test_a_dropped_socket_is_reopened_and_the_job_completes(comfyui, store) -> None:
    connector = connector_for(comfyui, store)
    reports: list[Progress] = []
    threading.Timer(0.3, comfyui.drop_sockets).start()
    output = connector.run_job(job("blip", txt2img(steps=40)), reports.append)
    assert output.success and len(output.output_files) == 1
    assert reports[-1].percent == 100
    assert comfyui.requests.count("GET /ws") == 2


def test_unreachable_server_is_a_network_error(tmp_path: Path) -> None:
    connector = make_connector("comfyui", {"url": "http://127.0.0.1:9",
                                           "startup_timeout_seconds": 0.3})
    started = time.monotonic()
    with pytest.raises(ConnectorError) as caught:
        connector.initialize()
    assert caught.value.error_type == ErrorType.NETWORK and time.monotonic() - started < 5
    with pytest.raises(ConnectorError) as caught:
        connector.run_job(job("x", txt2img()), lambda r: None)
    assert caught.value.error_type == ErrorType.NETWORK and caught.value.retryable
