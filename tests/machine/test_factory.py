"""Connectors built by name and from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from machine.connectors import ConnectorError, ErrorType, connector_from_env, make_connector
from machine.connectors.comfyui import DEFAULT_STARTUP_TIMEOUT_SECONDS, ComfyUIConnector
from machine.connectors.comfyui_remote import ComfyUIRemoteConnector
from machine.connectors.simulation import SimulationConnector


def test_make_connector_by_kind() -> None:
    assert isinstance(make_connector("comfyui"), ComfyUIConnector)
    assert isinstance(make_connector("comfyui-remote", {"url": "https://x"}),
                      ComfyUIRemoteConnector)
    assert isinstance(make_connector("simulation"), SimulationConnector)
    with pytest.raises(ConnectorError) as caught:
        make_connector("a1111")
    assert caught.value.error_type == ErrorType.VALIDATION


def test_connector_from_env() -> None:
    assert connector_from_env({}) is None
    comfy = connector_from_env({
        "EMP_CONNECTOR": "comfyui-remote", "COMFYUI_URL": "https://comfy.example:8443/api",
        "COMFYUI_USERNAME": "u", "COMFYUI_PASSWORD": "p", "COMFYUI_VERIFY_TLS": "false",
        "EMP_COMFYUI_TIMEOUT_SECONDS": "42", "WORKER_ID": "gpu-1"})
    assert isinstance(comfy, ComfyUIRemoteConnector)
    assert comfy.connector_id == "comfyui-remote-gpu-1" and comfy.timeout_seconds == 42
    assert comfy.client.verify_tls is False
    assert comfy.client.auth_headers() == {"Authorization": "Basic dTpw"}
    assert comfy.client.websocket_url("c1") == "wss://comfy.example:8443/api/ws?clientId=c1"
    local = connector_from_env({"EMP_CONNECTOR": "comfyui", "EMP_CONNECTOR_ID": "mine"})
    assert local.connector_id == "mine" and local.client.url == "http://127.0.0.1:8188"
    sim = connector_from_env({"EMP_CONNECTOR": "simulation", "EMP_SIMULATION_STEPS": "3",
                              "EMP_SIMULATION_FAILURE_RATE": "0.5"})
    assert (sim.steps, sim.failure_rate, sim.service) == (3, 0.5, "simulation")
    with pytest.raises(ConnectorError, match="unknown connector"):
        connector_from_env({"EMP_CONNECTOR": "nope"})


def test_comfyui_startup_wait_fits_a_real_first_start() -> None:
    """A real ComfyUI on CPU took 20-25 s to answer /system_stats after a restart,
    longer with custom nodes to import; the worker waited 30 s by default and then
    failed to start. The default is 120 s now, and conf/connectors.env.example says so."""
    local = connector_from_env({"EMP_CONNECTOR": "comfyui"})
    assert local.startup_timeout_seconds == DEFAULT_STARTUP_TIMEOUT_SECONDS == 120
    example = Path(__file__).parents[2] / "conf" / "connectors.env.example"
    assert "EMP_COMFYUI_STARTUP_TIMEOUT_SECONDS=120\n" in example.read_text()
    set_by_env = connector_from_env({"EMP_CONNECTOR": "comfyui",
                                     "EMP_COMFYUI_STARTUP_TIMEOUT_SECONDS": "45"})
    assert set_by_env.startup_timeout_seconds == 45
