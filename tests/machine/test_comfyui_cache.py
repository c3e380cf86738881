"""ComfyUI's execution cache, as the test double keeps it, seen through the connector.

Stock ComfyUI 0.8 (execution.py ``PromptExecutor.execute_async``: ``set_prompt``
then ``clean_unused`` on each prompt) keeps by default only the outputs of the
nodes of the last prompt it executed; see tests/machine/comfyui_cache.py.
"""

from __future__ import annotations

import pytest
from comfyui_server import ComfyUITestServer, txt2img
from machine_fixtures import *  # noqa: F403 - pytest fixtures

from machine.connectors import JobInput, make_connector
from machine.outputs import LocalOutputStore

A = txt2img(steps=2, prefix="a")
#: Nothing in common with A: another checkpoint, so every node downstream differs too.
B = txt2img(ckpt="sdxl/base.safetensors", steps=2, width=768, height=768, prefix="b")
#: Only A's EmptyLatentImage (node 5) in common.
C = txt2img(ckpt="sdxl/base.safetensors", steps=2, prefix="c")


def run_all(server: ComfyUITestServer, store: LocalOutputStore,
            workflows: list[dict]) -> list[tuple[list[str], str, str]]:
    """Each workflow as a job, in turn: (nodes ComfyUI reported cached, the output file,
    the job's last progress message)."""
    connector = make_connector("comfyui", {"url": server.url, "output_store": store})
    connector.initialize()
    results = []
    for n, workflow in enumerate(workflows):
        reports: list = []
        job = JobInput(f"job-{server.port}-{n}", "comfyui", {"workflow": workflow})
        output = connector.run_job(job, reports.append)
        messages = server.history[output.data["prompt_id"]]["status"]["messages"]
        cached = next(m[1]["nodes"] for m in messages if m[0] == "execution_cached")
        [entry] = output.output_files
        results.append((sorted(cached), entry["filename"], reports[-1].message))
    return results


def test_only_the_last_prompts_nodes_stay_cached(start_comfyui, store) -> None:
    """Real ComfyUI 0.8 (default cache) serves an identical workflow from cache
    only right after itself: its cache holds the nodes of the last prompt only.

    Tried: workflow A, A again, B (nothing in common), A, then C (only A's latent
    in common), A. Before, the double cached every node forever: the third A was
    served from cache (every node in ``execution_cached``, the first A's file
    named again). Now it runs in full and saves a new file; a node C shares with
    A is kept across C and is the only one cached in the last A. The connector
    says "completed from ComfyUI's cache" for the one cached run only.
    """
    server = start_comfyui(checkpoints=["sd15.safetensors", "sdxl/base.safetensors"])
    a1, a2, b, a3, c, a4 = run_all(server, store, [A, A, B, A, C, A])
    assert a1[0] == [] and a1[2] == "completed"
    assert a2 == (sorted(A), a1[1], "completed from ComfyUI's cache")
    assert b[0] == [] and b[2] == "completed"
    assert a3[0] == [] and a3[1] != a1[1] and a3[2] == "completed"
    assert c[0] == ["5"] and a4[0] == ["5"] and a4[2] == "completed"
    assert len({a1[1], b[1], a3[1], c[1], a4[1]}) == 5  # each full run saved a new file


def test_cache_lru_and_cache_none_keep_what_comfyui_keeps_with_those_flags(
        start_comfyui, store) -> None:
    """``--cache-lru N`` keeps up to N node outputs across prompts; ``--cache-none``
    keeps nothing. Tried: A, B, A with ``cache_lru=100``, and A, A with
    ``cache_none``. Before, the double had neither option (TypeError). Now the
    last A is served from cache with the LRU cache and every run is in full
    without one; a negative size or both options at once are refused."""
    two = ["sd15.safetensors", "sdxl/base.safetensors"]
    lru = start_comfyui(checkpoints=two, cache_lru=100)
    first, _, again = run_all(lru, store, [A, B, A])
    assert again == (sorted(A), first[1], "completed from ComfyUI's cache")

    off = start_comfyui(cache_none=True)
    first, again = run_all(off, store, [A, A])
    assert first[0] == again[0] == [] and again[1] != first[1]

    with pytest.raises(ValueError, match="positive size"):
        start_comfyui(cache_lru=-1)
    with pytest.raises(ValueError, match="exclude each other"):
        start_comfyui(cache_lru=10, cache_none=True)
