"""Numbers the web services cannot work with stop them at start, naming the variable.

Each case was tried against a running system (``emp api``/``emp webhooks``/``emp monitor``
on a Redis of its own); what happened before the fix is in each test's docstring.
"""

from __future__ import annotations

import pytest

from tests.emp_tasks.test_cli import run
from webapp.settings import WebSettings
from webapp.webhooks.config import WebhookConfig

#: No Redis answers here: every refusal below comes before the first connection.
NO_REDIS = {"EMP_REDIS_URL": "redis://127.0.0.1:1/0"}


@pytest.mark.parametrize("name, value", [
    ("EMP_WEBHOOK_CONSUMER_LEASE_SECONDS", "0"),
    ("EMP_WEBHOOK_TIMEOUT_SECONDS", "nan"),
    ("EMP_WEBHOOK_CLAIM_IDLE_SECONDS", "-1"),
    ("EMP_WEBHOOK_NAMESPACE_REFRESH_SECONDS", "0"),
    ("EMP_WEBHOOK_DISPATCHERS", "0"),
    ("EMP_WEBHOOK_MAX_ATTEMPTS", "0"),
    ("EMP_WEBHOOK_BACKOFF_MULTIPLIER", "nan"),
    ("EMP_WEBHOOK_INITIAL_DELAY_MS", "-5"),
    ("EMP_WEBHOOK_MAX_DELAY_MS", "-1"),
    ("EMP_WEBHOOK_GIVE_UP_AFTER_MS", "0"),
    ("EMP_WEBHOOK_DISCONNECT_AFTER", "0"),
    ("EMP_WEBHOOK_RECONNECT_SECONDS", "-1"),
    ("EMP_WEBHOOK_PROGRESS_INTERVAL_MS", "-1"),
    ("EMP_WEBHOOK_MAX_BACKLOG", "0"),
    ("EMP_WEBHOOK_SECRET_OVERLAP_SECONDS", "-1"),
    ("EMP_WEBHOOK_HISTORY", "-1"),
    ("EMP_WEBHOOK_HISTORY_SECONDS", "0"),
    ("EMP_WEBHOOK_RECENT", "-1"),
])
def test_a_webhook_number_it_cannot_work_with_is_refused_naming_it(monkeypatch, name,
                                                                   value) -> None:
    """Tried: ``emp webhooks`` with each value. Before, every one started: a 0 s consumer
    lease made the event reader fail every poll ("invalid expire time in 'set' command",
    a traceback a second) and nan as timeout killed each dispatcher thread ("cannot
    convert float NaN to integer"): the service answered its API and delivered nothing.
    0 dispatchers silently became 1; the others were taken as they came."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"^{name} must be "):
        WebhookConfig.from_env()


def test_webhook_zeros_that_mean_something_are_kept(monkeypatch) -> None:
    """0 ms between progress events (each sent) and 0 s secret overlap (the old secret
    stops at once) are meaningful: still accepted."""
    for name in ("EMP_WEBHOOK_PROGRESS_INTERVAL_MS", "EMP_WEBHOOK_SECRET_OVERLAP_SECONDS"):
        monkeypatch.setenv(name, "0")
    config = WebhookConfig.from_env()
    assert (config.progress_interval_ms, config.secret_overlap_seconds) == (0, 0)


@pytest.mark.parametrize("name, value", [
    ("EMP_API_PROCESSES", "0"),
    ("EMP_API_PROCESSES", "-2"),
    ("EMP_API_CONNECTIONS", "0"),
    ("EMP_WEB_THREADS", "0"),
    ("EMP_MAX_BODY_BYTES", "0"),
    ("EMP_MAX_BODY_BYTES", "-5"),
    ("EMP_LIMIT_RATE", "-1"),
    ("EMP_LIMIT_RATE", "nan"),
    ("EMP_LIMIT_BURST", "-1"),
    ("EMP_LIMIT_PENDING", "-1"),
    ("EMP_LIMIT_CLASSES", "-1"),
    ("EMP_LIMIT_SOCKETS", "-3"),
])
def test_a_web_number_it_cannot_work_with_is_refused_naming_it(monkeypatch, name,
                                                               value) -> None:
    """Tried: ``emp api`` with each value. Before: 0 processes bound the port and never
    answered (a request hung 22 s); -2 stopped with gunicorn's "Value must be positive: -2"
    naming nothing; 0 connections silently ran the threaded worker (a thread per
    WebSocket); a 0 or negative body limit answered every POST 413; a burst of -1
    refused every submission as over the rate, and a negative rate meant no limit
    (EMP_CUSTOMER_LIMITS refuses both)."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"^{name} must be "):
        WebSettings.from_env()


def test_api_with_no_processes_stops_at_start_with_one_line() -> None:
    """Tried: ``EMP_API_PROCESSES=0 emp api``. Before, it started, bound its port and no
    request was ever answered."""
    done = run("api", "--port", "1", env={**NO_REDIS, "EMP_API_PROCESSES": "0"}, timeout=20)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(
        "Error: EMP_API_PROCESSES must be "), done.stderr


@pytest.mark.parametrize("tokens, words", [
    ("tok-a=acme,tok-a=globex", "EMP_API_TOKENS gives one token for two customers, 'acme' "
                                "and 'globex'"),
    ("tok-a=big corp", "EMP_API_TOKENS item 'tok-a=big corp': 'big corp' is not a customer id"),
])
def test_api_tokens_that_cannot_work_stop_it_at_start_with_one_line(tokens, words) -> None:
    """Tried: one token given for two customers, and a customer id no job can carry.
    Before, both started: the first token authenticated as the last customer named for
    it (which the operator may not have meant), the second's every submit was refused."""
    done = run("api", "--port", "1", env={**NO_REDIS, "EMP_API_TOKENS": tokens}, timeout=20)
    assert done.returncode == 1, done.stdout + done.stderr
    assert words in done.stderr.strip().splitlines()[-1], done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("command, name", [
    ("api", "EMP_API_PORT"), ("webhooks", "EMP_WEBHOOK_PORT"), ("monitor", "EMP_MONITOR_PORT"),
])
def test_a_port_out_of_range_stops_the_service_naming_it(command, name) -> None:
    """Tried: each service with its port variable at 70000. Before, the API and the webhook
    service stopped with a 58-line gunicorn traceback ("bind(): port must be 0-65535"),
    and the monitor started on port 4464 (70000 - 65536) saying so."""
    done = run(command, env={**NO_REDIS, name: "70000"}, timeout=20)
    assert done.returncode == 2, done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert name in last and "70000" in last, done.stderr
    assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.parametrize("command, name, value", [
    ("api", "EMP_GREEN_REDIS_CONNECTIONS", "abc"),
    ("monitor", "EMP_METRICS_MAX_FAMILIES", "0"),
    ("monitor", "EMP_METRICS_MAX_FAMILIES", "abc"),
])
def test_a_setting_read_as_the_service_loads_is_one_line(command, name, value) -> None:
    """Tried: each value. Before, the service stopped with a traceback of 44-50 lines
    (the setting is read when its module is imported, inside the command), its last
    line naming the variable."""
    done = run(command, "--port", "1", env={**NO_REDIS, name: value}, timeout=20)
    assert done.returncode != 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"Error: {name} must be "), \
        done.stderr


def test_a_burst_of_0_under_a_rate_is_refused_not_every_submission(monkeypatch) -> None:
    """Tried: ``EMP_LIMIT_BURST=0 emp api`` with a customer token, two submissions a second
    apart. Before, both got 429 "over this customer's submission rate (50/s, burst 0)",
    as would every later one (the bucket never holds a whole token), although 0 means
    "no limit" for every other limit; an ``EMP_CUSTOMER_LIMITS`` ``burst=0`` did the same
    to that customer. Now both are refused at start, naming the setting."""
    from webapp.settings import CustomerLimits, parse_limits

    monkeypatch.setenv("EMP_LIMIT_BURST", "0")
    with pytest.raises(ValueError, match="^EMP_LIMIT_BURST must be at least 1 .*"
                                         "EMP_LIMIT_RATE"):
        WebSettings.from_env()
    monkeypatch.setenv("EMP_LIMIT_RATE", "0")  # no rate limit: the burst does not matter
    assert WebSettings.from_env().default_limits.burst == 0
    with pytest.raises(ValueError, match="EMP_CUSTOMER_LIMITS item 'acme:burst=0'"):
        parse_limits("acme:burst=0", CustomerLimits())
    assert parse_limits("acme:rate=0,burst=0", CustomerLimits())["acme"].burst == 0


@pytest.mark.parametrize("name, read", [
    ("EMP_METRICS_PUBLIC", lambda: WebSettings.from_env().metrics_public),
    ("EMP_WEBHOOK_ALLOW_PRIVATE", lambda: WebhookConfig.from_env().allow_private),
])
def test_a_flag_that_is_neither_on_nor_off_is_refused_naming_it(monkeypatch, name,
                                                                read) -> None:
    """Tried: ``ture`` in each, as the API and the webhook service read it. Before, both
    read it as off without a word (``metrics_public``/``allow_private`` False: /metrics
    asks scrapers for a token, a private receiver is refused), although the operator
    meant on. Now an unknown word is refused naming the variable and the accepted words;
    the known ones (any case, spaces around) read as before."""
    monkeypatch.setenv(name, "ture")
    with pytest.raises(ValueError, match=f"^{name} must be one of .*true.*false.*'ture'"):
        read()
    for word, meaning in (("1", True), (" Yes ", True), ("on", True), ("TRUE", True),
                          ("0", False), ("no", False), ("Off", False), ("false", False)):
        monkeypatch.setenv(name, word)
        assert read() is meaning, word
    monkeypatch.delenv(name)
    assert read() is False


def test_a_web_service_with_an_unknown_flag_word_stops_at_start_with_one_line() -> None:
    """Tried: ``EMP_WEBHOOK_ALLOW_PRIVATE=maybe emp webhooks``. Before, it started (the
    test timed out after 20 s with it serving), taking the flag as off."""
    done = run("webhooks", "--port", "1",
               env={**NO_REDIS, "EMP_WEBHOOK_ALLOW_PRIVATE": "maybe"}, timeout=20)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(
        "Error: EMP_WEBHOOK_ALLOW_PRIVATE must be one of "), done.stderr


@pytest.mark.parametrize("command, how, value", [
    ("api", "EMP_API_HOST", "203.0.113.7"),
    ("webhooks", "--host", "not a host"),
    ("monitor", "EMP_MONITOR_HOST", "203.0.113.7"),
    ("monitor", "--host", "not a host"),
])
def test_a_host_the_service_cannot_listen_on_stops_it_naming_the_setting(
        command, how, value) -> None:
    """Tried: each service with a host this machine does not have (203.0.113.7, a
    documentation address) or a name that resolves to nothing. Before, the API and the
    webhook service had gunicorn try five times, a second apart, each logging "connection
    to ('203.0.113.7', 0) failed: [Errno 99] Cannot assign requested address" (or "Name
    or service not known"), naming no setting; the monitor ended in a 40-line traceback
    from tornado's bind_sockets. Now the start stops with one line naming the setting,
    the host and the OS error."""
    args, env = [command, "--port", "0"], dict(NO_REDIS)
    if how == "--host":
        args += ["--host", value]
    else:
        env[how] = value
    done = run(*args, env=env, timeout=20)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    name = "--host" if how == "--host" else f"{how} (or --host)"
    assert lines[0].startswith(f"Error: {name} {value!r} cannot be listened on: "), lines
    assert "Errno" in lines[0], lines
