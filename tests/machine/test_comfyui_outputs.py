"""ComfyUI outputs that are not files: text (PreviewAny) and kinds the connector does not know."""

from __future__ import annotations

import json

import requests
from comfyui_server import ComfyUITestServer, txt2img
from machine_fixtures import *  # noqa: F403 - pytest fixtures

from emp_tasks.websocket_client import WebSocketClient
from machine.connectors import JobInput, make_connector
from machine.connectors.comfyui import ComfyUIConnector
from machine.connectors.comfyui_outputs import sort_outputs
from machine.outputs import LocalOutputStore

#: A workflow whose only output is text, as posted to a real ComfyUI 0.8.0.
TEXT_ONLY = {"1": {"class_type": "PrimitiveString", "inputs": {"value": "hello from emp"}},
             "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}


def connector_for(server: ComfyUITestServer, store: LocalOutputStore) -> ComfyUIConnector:
    connector = make_connector("comfyui", {"url": server.url, "output_store": store,
                                           "connector_id": "test-comfyui"})
    connector.initialize()
    return connector  # type: ignore[return-value]


def run(connector: ComfyUIConnector, job_id: str, workflow: dict):  # noqa: ANN201
    return connector.run_job(JobInput(job_id, "comfyui", {"workflow": workflow}),
                             lambda report: None)


def test_the_double_sends_text_outputs_as_real_comfyui_does(comfyui) -> None:
    """Real ComfyUI 0.8.0 (CPU), TEXT_ONLY posted: ``executed {"node": "2",
    "display_node": "2", "output": {"text": ["hello from emp"]}, "prompt_id": ...}``
    and ``/history`` outputs ``{"2": {"text": ["hello from emp"]}}``, no file;
    PreviewAny of a PrimitiveInt 7 gave ``["7"]``, of a literal string that string."""
    ws = WebSocketClient.connect(f"ws://127.0.0.1:{comfyui.port}/ws?clientId=raw")
    try:
        prompt_id = requests.post(f"{comfyui.url}/prompt", json={
            "prompt": TEXT_ONLY, "client_id": "raw"}, timeout=5).json()["prompt_id"]
        executed = []
        while True:
            raw = ws.receive(timeout=5)
            message = json.loads(raw) if isinstance(raw, str) else {"type": None}
            if message["type"] == "executed":
                executed.append(message["data"])
            if message["type"] == "executing" and message["data"]["node"] is None:
                break
    finally:
        ws.close()
    assert executed == [{"node": "2", "display_node": "2",
                         "output": {"text": ["hello from emp"]}, "prompt_id": prompt_id}]
    history = requests.get(f"{comfyui.url}/history/{prompt_id}", timeout=5).json()[prompt_id]
    assert history["outputs"] == {"2": {"text": ["hello from emp"]}}
    assert history["status"]["status_str"] == "success"


def test_a_text_only_workflow_returns_its_text(comfyui, store) -> None:
    """Tried: PrimitiveString -> PreviewAny ("Preview as Text"), the only output node.
    Before, the job succeeded with ``output_files == []`` and nothing else said what
    it produced: the text was only in the raw ``outputs`` copy of ComfyUI's history.
    Now ``data["output_text"]`` holds it, one entry per string, like a file entry
    (``node_id``, ``kind``) with the ``text`` instead of a ``url``; served again from
    ComfyUI's cache, the same."""
    connector = connector_for(comfyui, store)
    for job_id in ("text", "cached"):
        output = run(connector, job_id, TEXT_ONLY)
        assert output.success and output.output_files == []
        assert output.data["output_text"] == [
            {"node_id": "2", "kind": "text", "text": "hello from emp"}]
        assert output.data["other_outputs"] == []
    assert comfyui.history[output.data["prompt_id"]]["status"]["messages"][1][1]["nodes"] == [
        "1", "2"]


def test_an_image_and_text_workflow_returns_both(comfyui, store) -> None:
    """Tried: txt2img whose prompt comes from a PrimitiveString that a PreviewAny
    shows too, plus a PreviewAny of a literal number. Before, the image came back
    and both texts were dropped; now the image is in ``output_files`` and the
    texts, in the order of ComfyUI's outputs, in ``data["output_text"]``."""
    workflow = {**txt2img(steps=1),
                "10": {"class_type": "PrimitiveString", "inputs": {"value": "a red fox"}},
                "11": {"class_type": "PreviewAny", "inputs": {"source": ["10", 0]}},
                "12": {"class_type": "PreviewAny", "inputs": {"source": 7}}}
    workflow["6"] = {"class_type": "CLIPTextEncode", "inputs": {"text": ["10", 0],
                                                                "clip": ["4", 1]}}
    output = run(connector_for(comfyui, store), "both", workflow)
    [image] = output.output_files
    assert (image["node_id"], image["kind"], image["preview"]) == ("9", "images", False)
    assert store.path_for("both", image["filename"]).read_bytes().startswith(b"\x89PNG")
    assert output.data["output_text"] == [
        {"node_id": "11", "kind": "text", "text": "a red fox"},
        {"node_id": "12", "kind": "text", "text": "7"}]


def test_an_output_kind_neither_file_nor_text_is_returned_and_logged(
        comfyui, store, caplog) -> None:
    """Real ComfyUI 0.8.0's Preview3D (model_file "3d/model.glb") sent ``executed``
    with ``{"result": ["3d/model.glb", null, null]}``: no file entry, no text.

    Tried: that node beside a SaveImage. Before, the job succeeded with the image
    only, nothing said a node's output was left out. Now it is in
    ``data["other_outputs"]`` as ComfyUI sent it, and ``output_unhandled`` is
    logged, a warning naming the node and the kind."""
    caplog.set_level("INFO", logger="emp.connector")
    workflow = {**txt2img(steps=1),
                "10": {"class_type": "Preview3D", "inputs": {"model_file": "3d/model.glb"}}}
    output = run(connector_for(comfyui, store), "3d", workflow)
    assert output.success and len(output.output_files) == 1
    assert output.data["other_outputs"] == [
        {"node_id": "10", "kind": "result", "value": ["3d/model.glb", None, None]}]
    [record] = [r for r in caplog.records if getattr(r, "event", None) == "output_unhandled"]
    assert record.levelname == "WARNING" and record.job_id == "3d"
    assert "node 10" in record.getMessage() and "'result'" in record.getMessage()


def test_outputs_real_comfyui_sent_are_sorted_into_files_text_and_the_rest() -> None:
    """The ``outputs`` real ComfyUI 0.8.0 sent for SaveAnimatedWEBP (``images`` and
    ``animated: [true]``), SaveLatent (``latents``, a file), PreviewAny and Preview3D.
    ``animated`` only flags the node's images: neither returned nor logged."""
    found = sort_outputs({
        "2": {"images": [{"filename": "emp_00002_.webp", "subfolder": "", "type": "output"}],
              "animated": [True]},
        "3": {"latents": [{"filename": "emp_00001_.latent", "subfolder": "latents",
                           "type": "output"}]},
        "5": {"text": ["a caption", {"not": "a string"}]},
        "7": {"result": ["3d/model.glb", None, None]},
    })
    assert [(node, kind, item["filename"]) for node, kind, item in found.files] == [
        ("2", "images", "emp_00002_.webp"), ("3", "latents", "emp_00001_.latent")]
    assert found.text == [{"node_id": "5", "kind": "text", "text": "a caption"}]
    assert found.other == [{"node_id": "5", "kind": "text", "value": [{"not": "a string"}]},
                           {"node_id": "7", "kind": "result",
                            "value": ["3d/model.glb", None, None]}]
