"""A ComfyUI job's size is read from its workflow graph, and routes it.

Before, the comfyui job type declared no size features: every ComfyUI job was one
unit, so a 1-step 512x512 image and a 40-step 1024x1024 one were predicted alike
and went to the same pool; only the simulation job type was routed by its size
(and the simulator gave its ComfyUI traces flat size fields no production job had).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from test_routing import POOLS, router  # noqa: F401 - the live pools fixture

from capability_router.duration import job_size
from capability_router.workflow_size import COMFYUI_FEATURES, comfyui_size_fields
from emp_tasks import producer


def workflow(steps: object = 20, width: object = 1024, height: object = 1024,
             batch: int = 1, **extra: dict) -> dict:
    """A text-to-image workflow in API format, as ComfyUI's "Save (API)" writes it."""
    return {
        "3": {"class_type": "KSampler", "inputs": {
            "seed": 5, "steps": steps, "cfg": 8, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sdxl.safetensors"}},
        "5": {"class_type": "EmptyLatentImage",
              "inputs": {"width": width, "height": height, "batch_size": batch}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a fox", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "x"}},
        **extra,
    }


def units(payload: dict) -> float:
    return job_size(comfyui_size_fields(payload), COMFYUI_FEATURES).work_units


def test_size_is_read_from_sampler_and_latent_nodes() -> None:
    assert comfyui_size_fields({"workflow": workflow()}) == {
        "steps": 20, "width": 1024, "height": 1024, "frames": 1}
    assert units({"workflow": workflow(steps=30, width=512, height=512, batch=4)}) == 30
    assert units({"prompt": workflow(steps=10)}) == 10  # ComfyUI's own field name
    # A refiner pass: a KSamplerAdvanced running steps 20-25 of 25 adds 5 steps, and an
    # upscale to 2048x2048 after the first latent is the size that counts.
    refined = workflow(steps=20, **{
        "10": {"class_type": "KSamplerAdvanced", "inputs": {
            "steps": 25, "start_at_step": 20, "end_at_step": 10000, "noise_seed": 1,
            "model": ["4", 0], "latent_image": ["11", 0]}},
        "11": {"class_type": "LatentUpscale", "inputs": {
            "samples": ["3", 0], "upscale_method": "nearest-exact", "width": 2048,
            "height": 2048, "crop": "disabled"}}})
    assert comfyui_size_fields({"workflow": refined}) == {
        "steps": 25, "width": 2048, "height": 2048, "frames": 1}
    # A video latent: its length is the frame count.
    video = {"1": {"class_type": "EmptyHunyuanLatentVideo",
                   "inputs": {"width": 512, "height": 512, "length": 97, "batch_size": 1}},
             "2": {"class_type": "BasicScheduler",
                   "inputs": {"scheduler": "simple", "steps": 20, "denoise": 1, "model": ["3", 0]}}}
    assert units({"workflow": video}) == 20 * 0.25 * 97


def test_what_is_not_a_plain_size_is_left_out() -> None:
    """Tried: sizes given as links to other nodes, text, booleans, negative and infinite
    numbers, nodes that are not objects, and a payload with no workflow graph."""
    linked = workflow(steps=["12", 0], width="1024", height=True)
    assert comfyui_size_fields({"workflow": linked}) == {}
    odd = {"1": "not a node", "2": {"inputs": ["x"]}, "3": {"class_type": "KSampler",
                                                          "inputs": {"steps": float("inf")}},
           "4": {"class_type": "EmptyLatentImage", "inputs": {"width": -5, "height": 64}}}
    assert comfyui_size_fields({"workflow": odd}) == {}
    flat = {"steps": 20, "width": 512}  # the simulator's traces: already flat
    assert comfyui_size_fields(flat) == flat
    assert comfyui_size_fields({"workflow": {}, "steps": 3}) == {"workflow": {}, "steps": 3}
    assert comfyui_size_fields(None) == {}


@pytest.mark.usefixtures("router")
def test_comfyui_jobs_are_routed_by_their_workflow_size(
        app, client: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tried: two comfyui workflows differing only in size, with routing on. Before, both
    were one unit (the 10 s prior) and went to "standard"; now the 1-step 512x512 image
    is predicted 2.5 s (standard, the nearest), the 20-step 1024x1024 one 200 s and the
    97-frame video 4,850 s (both heavy)."""
    pools = tmp_path / "pools.toml"
    pools.write_text(POOLS)
    monkeypatch.setenv("EMP_POOLS_FILE", str(pools))
    task = producer.services(app)["comfyui"]

    def decision(graph: dict) -> dict:
        spec = task.job_spec((), {"workflow": graph}, {})
        return json.loads(spec.routing["routing"])

    small, large = decision(workflow(1, 512, 512)), decision(workflow(20))
    assert small["predicted_seconds"] == 2.5 and small["pool"] == "standard"
    assert large["predicted_seconds"] == 200 and large["pool"] == "heavy"
    video = workflow(20, 512, 512, **{"5": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {
        "width": 512, "height": 512, "length": 97, "batch_size": 1}}})
    assert decision(video)["predicted_seconds"] == 4850 and decision(video)["pool"] == "heavy"


@pytest.mark.usefixtures("router")
def test_sizes_too_large_to_multiply_are_predicted_at_the_cap(
        app, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tried, with routing on: a simulation job of 1e300 steps of a 1e300 x 1e300 image,
    and a comfyui workflow whose KSampler takes 10**400 steps. The first made infinite
    work units and the submit failed with OverflowError ("cannot convert float infinity
    to integer"); the second, "int too large to convert to float". Now the product is
    capped (1e12 units: the nearest pool, heavy) and an int no float holds is not read."""
    pools = tmp_path / "pools.toml"
    pools.write_text(POOLS)
    monkeypatch.setenv("EMP_POOLS_FILE", str(pools))
    tasks = producer.services(app)
    huge = tasks["simulation"].job_spec((), {"steps": 1e300, "width": 1e300, "height": 1e300},
                                        {})
    assert huge.pool == "heavy" and huge.record_fields()["work_units"] == "1e+12"
    graph = workflow(steps=10**400)
    spec = tasks["comfyui"].job_spec((), {"workflow": graph}, {})
    assert json.loads(spec.routing["routing"])["predicted_seconds"] == 10  # 1024x1024, 1 unit
