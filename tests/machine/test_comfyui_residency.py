"""ComfyUI model residency: disk from /object_info, the last prompts' models in the card (LRU)."""

from __future__ import annotations

from comfyui_server import txt2img
from machine_fixtures import *  # noqa: F403 - pytest fixtures

from machine.connectors import JobInput, make_connector

CHECKPOINTS = ("a.safetensors", "b.safetensors", "c.safetensors")


def connector_for(server, store, **settings):  # noqa: ANN001, ANN201
    connector = make_connector("comfyui", {"url": server.url, "output_store": store,
                                           "connector_id": "test-comfyui", **settings})
    connector.initialize()
    return connector


def run(connector, ckpt: str) -> None:  # noqa: ANN001
    connector.run_job(JobInput(f"job-{ckpt}", "comfyui", {"workflow": txt2img(ckpt=ckpt)}),
                      lambda report: None)


def tiers(connector) -> dict[str, str]:  # noqa: ANN001
    return {m: p.tier for m, p in connector.residency().items()}


def test_the_last_models_run_within_the_cards_memory_are_warm(start_comfyui, store) -> None:
    server = start_comfyui(checkpoints=CHECKPOINTS)
    connector = connector_for(server, store, gpu_memory_gb=14, model_size_gb=6.5)
    assert set(tiers(connector).values()) == {"disk"}
    assert tiers(connector)["a"] == "disk"  # aliases too
    for ckpt in ("a.safetensors", "b.safetensors", "a.safetensors", "c.safetensors"):
        run(connector, ckpt)
    held = tiers(connector)
    assert {m: held[m] for m in CHECKPOINTS} == {
        "a.safetensors": "gpu", "b.safetensors": "disk", "c.safetensors": "gpu"}
    assert (held["a"], held["b"], held["c"]) == ("gpu", "disk", "gpu")


def test_the_cards_memory_defaults_to_the_servers_vram(start_comfyui, store) -> None:
    """The double reports a 24 GB card: three 6.5 GB models fit, not four."""
    server = start_comfyui(checkpoints=(*CHECKPOINTS, "d.safetensors"))
    connector = connector_for(server, store)
    for ckpt in ("a.safetensors", "b.safetensors", "c.safetensors", "d.safetensors"):
        run(connector, ckpt)
    held = tiers(connector)
    assert [held[c] for c in "abcd"] == ["disk", "gpu", "gpu", "gpu"]


def test_a_cpu_server_holds_nothing_warm(start_comfyui, store) -> None:
    server = start_comfyui(checkpoints=CHECKPOINTS, cpu=True)
    connector = connector_for(server, store)
    run(connector, "a.safetensors")
    assert set(tiers(connector).values()) == {"disk"}
