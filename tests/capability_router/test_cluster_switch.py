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
    port). Before, any value outside the off words meant on (``make_client`` built a
    ``RedisCluster`` client, whatever the Redis was), and a seed without its port was
    dropped without a word (the test failed: nothing raised). Now
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


@pytest.mark.parametrize("command", ["api", "job"])
def test_a_command_started_with_a_bad_switch_stops_with_one_line(command: str) -> None:
    """Tried: ``EMP_REDIS_CLUSTER=maybe emp api`` and ``emp job <id>`` (Redis not
    answering). Once the switch was refused, ``emp api`` answered with a traceback from
    each gunicorn worker as it built its first client and "Worker failed to boot"; ``emp
    job`` said no Redis answers, naming the URL but not the switch. Now every ``emp``
    command reads the switch at start: click's one error line naming it, no traceback."""
    from tests.emp_tasks.test_cli import run

    args = ["--port", "1"] if command == "api" else ["no-such-job"]
    done = run(command, *args, env={CLUSTER_ENV: "maybe",
                                    "EMP_REDIS_URL": "redis://127.0.0.1:1/0"}, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"Error: {CLUSTER_ENV} must be one of 1, true, yes, on (on) or 0, false, no, off "
        "(off), or seed nodes host:port,host:port, got 'maybe'"), done.stderr
    assert "Traceback" not in done.stdout + done.stderr
