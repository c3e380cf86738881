"""Helpers of the machine tests: polling, a self-signed certificate."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from conftest import wait_for


def wait_until(predicate: Callable[[], object], timeout: float = 20.0, every: float = 0.02,
               message: str = "condition") -> object:
    """The root conftest's ``wait_for`` with this directory's shorter defaults."""
    return wait_for(predicate, timeout, every, message)


def self_signed_cert(directory: Path) -> tuple[str, str]:
    """A certificate for 127.0.0.1/localhost and its key, made with the openssl CLI."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True)
    return str(cert), str(key)
