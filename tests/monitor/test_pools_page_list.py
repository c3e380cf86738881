"""The Pools page's list of pools (``GET /emp/api/pools``): one read of the pools view."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from capability_router.keys import NAMESPACES_KEY
from capability_router.pool_view import known_pools
from webapp.monitor import metrics
from webapp.monitor.api import _pools_page

POOLS = """
[pools.zeta]
gpu = false
gpu_memory_gb = [0, 0]
storage_gb = 10
durations_seconds = [0, 5]
services = ["simulation"]
"""


def _calls(client: redis.Redis, command: str) -> int:
    return int(client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def test_the_pools_list_comes_from_the_pools_view_it_already_reads(
        client: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tried: a pools file naming zeta, and pools default and alpha used once (no worker,
    no job now). The list was ``known_pools`` (the file's, then every pool ever used),
    read apart from the pools view the same handler reads: the set of pools used was read
    twice (two SMEMBERS). Now the list is the view's rows (which keep every pool ever
    used for it): the same list, in the same order, and one read of that set."""
    path = tmp_path / "pools.toml"
    path.write_text(POOLS)
    monkeypatch.setenv(metrics.POOLS_FILE_ENV, str(path))
    client.sadd(NAMESPACES_KEY, "default", "alpha")
    expected = known_pools(client, metrics.pools_file())
    assert expected == ["zeta", "default", "alpha"]

    client.config_resetstat()
    page = _pools_page(client)
    assert _calls(client, "smembers") == 1
    assert page["pools"] == expected
    assert page["waiting"] == {}
