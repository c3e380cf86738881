"""Output stores: the local directory store and a store chosen by EMP_OUTPUT_STORE."""

from __future__ import annotations

from pathlib import Path

import pytest

from machine.outputs import LocalOutputStore, output_store_from_env


class MemoryStore:
    """A pluggable store for the test (EMP_OUTPUT_STORE=test_outputs:MemoryStore)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    def put(self, job_id: str, filename: str, data: bytes,
            content_type: str | None = None) -> str:
        self.files[f"{job_id}/{filename}"] = data
        return f"mem://{job_id}/{filename}"


def test_local_store_writes_under_the_job_and_returns_a_file_url(tmp_path: Path) -> None:
    store = LocalOutputStore(tmp_path)
    url = store.put("job-1", "sub/image.png", b"png", "image/png")
    path = tmp_path / "job-1" / "sub" / "image.png"
    assert path.read_bytes() == b"png" and url == path.resolve().as_uri()
    assert [p.name for p in (tmp_path / "job-1" / "sub").iterdir()] == ["image.png"]


def test_local_store_with_a_base_url_and_hostile_names(tmp_path: Path) -> None:
    store = LocalOutputStore(tmp_path / "out", base_url="https://cdn.example/outputs/")
    url = store.put("../job 2", "../../etc/pass wd", b"x")
    assert url == "https://cdn.example/outputs/job_2/etc/pass_wd"
    assert (tmp_path / "out" / "job_2" / "etc" / "pass_wd").is_file()
    assert not (tmp_path / "etc").exists()


def test_store_from_env(tmp_path: Path) -> None:
    local = output_store_from_env({"EMP_OUTPUT_DIR": str(tmp_path),
                                   "EMP_OUTPUT_BASE_URL": "http://files"})
    assert isinstance(local, LocalOutputStore) and local.directory == tmp_path
    assert local.put("j", "a.png", b"1") == "http://files/j/a.png"
    plugged = output_store_from_env({"EMP_OUTPUT_STORE": "test_outputs:MemoryStore"})
    assert plugged.put("j", "a.png", b"1") == "mem://j/a.png"
    with pytest.raises(ValueError, match="module:Class"):
        output_store_from_env({"EMP_OUTPUT_STORE": "test_outputs"})
