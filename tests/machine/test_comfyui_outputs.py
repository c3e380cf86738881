"""ComfyUI outputs that are not files: text (PreviewAny) and kinds the connector does not know."""

from __future__ import annotations

import json

import requests
from machine_fixtures import *  # noqa: F403 - pytest fixtures

from emp_tasks.websocket_client import WebSocketClient

#: A workflow whose only output is text, as posted to a real ComfyUI 0.8.0.
TEXT_ONLY = {"1": {"class_type": "PrimitiveString", "inputs": {"value": "hello from emp"}},
             "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}


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
