"""emp.comfyui jobs on real ``emp worker`` processes whose connectors talk to ComfyUI servers."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest
from comfyui_server import ComfyUITestServer, txt2img
from machine_fixtures import *  # noqa: F403 - pytest fixtures
from machine_helpers import wait_until

from capability_router.registry import WorkerRegistry
from emp_tasks.producer import cancel, get_job, job_events, submit
from emp_tasks.worker import build_profile


def comfy_env(server: ComfyUITestServer, tmp_path: Path) -> dict[str, str]:
    return {"EMP_CONNECTOR": "comfyui", "COMFYUI_URL": server.url, "WORKER_SERVICES": "comfyui",
            "EMP_OUTPUT_DIR": str(tmp_path / "outputs"),
            "EMP_COMFYUI_STARTUP_TIMEOUT_SECONDS": "5"}


@pytest.mark.timeout(120)
def test_comfyui_job_runs_to_completion_with_progress_and_outputs(
        app, start_worker, comfyui, tmp_path) -> None:
    start_worker("comfy-1", **comfy_env(comfyui, tmp_path))
    result = submit("comfyui", {"workflow": txt2img(steps=4)}, app=app)
    value = result.get(timeout=60)

    assert value["success"] and value["worker"].startswith("comfy-1@")
    [output] = value["output_files"]
    stored = Path(urlsplit(output["url"]).path)
    assert stored.is_relative_to(tmp_path / "outputs" / result.id)
    assert stored.read_bytes().startswith(b"\x89PNG") and output["size"] == stored.stat().st_size
    record = get_job(result.id, app=app)
    assert record["status"] == "completed" and record["worker_id"] == "comfy-1"
    assert record["progress"] == 100 and record["result"]["output_files"] == [output]
    progress = [e["data"] for e in job_events(result.id, app=app)
                if e["event"] == "update_job_progress"]
    steps = [(p["step"], p["max_steps"]) for p in progress if p["node_class"] == "KSampler"
             and p["step"]]
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert all(p["nodes_total"] == 7 for p in progress)
    assert [p["progress"] for p in progress] == sorted(p["progress"] for p in progress)


@pytest.mark.timeout(120)
def test_model_requirement_goes_to_the_worker_whose_comfyui_has_it(
        app, start_worker, start_comfyui, tmp_path) -> None:
    server_a = start_comfyui(checkpoints=["sd15.safetensors"])
    server_b = start_comfyui(checkpoints=["sd15.safetensors", "flux-dev.safetensors"])
    start_worker("comfy-a", **comfy_env(server_a, tmp_path))
    start_worker("comfy-b", **comfy_env(server_b, tmp_path))
    results = [submit("comfyui", {"workflow": txt2img(ckpt="flux-dev.safetensors", steps=1)},
                      requirements={"models": [name]}, app=app)
               for name in ["flux-dev.safetensors", "flux-dev"] * 3]
    for result in results:
        assert result.get(timeout=60)["success"]
        assert get_job(result.id, app=app)["worker_id"] == "comfy-b"
    assert len(server_b.history) == 6 and server_a.history == {}
    # A model both have runs on either; all of them complete.
    shared = [submit("comfyui", {"workflow": txt2img(steps=1)},
                     requirements={"models": ["sd15.safetensors"]}, app=app) for _ in range(4)]
    assert all(r.get(timeout=60)["success"] for r in shared)


@pytest.mark.timeout(120)
def test_out_of_memory_is_retried_with_backoff_up_to_max_retries(
        app, start_worker, start_comfyui, tmp_path) -> None:
    server = start_comfyui(max_pixels=512 * 512)
    start_worker("comfy-1", **comfy_env(server, tmp_path))
    oom = submit("comfyui", {"workflow": txt2img(width=1024)}, max_retries=1, app=app)
    missing = submit("comfyui", {"workflow": txt2img(ckpt="not-here.safetensors")},
                     max_retries=3, app=app)
    wait_until(lambda: {get_job(j.id, app=app)["status"] for j in (oom, missing)} == {"failed"},
               timeout=60, message="both jobs to fail")
    oom_record, missing_record = get_job(oom.id, app=app), get_job(missing.id, app=app)
    assert oom_record["attempts"] == 2 and "[memory]" in oom_record["last_error"]
    assert [e["event"] for e in job_events(oom.id, app=app)].count("job_retrying") == 1
    assert missing_record["attempts"] == 1 and "[model]" in missing_record["last_error"]
    assert len(server.history) == 2  # OOM ran twice; the missing model never ran


@pytest.mark.timeout(120)
def test_cancelling_a_running_comfyui_job_interrupts_comfyui(
        app, start_worker, comfyui, tmp_path) -> None:
    start_worker("comfy-1", **comfy_env(comfyui, tmp_path))
    long = submit("comfyui", {"workflow": txt2img(steps=1000)}, app=app)
    wait_until(lambda: (get_job(long.id, app=app).get("progress_details") or {}).get("step", 0)
               >= 2, timeout=60, message="sampling to start")
    assert cancel(long.id, app=app) == "cancelled"
    wait_until(lambda: comfyui.history, timeout=10, message="the prompt to end")
    [(prompt_id, entry)] = comfyui.history.items()
    assert comfyui.interrupts == [prompt_id]
    assert entry["status"]["messages"][-1][0] == "execution_interrupted"
    nxt = submit("comfyui", {"workflow": txt2img(steps=1)}, app=app)
    assert nxt.get(timeout=30)["success"]
    assert get_job(long.id, app=app)["status"] == "cancelled"


@pytest.mark.timeout(120)
def test_cancel_reaches_comfyui_while_a_node_reports_no_progress(
        app, start_worker, start_comfyui, tmp_path) -> None:
    """No progress call to learn it from: the cancellation watcher tells the connector.

    Like real ComfyUI, the double acts on the interrupt only once the 4 s
    model load ends; the worker waits for that, so the next job's prompt is
    not queued into a ComfyUI still busy with the cancelled one.
    """
    server = start_comfyui(slow_nodes={"CheckpointLoaderSimple": 4})
    start_worker("comfy-1", **comfy_env(server, tmp_path))
    stuck = submit("comfyui", {"workflow": txt2img()}, app=app)
    wait_until(lambda: (get_job(stuck.id, app=app).get("progress_details") or {}).get(
        "node_class") == "CheckpointLoaderSimple", timeout=60, message="the model load")
    assert cancel(stuck.id, app=app) == "cancelled"
    nxt = submit("comfyui", {"workflow": txt2img(steps=1, prefix="next")}, app=app)
    assert nxt.get(timeout=30)["success"]
    [(prompt_id, entry), _] = server.history.items()
    assert server.interrupts == [prompt_id]
    assert entry["status"]["messages"][-1][0] == "execution_interrupted"
    assert server.queued_while_busy == []


@pytest.mark.timeout(150)
def test_a_corrupt_model_file_sends_the_job_to_a_worker_with_a_good_copy(
        app, client, start_worker, start_comfyui, tmp_path) -> None:
    """Real ComfyUI loading a corrupt checkpoint: ``SafetensorError: Error while
    deserializing header: header too small`` (an ``execution_error``).

    Tried: worker comfy-a whose ComfyUI lists flux.safetensors but has a
    corrupt copy; a job requiring it fails there with a ``model`` error; then
    comfy-b (good copy) starts and the job completes on it. comfy-a no longer
    lists the model in its registered profile (other models stay), never
    runs the job again, and its log says so. Before: ``service``, retried 4
    times on comfy-a.
    """
    bad = start_comfyui(checkpoints=["sd15.safetensors", "flux.safetensors"],
                        corrupt_checkpoints=["flux.safetensors"])
    good = start_comfyui(checkpoints=["sd15.safetensors", "flux.safetensors"])
    worker_a = start_worker("comfy-a", **comfy_env(bad, tmp_path))
    result = submit("comfyui", {"workflow": txt2img(ckpt="flux.safetensors", steps=1)},
                    requirements={"models": ["flux"]}, max_retries=3, app=app)
    wait_until(lambda: any("[model]" in (e["data"].get("error") or "")
                           for e in job_events(result.id, app=app)
                           if e["event"] == "job_retrying"),
               timeout=60, message="the model error on comfy-a")

    def profile_of(worker_id: str) -> dict:
        return next(w["profile"] for w in WorkerRegistry(client).workers()
                    if w["worker_id"] == worker_id)

    wait_until(lambda: "flux" not in profile_of("comfy-a")["models"]["comfyui"],
               message="comfy-a to drop flux")
    models_a = profile_of("comfy-a")["models"]["comfyui"]
    assert "flux.safetensors" not in models_a and "sd15.safetensors" in models_a
    start_worker("comfy-b", **comfy_env(good, tmp_path))
    value = result.get(timeout=60)
    assert value["success"] and value["worker"].startswith("comfy-b@")
    record = get_job(result.id, app=app)
    assert record["worker_id"] == "comfy-b" and record["status"] == "completed"
    [entry] = bad.history.values()
    error = entry["status"]["messages"][-1]
    assert error[0] == "execution_error"
    assert error[1]["exception_type"] == "safetensors._safetensors_rust.SafetensorError"
    log = worker_a.log_path.read_text()
    assert "stops advertising comfyui:flux" in log and "header too small" in log


def test_profile_takes_models_from_the_connector(app, comfyui, monkeypatch) -> None:
    monkeypatch.setenv("EMP_CONNECTOR", "comfyui")
    monkeypatch.setenv("COMFYUI_URL", comfyui.url)
    monkeypatch.setenv("WORKER_MODELS", "comfyui:extra-model")
    monkeypatch.delenv("WORKER_SERVICES", raising=False)
    profile = build_profile(app)
    assert profile.services == ["comfyui", "echo", "simulation", "text"]
    assert profile.models["comfyui"] == ["detail", "detail.safetensors", "extra-model", "sd15",
                                         "sd15.safetensors", "sdxl/base",
                                         "sdxl/base.safetensors"]
    monkeypatch.delenv("EMP_CONNECTOR")
    assert build_profile(app).services == ["echo", "simulation", "text"]  # no ComfyUI: not offered


@pytest.mark.timeout(120)
def test_a_worker_whose_comfyui_outlives_the_stop_wait_claims_nothing_until_it_is_done(
        app, client, start_worker, start_comfyui, tmp_path) -> None:
    """Tried: EMP_COMFYUI_STOP_WAIT_SECONDS=0.5 and a 5 s VAEDecode; the job is
    cancelled while it runs. The worker gives up waiting after 0.5 s; its
    registry record then says ``service_unhealthy`` (ComfyUI still runs the
    cancelled prompt: the claim gate in its main process reads what the pool
    process recorded), and a job submitted meanwhile is only sent to ComfyUI
    once the old prompt ended.
    """
    server = start_comfyui(slow_nodes={"VAEDecode": 5})
    start_worker("comfy-1", EMP_COMFYUI_STOP_WAIT_SECONDS="0.5", **comfy_env(server, tmp_path))
    stuck = submit("comfyui", {"workflow": txt2img(steps=1)}, app=app)
    wait_until(lambda: server._last_node == "8", timeout=60, message="VAEDecode")
    assert cancel(stuck.id, app=app) == "cancelled"

    def status_of_worker() -> dict:
        return next(w for w in WorkerRegistry(client).workers() if w["worker_id"] == "comfy-1")

    record = wait_until(lambda: (r := status_of_worker())["status"] == "service_unhealthy"
                        and r, timeout=10, message="the worker to stop claiming")
    assert "still runs prompt" in record["status_reason"]
    nxt = submit("comfyui", {"workflow": txt2img(steps=1, prefix="next")}, app=app)
    assert nxt.get(timeout=60)["success"]
    assert server.queued_while_busy == []
    wait_until(lambda: status_of_worker()["status"] != "service_unhealthy", timeout=10,
               message="the worker to claim again")


@pytest.mark.timeout(150)
def test_a_model_removed_from_comfyui_after_the_worker_started_sends_the_job_elsewhere(
        app, client, start_worker, start_comfyui, tmp_path) -> None:
    """The worker reads its models once, at start; a model deleted from ComfyUI's
    disk later is still advertised. Real ComfyUI 0.8 (sd15.safetensors listed by
    /object_info, then deleted) refuses the prompt with HTTP 400:
    ``{"error": {"type": "prompt_outputs_failed_validation", ...}, "node_errors":
    {"1": {"errors": [{"type": "value_not_in_list", "message": "Value not in list",
    "details": "ckpt_name: 'sd15.safetensors' not in ['dummy.safetensors']",
    "extra_info": {"input_name": "ckpt_name", "input_config": [["dummy.safetensors"],
    {...}], "received_value": "sd15.safetensors"}}], "class_type": "CheckpointLoaderSimple"}}}``.

    Tried: comfy-a starts while its ComfyUI lists flux.safetensors, which is then
    removed; a job requiring flux lands on comfy-a. Before: it failed at once
    (``[model] ... Value not in list``, not retried) and comfy-a kept advertising
    flux, so every flux job routed to it failed the same way. Now comfy-a stops
    advertising flux and the job is retried on comfy-b, which has it.
    """
    bad = start_comfyui(checkpoints=["sd15.safetensors", "flux.safetensors"])
    good = start_comfyui(checkpoints=["sd15.safetensors", "flux.safetensors"])
    worker_a = start_worker("comfy-a", **comfy_env(bad, tmp_path))

    def profile_of(worker_id: str) -> dict:
        return next(w["profile"] for w in WorkerRegistry(client).workers()
                    if w["worker_id"] == worker_id)

    wait_until(lambda: "flux" in profile_of("comfy-a")["models"]["comfyui"],
               message="comfy-a to advertise flux")
    bad.checkpoints.remove("flux.safetensors")  # deleted from its disk
    result = submit("comfyui", {"workflow": txt2img(ckpt="flux.safetensors", steps=1)},
                    requirements={"models": ["flux"]}, max_retries=3, app=app)
    wait_until(lambda: "flux" not in profile_of("comfy-a")["models"]["comfyui"]
               or get_job(result.id, app=app)["status"] == "failed",
               timeout=60, message="comfy-a to drop flux")
    assert get_job(result.id, app=app)["status"] != "failed"
    models_a = profile_of("comfy-a")["models"]["comfyui"]
    assert "flux.safetensors" not in models_a and "sd15.safetensors" in models_a
    start_worker("comfy-b", **comfy_env(good, tmp_path))
    value = result.get(timeout=60)
    assert value["success"] and value["worker"].startswith("comfy-b@")
    assert bad.history == {} and len(good.history) == 1
    assert "stops advertising comfyui:flux" in worker_a.log_path.read_text()
