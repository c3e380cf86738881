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


@pytest.mark.parametrize("name, value, want", [
    ("EMP_SIMULATION_DURATION_SECONDS", "abc", "a number from 0"),
    ("EMP_SIMULATION_STEPS", "x", "a whole number from 1"),
    ("EMP_SIMULATION_STEPS", "2.5", "a whole number from 1"),
    ("EMP_SIMULATION_FAILURE_RATE", "2", "a number from 0 to 1"),
    ("EMP_SIMULATION_GPU_MEMORY_GB", "-3", "a number above 0"),
    ("EMP_SIMULATION_DOWNLOAD_MB_PER_SECOND", "0", "a number above 0"),
    ("EMP_SIMULATION_SEED", "lucky", "a whole number"),
    ("EMP_COMFYUI_TIMEOUT_SECONDS", "10m", "a number above 0"),
    ("EMP_COMFYUI_STOP_WAIT_SECONDS", "0", "a number above 0"),
    ("EMP_COMFYUI_MODEL_SIZE_GB", "nan", "a number above 0"),
])
def test_a_bad_connector_number_is_a_validation_error_naming_its_variable(
        name: str, value: str, want: str) -> None:
    """Tried: each value above with its connector. Before: a bare ValueError from float()
    or int() ("could not convert string to float: 'abc'", naming no variable; ``emp
    worker`` printed it as a traceback), a failure rate of 2 and 0 s for ComfyUI's
    timeouts taken silently (0 became the default). Now one validation error naming
    the variable and what it must be."""
    kind = "comfyui" if name.startswith("EMP_COMFYUI") else "simulation"
    with pytest.raises(ConnectorError) as caught:
        connector_from_env({"EMP_CONNECTOR": kind, name: value})
    assert caught.value.error_type == ErrorType.VALIDATION
    assert caught.value.message == f"{name} must be {want}, got {value!r}"


def test_emp_worker_with_a_bad_connector_number_stops_with_one_line() -> None:
    """Tried: ``EMP_CONNECTOR=simulation EMP_SIMULATION_STEPS=x emp worker``: a 30-line
    traceback ending in "invalid literal for int() with base 10: 'x'". Now the worker
    stops before serving with click's usage error naming the variable (exit 2)."""
    from tests.emp_tasks.test_cli import run

    done = run("worker", env={"EMP_CONNECTOR": "simulation", "EMP_SIMULATION_STEPS": "x",
                              "EMP_REDIS_URL": "redis://127.0.0.1:1/0"}, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "Error: [validation] EMP_SIMULATION_STEPS must be a whole number from 1, got 'x'")
    assert "Traceback" not in done.stdout + done.stderr
