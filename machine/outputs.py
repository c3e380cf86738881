"""Where job output files go: a small store interface, a local-directory default.

Connectors hand every output file to ``OutputStore.put`` and put the URL it
returns in the job result, so clients fetch results from the store, not from
the GPU box's ComfyUI. ``EMP_OUTPUT_STORE=module:Class`` swaps the store (an
object store, a CDN uploader); the class is built with ``from_env(environ)``
when it has one, else with no arguments.

Environment (defaults in brackets):

- ``EMP_OUTPUT_STORE`` [``machine.outputs:LocalOutputStore``]
- ``EMP_OUTPUT_DIR`` [``.emp/outputs``]: the local store's directory.
- ``EMP_OUTPUT_BASE_URL`` [unset]: URL the local directory is served under; unset
  gives ``file://`` URLs.
"""

from __future__ import annotations

import importlib
import os
import re
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import quote

#: Directory of the local store when ``EMP_OUTPUT_DIR`` is unset.
DEFAULT_OUTPUT_DIR = ".emp/outputs"

_UNSAFE = re.compile(r"[^\w.\-]+")


@runtime_checkable
class OutputStore(Protocol):
    """Keeps job output files; returns where a client can fetch each."""

    def put(self, job_id: str, filename: str, data: bytes,
            content_type: str | None = None) -> str:
        """Store ``data`` as ``filename`` of job ``job_id``; returns its URL."""
        ...


def safe_parts(name: str) -> list[str]:
    """Path parts of ``name`` that cannot climb out of a directory (``..`` and ``/`` dropped)."""
    parts = [_UNSAFE.sub("_", part) for part in re.split(r"[/\\]+", name)]
    return [part for part in parts if part and part not in (".", "..")] or ["output"]


class LocalOutputStore:
    """Files under ``directory/<job_id>/<filename>``.

    :param directory: where files are written (created on first use).
    :param base_url: URL that serves ``directory`` (e.g. a static file server);
        None gives ``file://`` URLs.
    """

    def __init__(self, directory: str | Path = DEFAULT_OUTPUT_DIR,
                 base_url: str | None = None) -> None:
        self.directory = Path(directory)
        self.base_url = base_url.rstrip("/") if base_url else None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LocalOutputStore:
        env = os.environ if environ is None else environ
        return cls(env.get("EMP_OUTPUT_DIR") or DEFAULT_OUTPUT_DIR,
                   env.get("EMP_OUTPUT_BASE_URL") or None)

    def path_for(self, job_id: str, filename: str) -> Path:
        return self.directory.joinpath(*safe_parts(job_id), *safe_parts(filename))

    def put(self, job_id: str, filename: str, data: bytes,
            content_type: str | None = None) -> str:
        """Write atomically (a reader never sees half a file); returns the file's URL.

        The file gets the mode of any new file (0666 less the umask), not
        ``mkstemp``'s 0600: outputs are served and read by other users.
        """
        path = self.path_for(job_id, filename)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".part-{uuid.uuid4().hex}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if self.base_url is None:
            return path.resolve().as_uri()
        relative = path.relative_to(self.directory).as_posix()
        return f"{self.base_url}/{quote(relative)}"


def output_store_from_env(environ: Mapping[str, str] | None = None) -> OutputStore:
    """The store named by ``EMP_OUTPUT_STORE`` (``module:Class``), else the local one."""
    env = os.environ if environ is None else environ
    spec = env.get("EMP_OUTPUT_STORE") or ""
    if not spec:
        return LocalOutputStore.from_env(env)
    module_name, _, class_name = spec.partition(":")
    if not class_name:
        raise ValueError(f"EMP_OUTPUT_STORE must be module:Class, got {spec!r}")
    store_class = getattr(importlib.import_module(module_name), class_name)
    from_env = getattr(store_class, "from_env", None)
    store = from_env(env) if callable(from_env) else store_class()
    if not isinstance(store, OutputStore):
        raise TypeError(f"{spec} has no put(job_id, filename, data, content_type) method")
    return store
