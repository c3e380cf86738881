"""``EMP_LOG_FORMAT`` and ``EMP_LOG_TAG`` are checked at a worker's start; the Fluentd
variables only when they are used.

Before, ``EMP_LOG_FORMAT`` was compared with ``json`` as given: ``JSON``, `` json `` or a
typo (``jsn``) silently meant Celery's text lines, which the log shipper never sees. A
tag holding ``#`` or ``?`` was put in the URL as given: the receiver got the part before
it as the tag. ``FLUENTD_PORT``/``FLUENTD_SECURE`` were refused even with
``FLUENT_BIT_URL`` set, which replaces them.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import redis

from capability_router.env import SettingError
from conftest import ROOT, wait_for
from machine.shipping import shipping_url
from machine.status import read_machine
from tests.emp_tasks.test_cli import run
from tests.emp_tasks.test_plain_celery_worker import json_lines

#: No Redis answers here: the refusals come before the first connection.
NO_REDIS = {"EMP_REDIS_URL": "redis://127.0.0.1:1/0"}
FORMAT_WORDS = "json or text (any case; unset: text)"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("value", ["jsn", "JSON-lines", "plain text"])
def test_emp_worker_refuses_an_unknown_log_format_in_one_line(value: str) -> None:
    """Tried: ``emp worker`` (Redis unreachable) with ``EMP_LOG_FORMAT=jsn`` (and others).
    Before, it went on to Redis (exit 1, "Redis at ... does not answer") and would have
    logged Celery's text lines. Now: exit 2, one line naming the variable and what it
    takes, before Redis."""
    done = run("worker", env={**NO_REDIS, "EMP_LOG_FORMAT": value}, timeout=45)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"Error: EMP_LOG_FORMAT must be {FORMAT_WORDS}, got {value!r}"), done.stderr
    assert "Traceback" not in done.stderr and "Redis" not in done.stderr, done.stderr


@pytest.mark.timeout(60)
def test_plain_celery_worker_refuses_an_unknown_log_format_in_one_line() -> None:
    """Tried: ``celery -A emp_tasks.app worker`` with ``EMP_LOG_FORMAT=jsn``. Before, it
    started with Celery's text lines (then failed on the absent Redis). Now it exits 1
    with the one line, as for its other settings."""
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "emp_tasks.app", "worker", "-c", "1"],
        capture_output=True, text=True, timeout=45,
        env={**NO_REDIS, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
             "EMP_LOG_FORMAT": "jsn", "WORKER_ID": "w-jsn"})
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"worker: EMP_LOG_FORMAT must be {FORMAT_WORDS}, got 'jsn'"), done.stderr
    assert "Traceback" not in done.stderr, done.stderr


@pytest.mark.timeout(120)
def test_emp_worker_logs_json_lines_for_upper_case_json(client: redis.Redis,
                                                        start_worker) -> None:
    """Tried: ``emp worker`` with ``EMP_LOG_FORMAT=JSON`` (as an operator may write it).
    Before, that was not ``json``: Celery's text lines, nothing a shipper could parse.
    Now its lines are JSON with the worker's context."""
    worker = start_worker("w-upper", args=["-l", "info"], EMP_LOG_FORMAT=" JSON ")

    def worker_lines() -> list[dict]:
        return [line for line in json_lines(worker.log_path.read_text())
                if line.get("worker_id") == "w-upper"]

    wait_for(worker_lines, timeout=30, message="a JSON line of w-upper")


def test_the_forms_the_log_format_takes() -> None:
    """json (any case, spaces around) and text; unset or empty: text."""
    from machine.logs import log_format

    assert [log_format({"EMP_LOG_FORMAT": v}) for v in ("json", "Json", " JSON ", "text",
                                                        "TEXT", "")] == [
        "json", "json", "json", "text", "text", "text"]
    assert log_format({}) == "text"
    said = f"EMP_LOG_FORMAT must be {FORMAT_WORDS}, got 'jsn'"
    with pytest.raises(SettingError, match=f"^{re.escape(said)}$"):
        log_format({"EMP_LOG_FORMAT": "jsn"})


@pytest.mark.timeout(60)
@pytest.mark.parametrize("tag", ["emp#gpu", "emp?x=1", "emp logs"])
def test_emp_worker_refuses_a_tag_the_url_would_cut(tag: str) -> None:
    """Tried: ``emp worker`` with ``FLUENTD_HOST`` set and ``EMP_LOG_TAG=emp#gpu`` (and
    ``emp?x=1``). Before, the URL was ``http://logs.example:8888/emp#gpu``: the receiver,
    whose tag is the URL's path, got tag ``emp`` (the rest a fragment, or a query), and
    the worker went on (``emp logs`` was sent as ``emp%20logs``). Now: exit 2, one line
    naming the variable."""
    done = run("worker", env={**NO_REDIS, "EMP_LOG_FORMAT": "json",
                              "FLUENTD_HOST": "logs.example", "EMP_LOG_TAG": tag},
               timeout=45)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"Error: EMP_LOG_TAG must be a tag without '#', '?' or spaces, got {tag!r}"
    ), done.stderr


def test_a_good_tag_makes_the_url_and_an_unused_tag_is_not_read() -> None:
    """The default and dotted or slashed tags are kept; with FLUENT_BIT_URL the tag is not
    used, so not refused."""
    assert shipping_url({"FLUENTD_HOST": "agg"}) == "http://agg:8888/emp.logs"
    assert shipping_url({"FLUENTD_HOST": "agg", "EMP_LOG_TAG": "emp.gpu/a"}) == (
        "http://agg:8888/emp.gpu/a")
    assert shipping_url({"FLUENT_BIT_URL": "http://fb:9880/x", "EMP_LOG_TAG": "a#b"}) == (
        "http://fb:9880/x")


@pytest.mark.parametrize("variable, value", [("FLUENTD_PORT", "24224x"),
                                             ("FLUENTD_SECURE", "ture")])
def test_fluentd_settings_are_not_refused_when_fluent_bit_url_replaces_them(
        variable: str, value: str) -> None:
    """Tried: ``FLUENT_BIT_URL`` set, with ``FLUENTD_PORT=24224x`` (and
    ``FLUENTD_SECURE=ture``) left over. Those only build the URL when FLUENT_BIT_URL is
    unset; before, they were refused anyway (the start stopped on a setting it does not
    use). Now the URL is FLUENT_BIT_URL's; without it, they are still refused."""
    assert shipping_url({"FLUENT_BIT_URL": "http://fb:9880/emp.logs", variable: value}) == (
        "http://fb:9880/emp.logs")
    with pytest.raises(SettingError, match=f"^{variable} must be"):
        shipping_url({"FLUENTD_HOST": "agg", variable: value})


@pytest.mark.timeout(60)
def test_emp_worker_with_fluent_bit_url_starts_past_an_unused_fluentd_port() -> None:
    """Tried: ``emp worker`` (Redis unreachable) with FLUENT_BIT_URL and
    ``FLUENTD_PORT=24224x``. Before: exit 2, "FLUENTD_PORT must be ...". Now it gets as far
    as Redis (exit 1, Redis named), as without the leftover."""
    done = run("worker", env={**NO_REDIS, "FLUENT_BIT_URL": "http://127.0.0.1:1/emp.logs",
                              "FLUENTD_PORT": "24224x"}, timeout=45)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FLUENTD_PORT" not in done.stderr and "Redis at" in done.stderr, done.stderr


@pytest.mark.timeout(90)
@pytest.mark.parametrize("value", ["jsn", "JSON-lines"])
def test_emp_machine_refuses_an_unknown_log_format_in_one_line(
        start_machine, client: redis.Redis, value: str) -> None:  # noqa: ANN001
    """Tried: ``emp machine`` (one mock GPU) with ``EMP_LOG_FORMAT=jsn`` (and another
    word that is neither json nor text). Before, the machine started (it logs JSON and
    sets json for its workers whatever the variable says), so the typo went unseen until
    the same file started an ``emp worker``, which refuses it. Now the machine refuses
    it too: exit 1, its last line the one line, nothing started, no machine record."""
    machine = start_machine("box-fmt", EMP_MOCK_GPUS="1", EMP_LOG_FORMAT=value)
    code, output = machine.refused(f"EMP_LOG_FORMAT={value}")
    assert code == 1, output
    assert output.strip().splitlines()[-1] == (
        f"Error: EMP_LOG_FORMAT must be {FORMAT_WORDS}, got {value!r}"), output
    assert "Traceback" not in output, output
    assert read_machine(client, "box-fmt") is None
    assert not (machine.run_dir / "supervisord.conf").exists()
