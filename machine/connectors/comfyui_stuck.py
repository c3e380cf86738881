"""The prompt of a stopped job that ComfyUI kept running: one marker file per ComfyUI URL.

A job runs in a worker's pool process, but the worker asks whether it may
claim (the connector's health) in its main process, through another
connector instance. So the connector that gave up waiting for a stopped
prompt writes its id to a file both see (in the temp directory, named after
the URL); any instance's health check reads it and removes it once ComfyUI's
``/queue`` no longer lists the prompt.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import uuid
from pathlib import Path


class StuckPrompt:
    """The marker file of one ComfyUI base URL.

    :param url: the ComfyUI base URL (instances of the same URL share the file).
    :param directory: where the file goes (default: the temp directory).
    """

    def __init__(self, url: str, directory: str | Path | None = None) -> None:
        digest = hashlib.sha1(url.encode()).hexdigest()[:16]
        self.path = Path(directory or tempfile.gettempdir()) / f"emp-comfyui-stuck-{digest}"

    def get(self) -> str | None:
        """The stuck prompt id, or None."""
        try:
            return self.path.read_text().strip() or None
        except OSError:
            return None

    def set(self, prompt_id: str) -> None:
        """Record ``prompt_id`` (atomically: a reader never sees half an id)."""
        tmp = self.path.with_name(f"{self.path.name}.{uuid.uuid4().hex}")
        tmp.write_text(prompt_id)
        os.replace(tmp, self.path)

    def clear(self, prompt_id: str) -> None:
        """Forget ``prompt_id`` (not a newer one another process recorded meanwhile)."""
        if self.get() == prompt_id:
            self.path.unlink(missing_ok=True)
