"""``EMP_REDIS_CLUSTER``: an on/off word, or the extra seed nodes of a cluster."""

from __future__ import annotations

import pytest
from redis.cluster import ClusterNode

from capability_router.cluster import CLUSTER_ENV, cluster_enabled, seed_nodes
from capability_router.env import SettingError


@pytest.mark.parametrize("value, on", [
    ("", False), ("0", False), ("off", False), (" No ", False), ("FALSE", False),
    ("1", True), ("yes", True), ("On", True), ("true", True),
    ("10.0.0.12:6379", True), ("10.0.0.12:6379, 10.0.0.13:6379,", True),
])
def test_words_and_seed_lists_keep_their_meaning(monkeypatch: pytest.MonkeyPatch, value: str,
                                                 on: bool) -> None:
    monkeypatch.setenv(CLUSTER_ENV, value)
    assert cluster_enabled() is on


@pytest.mark.parametrize("value", ["maybe", "ture", "10.0.0.12", "10.0.0.12:6379,redis-b"])
def test_a_value_neither_a_word_nor_seeds_is_refused_naming_the_variable(
        monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """Tried: ``EMP_REDIS_CLUSTER=maybe`` (and a misspelt ``ture``, a seed without its
    port). Before, any value outside the off words meant on: every process built a
    ``RedisCluster`` client for a plain Redis and failed on its first call ("Cluster mode
    is not enabled on this node"), or a seed without a port was silently dropped. Now
    reading the switch raises SettingError naming the variable, the words and the seed
    form, the way ``env_flag`` refuses a word it does not know."""
    monkeypatch.setenv(CLUSTER_ENV, value)
    with pytest.raises(SettingError, match=f"^{CLUSTER_ENV} must be one of 1, true, yes, on "
                                           rf"\(on\) or 0, false, no, off \(off\), or seed "
                                           rf"nodes host:port,host:port, got {value!r}$"):
        cluster_enabled()


def test_seed_nodes_follow_the_url_node(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CLUSTER_ENV, "10.0.0.12:6379,10.0.0.13:7000")
    assert seed_nodes("redis://10.0.0.11:6380/0") == [
        ClusterNode("10.0.0.11", 6380), ClusterNode("10.0.0.12", 6379),
        ClusterNode("10.0.0.13", 7000)]
    monkeypatch.setenv(CLUSTER_ENV, "1")
    assert seed_nodes("redis://10.0.0.11:6380/0") == [ClusterNode("10.0.0.11", 6380)]
