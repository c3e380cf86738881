"""The pools file: the shipped defaults load, and each kind of bad file is refused naming
the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from capability_router.errors import PoolsFileError
from capability_router.pools import (
    DEFAULT_POOLS_FILE,
    load_pools,
    load_pools_file,
    parse_pools,
    pools_file_from_env,
)

GOOD = """
[routing]
spill_wait_seconds = 5

[pools.small]
gpu = false
gpu_memory_gb = [0, 0]
storage_gb = 20
durations_seconds = [0, 10]
services = ["echo"]

[pools.big]
description = "GPUs"
gpu = true
gpu_memory_gb = [24, 48]
storage_gb = 200
durations_seconds = [10, 600]
services = ["*"]
preload_models = ["sdxl"]
price_per_hour = 1.5

[priors]
default_seconds_per_unit = 3

[priors.services.echo]
seconds_per_unit = 0.25
"""


def test_shipped_pools_are_fast_standard_heavy_in_size_order() -> None:
    shipped = load_pools_file(DEFAULT_POOLS_FILE)
    assert list(shipped.pools) == ["fast", "standard", "heavy"]
    fast, standard, heavy = shipped.pools.values()
    assert not fast.gpu and fast.gpu_memory_gb == (0, 0)
    assert standard.gpu and heavy.gpu_memory_gb[1] > standard.gpu_memory_gb[1]
    assert fast.storage_gb < standard.storage_gb < heavy.storage_gb
    assert fast.durations_seconds[1] <= heavy.durations_seconds[0]
    assert fast.price_per_hour < standard.price_per_hour < heavy.price_per_hour
    assert "simulation" in fast.services and "comfyui" in heavy.services
    assert shipped.priors.seconds_per_unit("simulation") > 0
    assert load_pools(DEFAULT_POOLS_FILE) == shipped.pools


def test_every_service_the_shipped_pools_route_has_a_duration_prior() -> None:
    """Tried: the shipped file routes ``text`` (fast, standard) but had no prior for it, so
    a text job was predicted at the default 20 s a unit (a unit: 500 tokens, about 1 s at
    the job type's default rate) until learnt, and spilled as if it were an image job.
    The text prior is one unit at ``emp.text``'s default rate."""
    import inspect

    from emp_tasks.jobs import text

    shipped = load_pools_file(DEFAULT_POOLS_FILE)
    routed = {service for pool in shipped.pools.values() for service in pool.services}
    assert sorted(routed - {"*"} - set(shipped.priors.services)) == []
    rate = inspect.signature(text.text.run).parameters["tokens_per_second"].default
    assert shipped.priors.seconds_per_unit("text") == text.SIZE_FEATURES["tokens"] / rate


def test_a_user_file_with_defaults_for_the_optional_fields() -> None:
    parsed = parse_pools(GOOD, "mine.toml")
    small, big = parsed.pools["small"], parsed.pools["big"]
    assert (small.order, big.order) == (1, 2)  # place in the file
    assert small.description == "" and small.preload_models == () and small.price_per_hour == 0
    assert big.runs_service("anything") and not small.runs_service("comfyui")
    assert big.gpu_memory_gb == (24.0, 48.0) and big.preload_models == ("sdxl",)
    assert small.fits_duration(10) and not small.fits_duration(10.5)
    assert parsed.routing.spill_wait_seconds == 5
    assert parsed.priors.seconds_per_unit("echo") == 0.25
    assert parsed.priors.seconds_per_unit("other") == 3


def test_order_sorts_the_pools_whatever_the_file_order() -> None:
    text = GOOD.replace("[pools.small]", "[pools.small]\norder = 9")
    assert list(parse_pools(text).pools) == ["big", "small"]


@pytest.mark.parametrize(("change", "message"), [
    (("gpu_memory_gb = [24, 48]", "gpu_memory_gb = [48, 24]"),
     "pools.big.gpu_memory_gb must have min <= max"),
    (("gpu_memory_gb = [24, 48]", "gpu_memory_gb = 24"),
     "pools.big.gpu_memory_gb must be [min, max]"),
    (("gpu_memory_gb = [0, 0]", "gpu_memory_gb = [0, 8]"),
     "pools.small.gpu_memory_gb must be [0, 0] when gpu = false"),
    # It said "must be >= 0", yet 0 is refused too ("must be > 0").
    (("storage_gb = 20", "storage_gb = -1"), "pools.small.storage_gb must be > 0, got -1"),
    (("storage_gb = 20", "storage_gb = \"lots\""), "pools.small.storage_gb must be a number"),
    # An integer too large for a float: was an OverflowError traceback.
    (("storage_gb = 20", "storage_gb = 1" + "0" * 310), "pools.small.storage_gb must be a number"),
    (("storage_gb = 20\n", ""), "pools.small is missing storage_gb"),
    (("gpu = true", "gpu = \"yes\""), "pools.big.gpu must be true or false"),
    (("services = [\"echo\"]", "services = []"), "pools.small.services must name at least one"),
    (("services = [\"echo\"]", "services = \"echo\""), "pools.small.services must be a list"),
    (("price_per_hour = 1.5", "price_per_hour = 1.5\nprice = 2"),
     "pools.big has unknown field(s) price"),
    (("[pools.small]", "[pools.small]\norder = 2"),
     "pools.big.order is 2, the same as pools.small.order"),
    (("[pools.small]", "[pools.\"no pool\"]"), "pools.no pool is not a usable pool name"),
    # Tried before the fix: accepted, and the router filed jobs in pool '..', which
    # /api/pools/<pool> can never reach (HTTP clients drop such a path segment).
    (("[pools.small]", "[pools.\"..\"]"),
     "pools.\"..\" is not a usable pool name: '..' cannot be a pool name"),
    (("seconds_per_unit = 0.25", "seconds_per_unit = 0"),
     "priors.services.echo.seconds_per_unit must be > 0"),
    (("spill_wait_seconds = 5", "spill_wait = 5"), "routing has unknown field(s) spill_wait"),
    (("[routing]", "[routes]"), "the file has unknown field(s) routes"),
    (("durations_seconds = [10, 600]", "durations_seconds = [10, nan]"),
     "pools.big.durations_seconds must be a number"),
])
def test_a_bad_file_is_refused_naming_the_field(change: tuple[str, str], message: str) -> None:
    text = GOOD.replace(*change, 1)
    assert text != GOOD
    with pytest.raises(PoolsFileError) as refused:
        parse_pools(text, "mine.toml")
    assert str(refused.value).startswith("mine.toml: ")
    assert message in str(refused.value)


def test_no_pools_and_bad_toml_are_refused() -> None:
    """An empty file (or one of only comments or priors) said "pools must be a table, got
    NoneType", naming a Python type instead of what is missing."""
    for text in ("", "# every pool commented out\n", "[priors]\n"):
        with pytest.raises(PoolsFileError) as refused:
            parse_pools(text, "x.toml")
        assert str(refused.value) == (
            "x.toml: the file defines no pools: add a [pools.<name>] table")
    with pytest.raises(PoolsFileError, match="pools must be a table, got int"):
        parse_pools("pools = 3\n", "x.toml")
    with pytest.raises(PoolsFileError, match="x.toml: not valid TOML"):
        parse_pools("[pools.fast\n", "x.toml")


def test_a_missing_file_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(PoolsFileError, match="nope.toml: cannot read the pools file"):
        load_pools(tmp_path / "nope.toml")


def test_emp_pools_file_turns_routing_on(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMP_POOLS_FILE", raising=False)
    assert pools_file_from_env() is None
    path = tmp_path / "pools.toml"
    path.write_text(GOOD)
    monkeypatch.setenv("EMP_POOLS_FILE", str(path))
    assert list(pools_file_from_env().pools) == ["small", "big"]
    path.write_text(GOOD.replace("gpu = true", "gpu = 1"))
    with pytest.raises(PoolsFileError, match=r"pools\.big\.gpu must be true or false"):
        pools_file_from_env()


def test_a_same_size_edit_within_the_files_mtime_second_is_still_seen(tmp_path: Path) -> None:
    """Tried: a process watching the pools file reads it, then the operator changes
    ``spill_wait_seconds = 5`` to ``= 7`` (same size, same inode) and the file's times end
    as they were: what a filesystem keeping whole seconds (2 s on FAT) records for an edit
    within the same second, done here with ``os.utime``. Before, the watch compared only
    mtime, size and inode, so it kept the old file for good (until some later edit)."""
    import os

    from capability_router.pools import PoolsFileWatch

    path = tmp_path / "pools.toml"
    path.write_text(GOOD)
    stat = os.stat(path)
    watch = PoolsFileWatch(path)
    assert watch.current().routing.spill_wait_seconds == 5
    path.write_text(GOOD.replace("spill_wait_seconds = 5", "spill_wait_seconds = 7"))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(path)[:] == stat[:], "the edit left the stat as it was"
    assert watch.current().routing.spill_wait_seconds == 7


def test_a_file_whose_mtime_has_settled_is_not_read_again_until_its_stat_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The content is read again only while the stat cannot be trusted (an mtime within
    ``SETTLE_SECONDS`` of the last read): a file last edited long ago costs a stat per
    look, and an edit that changes its stat is seen at once."""
    import os
    import time

    from capability_router import pools
    from capability_router.pools import PoolsFileWatch

    path = tmp_path / "pools.toml"
    path.write_text(GOOD)
    old = time.time_ns() - 60 * 10**9
    os.utime(path, ns=(old, old))
    watch = PoolsFileWatch(path)
    assert watch.current().routing.spill_wait_seconds == 5
    reads: list[str] = []
    monkeypatch.setattr(pools, "_read_text", lambda p: reads.append(p) or None)
    for _ in range(5):
        assert watch.current().routing.spill_wait_seconds == 5
    assert reads == []
    path.write_text(GOOD.replace("spill_wait_seconds = 5", "spill_wait_seconds = 6"))
    assert watch.current().routing.spill_wait_seconds == 6


def test_a_gpu_pool_with_no_gpu_memory_is_refused_naming_the_field() -> None:
    """Tried: a pool with ``gpu = true`` and ``gpu_memory_gb = [0, 0]``. Before, it loaded:
    a GPU pool whose machines have no GPU memory, which the router then offered jobs
    asking for a GPU. Now refused naming the file and the field, as ``gpu = false`` with
    memory is; a GPU pool whose smallest machine is 0 and largest is not still loads."""
    text = GOOD.replace("gpu_memory_gb = [24, 48]", "gpu_memory_gb = [0, 0]", 1)
    with pytest.raises(PoolsFileError, match=r"^mine\.toml: pools\.big\.gpu_memory_gb "
                                             r"must have max > 0 when gpu = true"):
        parse_pools(text, "mine.toml")
    text = GOOD.replace("gpu_memory_gb = [24, 48]", "gpu_memory_gb = [0, 24]", 1)
    assert parse_pools(text, "mine.toml").pools["big"].gpu_memory_gb == (0, 24)
