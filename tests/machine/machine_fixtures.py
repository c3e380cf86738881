"""Fixtures of the machine tests: ComfyUI-protocol servers, an output store, a certificate.

Test modules take them with ``from machine_fixtures import *``. They are not
in a ``conftest.py`` on purpose: pytest imports every conftest without a
package as the module ``conftest``, so a second one would hide the root
conftest from modules that ``from conftest import`` its helpers when both
directories are collected in one run.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from comfyui_server import ComfyUITestServer
from machine_helpers import self_signed_cert

from machine.outputs import LocalOutputStore

__all__ = ["comfyui", "quiet_werkzeug", "start_comfyui", "store", "tls_cert"]


@pytest.fixture(autouse=True)
def quiet_werkzeug() -> None:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)


@pytest.fixture
def start_comfyui(tmp_path: Path) -> Iterator[Callable[..., ComfyUITestServer]]:
    """Factory: start a ComfyUI test server (options of ComfyUITestServer); all stopped after."""
    servers: list[ComfyUITestServer] = []

    def start(**options: object) -> ComfyUITestServer:
        server = ComfyUITestServer(tmp_path / f"comfyui-{len(servers)}", **options).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def comfyui(start_comfyui: Callable[..., ComfyUITestServer]) -> ComfyUITestServer:
    """One test server with two checkpoints and a LoRA."""
    return start_comfyui(checkpoints=["sd15.safetensors", "sdxl/base.safetensors"],
                         loras=["detail.safetensors"])


@pytest.fixture
def store(tmp_path: Path) -> LocalOutputStore:
    return LocalOutputStore(tmp_path / "outputs")


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(certfile, keyfile) of a self-signed certificate for 127.0.0.1."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is needed to make a test certificate")
    return self_signed_cert(tmp_path_factory.mktemp("tls"))
