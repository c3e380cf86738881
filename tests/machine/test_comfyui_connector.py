"""The comfyui connector against a ComfyUI-protocol server over real HTTP and WebSocket."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest
import requests
from comfyui_server import ComfyUITestServer, txt2img
from machine_fixtures import *  # noqa: F403 - pytest fixtures
from machine_helpers import wait_until

from capability_router.errors import JobCancelled
from emp_tasks.websocket_client import WebSocketClient
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
    # ComfyUI --cpu: torch's CPU allocator fails with a RuntimeError (was SERVICE, no retry).
    ({"cpu": True}, txt2img(width=4096, height=4096), ErrorType.MEMORY,
     "RuntimeError: [enforce fail at alloc_cpu.cpp:117] err == 0. DefaultCPUAllocator: "
     "can't allocate memory"),
    ({"broken_checkpoints": ["sd15.safetensors"]}, txt2img(), ErrorType.MODEL,
     "No such file or directory"),
    ({}, txt2img(ckpt="flux.safetensors"), ErrorType.MODEL, "Value not in list"),
    ({}, {"1": {"class_type": "NoSuchNode", "inputs": {}}}, ErrorType.VALIDATION,
     "does not exist"),
    ({}, {"1": {"class_type": "CLIPTextEncode", "inputs": {}}}, ErrorType.VALIDATION,
     "no outputs"),
    ({}, {"9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}}},
     ErrorType.VALIDATION, "Required input is missing: images"),
    ({}, {**txt2img(), "5": {"class_type": "EmptyLatentImage", "inputs": {
        "width": "wide", "height": 512, "batch_size": 1}}}, ErrorType.VALIDATION,
     "Failed to convert an input value to a INT value"),
], ids=["oom", "cpu-oom", "missing-checkpoint-file", "checkpoint-not-in-list", "unknown-node",
        "no-output", "required-input-missing", "invalid-input-type"])
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


# -- issue 10: what a real ComfyUI 0.8 does (see comfyui_server's docstring) -----------------


def test_pixel_space_is_not_reported_as_a_model(start_comfyui) -> None:
    """VAELoader lists the built-in ``pixel_space`` next to VAE files; it is no model file.

    Tried: a server offering one VAE file; its models must hold the VAE and
    not ``pixel_space`` (which was reported as a model before).
    """
    server = start_comfyui(vaes=["ae.safetensors"])
    models = make_connector("comfyui", {"url": server.url}).available_models()["comfyui"]
    assert "ae.safetensors" in models and "ae" in models
    assert "pixel_space" not in models


def test_health_of_a_cpu_only_comfyui_reports_no_gpu_memory(start_comfyui) -> None:
    """With ``--cpu`` ComfyUI reports system RAM as the cpu device's ``vram_total``.

    Tried: a server answering /system_stats as ``main.py --cpu`` does (64 GiB
    RAM); the health check reported 64 GB of VRAM before, it must report none.
    """
    health = make_connector("comfyui", {"url": start_comfyui(cpu=True).url}).check_health()
    assert health.healthy
    assert health.details["vram_total_gb"] == 0 and health.details["vram_free_gb"] == 0
    assert health.details["device_types"] == ["cpu"] and health.details["gpu"] is False


def test_stored_outputs_are_readable_like_normal_files(comfyui, store) -> None:
    """Output files get the usual mode (0644 under the default umask), not mkstemp's 0600.

    Tried: one job under umask 022; its stored PNG must be mode 0644 (was 0600).
    """
    old = os.umask(0o022)
    try:
        output = connector_for(comfyui, store).run_job(job("modes", txt2img(steps=1)),
                                                       lambda r: None)
    finally:
        os.umask(old)
    [entry] = output.output_files
    path = store.path_for("modes", entry["filename"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_identical_workflow_served_from_cache_names_the_earlier_file(comfyui, store) -> None:
    """ComfyUI serves an identical workflow from cache, output node and filename included.

    Tried: the same workflow twice. The second prompt's ``execution_cached``
    lists every node and its output is the first one's file; the second job's
    result must name that file, stored under the second job, and its progress
    must not say 100/"completed" before that file is stored (it did: every
    node cached looked like done).
    """
    connector = connector_for(comfyui, store)
    first = connector.run_job(job("first", txt2img(steps=2)), lambda r: None)
    stored_when: list[tuple[float, bool]] = []

    def progress(report: Progress) -> None:
        stored_when.append((report.percent, any(store.directory.joinpath("second").glob("*"))))

    second = connector.run_job(job("second", txt2img(steps=2)), progress)
    [old], [new] = first.output_files, second.output_files
    assert new["filename"] == old["filename"] and new["node_id"] == "9"
    assert store.path_for("second", new["filename"]).read_bytes().startswith(b"\x89PNG")
    [(name, data)] = [m for m in comfyui.history[second.data["prompt_id"]]["status"]["messages"]
                      if m[0] == "execution_cached"]
    assert sorted(data["nodes"]) == sorted(txt2img())
    assert stored_when[-1] == (100, True)
    assert all(percent < 100 for percent, stored in stored_when if not stored)


def test_preview_images_are_returned_marked_as_previews(comfyui, store) -> None:
    """ComfyUI's PreviewImage writes to its temp folder and lists the image in the
    history outputs with ``"type": "temp"``; its UI shows it like a saved one.

    Tried: txt2img with PreviewImage as its only output node (batch of 2). Before,
    the job succeeded with ``output_files == []``: the images were dropped without
    a word. Now both are fetched with ``/view?type=temp`` and stored, marked
    ``preview: true``; with a SaveImage as well, the saved image comes first.
    """
    connector = connector_for(comfyui, store)
    preview_only = {**txt2img(steps=1, batch=2),
                    "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}}
    output = connector.run_job(job("preview", preview_only), lambda r: None)
    assert output.success and len(output.output_files) == 2
    for entry in output.output_files:
        assert entry["type"] == "temp" and entry["preview"] is True
        assert entry["filename"].startswith("ComfyUI_temp_") and entry["node_id"] == "9"
        path = store.path_for("preview", entry["filename"])
        assert entry["url"] == path.resolve().as_uri()
        assert path.read_bytes().startswith(b"\x89PNG")
    assert "GET /view" in comfyui.requests

    both = {**txt2img(steps=2), "10": {"class_type": "PreviewImage",
                                       "inputs": {"images": ["8", 0]}}}
    saved, preview = connector.run_job(job("both", both), lambda r: None).output_files
    assert (saved["node_id"], saved["type"], saved["preview"]) == ("9", "output", False)
    assert (preview["node_id"], preview["type"], preview["preview"]) == ("10", "temp", True)


def test_a_run_served_from_comfyuis_cache_says_so_in_its_progress(comfyui, store) -> None:
    """Tried: the same workflow twice, then with one more sampler step. ComfyUI
    executes nothing the second time (``execution_cached`` lists every node, then
    ``execution_success``). Before, that job's progress was "started" at 0, then
    "started" at 99 (every node cached looked done, nothing said why), then
    "completed". Now it says the run was served from ComfyUI's cache, to the end;
    a partly cached run says how many nodes came from the cache."""
    connector = connector_for(comfyui, store)
    first: list[Progress] = []
    connector.run_job(job("first", txt2img(steps=2)), first.append)
    assert first[-1].message == "completed" and not first[-1].details.get("from_cache")

    cached: list[Progress] = []
    connector.run_job(job("cached", txt2img(steps=2)), cached.append)
    assert [(r.percent, r.message) for r in cached] == [
        (0, "started"), (99, "served from ComfyUI's cache"),
        (100, "completed from ComfyUI's cache")]
    assert cached[-1].details["from_cache"] and cached[-1].details["nodes_cached"] == 7

    partly: list[Progress] = []
    connector.run_job(job("partly", txt2img(steps=3)), partly.append)
    assert partly[1].message == "started: 4 of 7 nodes from ComfyUI's cache"
    assert not any(r.details["from_cache"] for r in partly)
    assert partly[-1].message == "completed"


@pytest.mark.timeout(60)
def test_connector_copes_with_a_replaced_socket_and_the_real_message_order(comfyui, store) -> None:
    """Real ComfyUI: a second socket with the same clientId replaces the first.

    Tried: while the job's VAEDecode runs (slowly), another socket opens with
    the job's clientId. Like ComfyUI's server.py, the double keeps the
    connector's socket open but sends it nothing more; the newcomer gets
    ``status`` then ``executing {node: "8"}`` without a prompt_id, then the
    rest of the prompt (``progress_state``, ``status`` before ``executing
    {node: null}``). The connector, its socket silent, still completes the
    job from ``/history``, and its progress never goes back.
    """
    comfyui.slow_nodes["VAEDecode"] = 1.0
    connector = connector_for(comfyui, store)
    connector.history_poll_seconds = 0.3
    reports: list[Progress] = []
    outcome: dict[str, object] = {}
    thread = threading.Thread(target=lambda: outcome.update(
        output=connector.run_job(job("swap", txt2img(steps=2)), reports.append)))
    thread.start()
    wait_until(lambda: comfyui._last_node == "8", message="VAEDecode to run")
    client_id = comfyui.running["client_id"]
    intruder = WebSocketClient.connect(f"ws://127.0.0.1:{comfyui.port}/ws?clientId={client_id}")
    seen: list[dict] = []
    try:
        while (raw := intruder.receive(timeout=5)) is not None:
            if isinstance(raw, str):
                seen.append(json.loads(raw))
                if seen[-1]["type"] == "executing" and seen[-1]["data"]["node"] is None:
                    break
    finally:
        intruder.close()
    thread.join(20)
    assert seen[0]["type"] == "status"
    assert seen[1] == {"type": "executing", "data": {"node": "8"}}
    kinds = [m["type"] for m in seen]
    assert "progress_state" in kinds and kinds[-2:] == ["status", "executing"]
    output = outcome["output"]
    assert output.success and len(output.output_files) == 1
    assert comfyui.requests.count("GET /ws") == 2
    percents = [r.percent for r in reports]
    assert percents == sorted(percents) and percents[-1] == 100


def test_the_double_sends_what_real_comfyui_sends(comfyui) -> None:
    """The message order of real-comfyui.md, on a raw socket: status first,
    ``progress_state`` besides ``progress``, ``status`` before ``executing {node: null}``."""
    ws = WebSocketClient.connect(f"ws://127.0.0.1:{comfyui.port}/ws?clientId=raw")
    try:
        requests.post(f"{comfyui.url}/prompt", json={"prompt": txt2img(steps=2),
                                                     "client_id": "raw"}, timeout=5)
        messages: list[dict] = []
        while not messages or messages[-1] != {"type": "executing", "data": {
                "node": None, "prompt_id": messages[-1]["data"].get("prompt_id")}}:
            raw = ws.receive(timeout=5)
            if isinstance(raw, str):
                messages.append(json.loads(raw))
    finally:
        ws.close()
    kinds = [m["type"] for m in messages]
    assert kinds[0] == "status" and kinds[-2:] == ["status", "executing"]
    assert "progress" in kinds and "progress_state" in kinds
    state = next(m["data"] for m in messages if m["type"] == "progress_state")
    assert state["prompt_id"] and all(n["state"] in ("running", "finished")
                                      and n["prompt_id"] == state["prompt_id"]
                                      for n in state["nodes"].values())

    # /prompt errors (HTTP 400) and /history of an unknown id, as the real server answers.
    no_prompt = requests.post(f"{comfyui.url}/prompt", json={"client_id": "raw"}, timeout=5)
    assert no_prompt.status_code == 400 and no_prompt.json()["error"]["type"] == "no_prompt"
    not_in_list = requests.post(f"{comfyui.url}/prompt", json={
        "prompt": txt2img(ckpt="nope.safetensors")}, timeout=5).json()
    [error] = not_in_list["node_errors"]["4"]["errors"]
    assert error["type"] == "value_not_in_list"
    assert error["extra_info"]["input_config"][0] == ["sd15.safetensors", "sdxl/base.safetensors"]
    assert requests.get(f"{comfyui.url}/history/unknown", timeout=5).json() == {}


@pytest.mark.timeout(60)
def test_cancel_returns_only_once_comfyui_stopped_the_prompt(start_comfyui, store) -> None:
    """Real ComfyUI acts on /interrupt between nodes only; the next job must not be
    queued into a ComfyUI still running the cancelled prompt.

    Tried: a job cancelled by its progress callback (how a worker learns it)
    while a 1.5 s VAEDecode runs, then at once the next job. Before, the
    connector returned at once after /interrupt and the next prompt was
    POSTed while the cancelled one still ran. Same through ``cancel_job``.
    """
    server = start_comfyui(slow_nodes={"VAEDecode": 1.5})
    connector = connector_for(server, store)
    running_at_return: list[object] = []

    def cancel_at_decode(report: Progress) -> None:
        if report.details["node_class"] == "VAEDecode":
            raise JobCancelled("c1")

    with pytest.raises(JobCancelled):
        try:
            connector.run_job(job("c1", txt2img(steps=1)), cancel_at_decode)
        finally:
            running_at_return.append(server.running)
    assert running_at_return == [None]
    assert connector.run_job(job("n1", txt2img(steps=1, prefix="n1")), lambda r: None).success

    def run_and_cancel() -> None:
        wait_until(lambda: server._last_node == "8", message="VAEDecode")
        connector.cancel_job("c2")

    threading.Thread(target=run_and_cancel).start()
    with pytest.raises(JobCancelledByService):
        try:
            connector.run_job(job("c2", txt2img(steps=3, prefix="c2")), lambda r: None)
        finally:
            running_at_return.append(server.running)
    assert running_at_return == [None, None]
    assert connector.run_job(job("n2", txt2img(steps=1, prefix="n2")), lambda r: None).success
    assert server.queued_while_busy == []
    statuses = [entry["status"]["messages"][-1][0] for entry in server.history.values()]
    assert statuses == ["execution_interrupted", "execution_success"] * 2


@pytest.mark.timeout(60)
def test_comfyui_that_does_not_stop_in_time_is_unhealthy_until_it_does(
        start_comfyui, store, caplog) -> None:
    """A bounded wait: a node longer than ``stop_wait_seconds`` marks the connector unhealthy.

    Tried: stop_wait_seconds=0.3 and a 2 s VAEDecode. The cancel returns after
    the bound; the health check says ComfyUI still runs the cancelled prompt;
    a log line says so; another connector instance on that URL (as the
    worker's main process has) is unhealthy too; the next job waits for
    ComfyUI to finish that prompt before queueing its own (none is queued
    into a busy ComfyUI), then health is good again everywhere.
    """
    server = start_comfyui(slow_nodes={"VAEDecode": 2.0})
    connector = connector_for(server, store, stop_wait_seconds=0.3)
    caplog.set_level("INFO", logger="emp.connector")

    def cancel_at_decode(report: Progress) -> None:
        if report.details["node_class"] == "VAEDecode":
            raise JobCancelled("stuck")

    started = time.monotonic()
    with pytest.raises(JobCancelled):
        connector.run_job(job("stuck", txt2img(steps=1)), cancel_at_decode)
    assert time.monotonic() - started < 1.9 and server.running is not None
    health = connector.check_health()
    assert not health.healthy and "still runs" in health.details["error"]
    # Another instance on the same URL (the worker's main process asks its own) knows too.
    other = make_connector("comfyui", {"url": server.url})
    assert not other.check_health().healthy
    assert any(getattr(r, "event", None) == "service_stuck" for r in caplog.records)
    assert connector.run_job(job("after", txt2img(steps=1, prefix="a")), lambda r: None).success
    assert server.queued_while_busy == []
    assert connector.check_health().healthy and other.check_health().healthy


@pytest.mark.parametrize("required", [True, False], ids=["required", "not-required"])
def test_a_corrupt_model_file_is_a_model_error_and_no_longer_reported(
        start_comfyui, store, caplog, required) -> None:
    """Real ComfyUI 0.8 on an empty checkpoint file: ``execution_error``
    ``{"node_id": "1", "node_type": "CheckpointLoaderSimple", "exception_type":
    "safetensors._safetensors_rust.SafetensorError", "exception_message": "Error while
    deserializing header: header too small\\n", "traceback": [...], ...}``.

    Tried: a server listing flux.safetensors whose copy is corrupt. The job
    fails with a MODEL error naming the model (all its aliases), retryable only
    when the job's requirements name it (the worker then stops advertising it,
    so the retry goes elsewhere); either way the connector stops reporting it
    and logs ``model_unusable``. Before: a SERVICE error, retried on the same worker.
    """
    server = start_comfyui(checkpoints=["sd15.safetensors", "flux.safetensors"],
                           corrupt_checkpoints=["flux.safetensors"])
    connector = connector_for(server, store)
    caplog.set_level("INFO", logger="emp.connector")
    requirements = {"models": ["flux"]} if required else {}
    with pytest.raises(ConnectorError) as caught:
        connector.run_job(JobInput("bad", "comfyui", {"workflow": txt2img(ckpt="flux.safetensors")},
                                   requirements=requirements), lambda r: None)
    assert caught.value.error_type == ErrorType.MODEL and "header too small" in str(caught.value)
    assert caught.value.message == ("CheckpointLoaderSimple #4: safetensors._safetensors_rust."
                                    "SafetensorError: Error while deserializing header: "
                                    "header too small")
    assert caught.value.details["bad_models"] == {"comfyui": ["flux", "flux.safetensors"]}
    assert caught.value.retryable is required
    assert connector.available_models() == {"comfyui": ["sd15", "sd15.safetensors"]}
    assert [r.event for r in caplog.records if getattr(r, "event", None) == "model_unusable"]


def test_a_prompt_comfyui_queues_after_the_post_timed_out_is_stopped(start_comfyui, store) -> None:
    """Real ComfyUI 0.8, frozen (SIGSTOP) for 6 s while the connector POSTed
    /prompt with a 3 s read timeout: the job failed with ``[timeout] ComfyUI POST
    /prompt timed out``; once ComfyUI resumed, it queued and ran the prompt anyway
    (``/queue`` then showed it running under the job's client id), an orphan the
    job's retry then queued behind. ComfyUI's ``POST /prompt`` takes a
    client-chosen ``prompt_id``, so the connector can find that prompt.

    Tried: a server that takes 1.5 s to queue and answer, a 0.5 s HTTP timeout,
    and a prompt that then runs for 3 s. Before: the error came at once and the
    orphan ran to the end (``execution_success``), no interrupt. Now the job still
    fails with the timeout (retryable), but only after the orphan was stopped.
    """
    server = start_comfyui(prompt_delay_seconds=1.5, slow_nodes={"VAEDecode": 3})
    connector = connector_for(server, store)
    connector.client.http_timeout = 0.5
    started = time.monotonic()
    with pytest.raises(ConnectorError) as caught:
        connector.run_job(job("slow-post", txt2img(steps=1)), lambda report: None)
    assert caught.value.error_type == ErrorType.TIMEOUT and "POST /prompt" in str(caught.value)
    assert caught.value.retryable
    [(prompt_id, entry)] = server.history.items()  # it ended before run_job returned
    assert server.interrupts == [prompt_id]
    assert entry["status"]["messages"][-1][0] == "execution_interrupted"
    assert time.monotonic() - started < 10


def test_a_cached_output_whose_file_was_deleted_is_saved_again(comfyui, store) -> None:
    """Studios clean ComfyUI's output folder once the outputs are stored. Real
    ComfyUI 0.8 then serves an identical workflow from its cache anyway:
    ``execution_cached {"nodes": ["1", "2", "3"]}``, ``executed {"node": "3",
    "output": {"images": [{"filename": "clean_00001_.png", "subfolder": "",
    "type": "output"}]}}`` naming the deleted file, and ``/view`` answers 404.
    With an extra input on the SaveImage node (ComfyUI ignores inputs a node does
    not declare but keys its cache on them) it re-ran only that node:
    ``execution_cached {"nodes": ["1", "2"]}`` and wrote the file again.

    Tried: a txt2img job, its output file deleted from ComfyUI's output folder,
    then the same workflow again. Before: ``[service] ComfyUI GET /view
    clean_00001_.png: HTTP 404``, and the same on every retry. Now the output
    node runs again (its inputs cached) and the job gets its image.
    """
    connector = connector_for(comfyui, store)
    first = connector.run_job(job("first", txt2img(steps=1, prefix="clean")), lambda r: None)
    [stored] = first.output_files
    (comfyui.dirs["output"] / stored["filename"]).unlink()
    reports: list[Progress] = []
    again = connector.run_job(job("again", txt2img(steps=1, prefix="clean")), reports.append)
    [entry] = again.output_files
    assert store.path_for("again", entry["filename"]).read_bytes().startswith(b"\x89PNG")
    cached = [sorted(next(m[1]["nodes"] for m in e["status"]["messages"]
                          if m[0] == "execution_cached")) for e in comfyui.history.values()]
    assert cached == [[], ["3", "4", "5", "6", "7", "8", "9"], ["3", "4", "5", "6", "7", "8"]]
    percents = [r.percent for r in reports]
    assert percents == sorted(percents) and percents[-1] == 100
    assert reports[-1].message == "completed" and not reports[-1].details["from_cache"]


def test_comfyui_going_away_mid_job_is_a_network_error_that_says_so(start_comfyui, store) -> None:
    """Real ComfyUI 0.8 killed (kill -9) 4 s into a job: the socket closed, the
    reconnects were refused and the job failed 2 s later with ``[network] ComfyUI
    WebSocket ws://127.0.0.1:18188/ws?clientId=emp-a1eb...: ConnectionRefusedError(111,
    'Connection refused')``, which names neither the prompt nor what happened.

    Tried: the same with the test server stopped during a 3 s VAEDecode. Now the
    message says ComfyUI went away while the prompt ran; still a NETWORK error
    (retryable: the job may run again once ComfyUI is back).
    """
    server = start_comfyui(slow_nodes={"VAEDecode": 3})
    connector = connector_for(server, store)
    threading.Thread(target=lambda: (wait_until(lambda: server._last_node == "8", timeout=10),
                                     server.stop()), daemon=True).start()
    with pytest.raises(ConnectorError) as caught:
        connector.run_job(job("gone", txt2img(steps=1)), lambda report: None)
    assert caught.value.error_type == ErrorType.NETWORK and caught.value.retryable
    assert "went away while prompt" in caught.value.message
    assert "Connection refused" in caught.value.message


@pytest.mark.timeout(60)
def test_a_job_behind_other_clients_prompts_says_it_waits_in_comfyuis_queue(
        start_comfyui, store) -> None:
    """A studio's artists queue their own prompts on the ComfyUI the worker uses.
    Real ComfyUI 0.8, with another client's 4 s prompt running: the job's socket
    got only ``status {"exec_info": {"queue_remaining": 2}}`` (then 1) until, 4 s
    later, ``execution_start`` for the job's prompt.

    Tried: another client's 2 s prompt, then a job; then the same with a job
    timeout of 0.5 s. Before: the job said "started" at 0 % the whole wait, and
    the timeout error read "prompt X did not finish within 0.5s", as if it had
    run. Now progress says it waits with 1 prompt ahead, and the timeout says the
    prompt never started because ComfyUI was busy with other prompts.
    """
    server = start_comfyui(slow_nodes={"VAEDecode": 2})
    connector = connector_for(server, store)

    def other_client(steps: int) -> None:  # new steps each time: not served from cache
        requests.post(f"{server.url}/prompt", json={
            "prompt": txt2img(steps=steps, prefix="artist"), "client_id": "artist"}, timeout=5)
        wait_until(lambda: server.running is not None, message="the artist's prompt to run")

    other_client(1)
    reports: list[Progress] = []
    output = connector.run_job(job("behind", txt2img(steps=2)), reports.append)
    assert output.success
    waiting = [r for r in reports if r.details.get("queue_ahead")]
    assert waiting and waiting[0].percent == 0 and waiting[0].details["queue_ahead"] == 1
    assert waiting[0].message == "waiting in ComfyUI's queue: 1 prompt ahead"
    assert reports[-1].message == "completed" and not reports[-1].details["queue_ahead"]

    wait_until(lambda: server.running is None and not server.pending, message="an idle server")
    other_client(3)
    impatient = connector_for(server, store, timeout_seconds=0.5)
    with pytest.raises(ConnectorError) as caught:
        impatient.run_job(job("gives-up", txt2img(steps=2)), lambda report: None)
    assert caught.value.error_type == ErrorType.TIMEOUT
    assert "never started" in caught.value.message and "1 prompt ahead" in caught.value.message


@pytest.mark.timeout(60)
def test_a_prompt_another_client_removes_from_comfyuis_queue_fails_the_job_at_once(
        start_comfyui, store) -> None:
    """An artist clears ComfyUI's queue (or deletes one item) from its web page.
    Real ComfyUI 0.8, the job's prompt waiting behind another client's, ``POST
    /queue {"clear": true}`` from a third client: the job's socket got one
    ``status`` and nothing more; the prompt was in neither ``/queue`` nor
    ``/history``. Before: the job waited out its whole timeout (20 s there, 600 by
    default) and failed with ``[timeout] prompt ... did not finish within 20s``.

    Tried: the same on the test server (history checked every 0.3 s). Now the
    job fails within a few seconds with a service error (retryable) saying the
    prompt left ComfyUI's queue without running.
    """
    server = start_comfyui(slow_nodes={"VAEDecode": 3})
    connector = connector_for(server, store, timeout_seconds=30)
    connector.history_poll_seconds = 0.3
    requests.post(f"{server.url}/prompt", json={
        "prompt": txt2img(steps=1, prefix="artist"), "client_id": "artist"}, timeout=5)
    wait_until(lambda: server.running is not None, message="the artist's prompt to run")

    def clear_when_queued() -> None:
        wait_until(lambda: server.pending, message="the job's prompt to queue")
        requests.post(f"{server.url}/queue", json={"clear": True}, timeout=5)

    threading.Thread(target=clear_when_queued, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(ConnectorError) as caught:
        connector.run_job(job("cleared", txt2img(steps=2)), lambda report: None)
    assert time.monotonic() - started < 15  # half its 30 s timeout (a few seconds here)
    assert caught.value.error_type == ErrorType.SERVICE and caught.value.retryable
    assert "left ComfyUI's queue without running" in caught.value.message


def test_a_model_comfyui_no_longer_lists_is_reported_again_once_it_is_back(
        start_comfyui, store) -> None:
    """A model removed from ComfyUI's disk after the worker read its models: the
    job gets a MODEL error naming it (the worker stops advertising it, see
    test_comfyui_jobs), but unlike a corrupt file, which ComfyUI keeps listing,
    the connector does not hide it for good: copied back, it is reported again."""
    server = start_comfyui(checkpoints=["sd15.safetensors", "flux.safetensors"])
    connector = connector_for(server, store)
    server.checkpoints.remove("flux.safetensors")
    with pytest.raises(ConnectorError) as caught:
        connector.run_job(JobInput("gone", "comfyui", {"workflow": txt2img(
            ckpt="flux.safetensors")}, requirements={"models": ["flux"]}), lambda r: None)
    assert caught.value.error_type == ErrorType.MODEL and caught.value.retryable
    assert caught.value.details["bad_models"] == {"comfyui": ["flux", "flux.safetensors"]}
    assert "Value not in list" in caught.value.message
    server.checkpoints.append("flux.safetensors")
    assert "flux.safetensors" in connector.available_models()["comfyui"]
