"""Numeric settings from the environment: a malformed value is refused naming its variable.

Before, ``EMP_MAX_BODY_BYTES=1MB`` stopped ``emp api`` with a traceback ending in
"invalid literal for int() with base 10: '1MB'", which does not say which of the
dozens of variables was wrong.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from emp_tasks import defaults
from tests.emp_tasks.test_cli import run
from webapp.settings import WebSettings
from webapp.webhooks.config import WebhookConfig


@pytest.mark.parametrize("name, value, read, message", [
    ("EMP_MAX_BODY_BYTES", "1MB", WebSettings.from_env, "must be an integer"),
    ("EMP_LIMIT_RATE", "fast", WebSettings.from_env, "must be a number"),
    ("EMP_WEBHOOK_TIMEOUT_SECONDS", "soon", WebhookConfig.from_env, "must be a number"),
    ("EMP_WEBHOOK_MAX_ATTEMPTS", "2.5", WebhookConfig.from_env, "must be an integer"),
    ("EMP_MAX_ATTEMPTS", "three", defaults.queue_settings, "must be an integer"),
    ("EMP_LEASE_SECONDS", "1m", defaults.lease_seconds, "must be a number"),
])
def test_a_malformed_number_names_its_variable(monkeypatch, name, value, read, message) -> None:
    """Tried: each value above in its variable, read the way its service reads it."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"^{name} {message}, got '{value}'$"):
        read()


def test_unset_and_empty_mean_the_default_and_good_values_are_read(monkeypatch) -> None:
    monkeypatch.setenv("EMP_TEST_NUMBER", "")
    assert defaults.env_int("EMP_TEST_NUMBER", 7) == 7
    assert defaults.env_float("EMP_TEST_NUMBER", 2) == 2.0
    monkeypatch.setenv("EMP_TEST_NUMBER", "12")
    assert defaults.env_int("EMP_TEST_NUMBER", 7) == 12
    assert defaults.env_float("EMP_TEST_NUMBER", 2) == 12.0


@pytest.mark.parametrize("command, name, value, message, code", [
    ("api", "EMP_WS_PING_SECONDS", "0", "must be a positive number of seconds, got '0'", 1),
    ("api", "EMP_API_PROCESSES", "two", "must be an integer, got 'two'", 1),
    ("api", "EMP_CORS_ORIGINS", "https://app.example/", "'https://app.example/' is not an "
     "origin: scheme://host[:port], no path or trailing slash", 1),
    ("webhooks", "EMP_WEBHOOK_TIMEOUT_SECONDS", "soon", "must be a number, got 'soon'", 1),
    ("worker", "EMP_MAX_ATTEMPTS", "three", "must be an integer, got 'three'", 2),
    ("worker", "EMP_HEALTH_GATE_SECONDS", "soon", "must be a number, got 'soon'", 2),
])
def test_a_service_with_a_malformed_setting_stops_with_one_line(command, name, value,
                                                                message, code) -> None:
    """Tried: ``emp api``, ``emp webhooks`` and ``emp worker`` started with one bad variable
    each. They stop before serving with click's error line naming it (the worker's, a usage
    error, exits 2 like its other configuration errors) and print no traceback."""
    args = ["--port", "1"] if command != "worker" else []
    done = run(command, *args, env={name: value, "EMP_REDIS_URL": "redis://127.0.0.1:1/0"},
               timeout=60)
    assert done.returncode == code, done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"Error: {name} {message}", done.stderr
    assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.parametrize("name, value", [
    ("EMP_LEASE_SECONDS", "0"),
    ("EMP_LEASE_SECONDS", "-5"),
    ("EMP_LEASE_SECONDS", "nan"),
    ("EMP_MAX_ATTEMPTS", "0"),
    ("EMP_RETENTION_SECONDS", "0"),
    ("EMP_RETENTION_SECONDS", "inf"),
])
def test_a_worker_refuses_a_lease_attempts_or_retention_it_cannot_work_with(name, value) -> None:
    """Tried: ``emp worker`` with each value. Before, all were accepted: with a 0 s lease
    every claim's lease had expired when it was made, so the next claim's housekeeping
    put the running job back and another process ran it again (a 3 s job on a worker
    with two processes ran 5 times); 'nan' crashed the worker at start ("cannot convert
    float NaN to integer"); EMP_MAX_ATTEMPTS=0 failed every job whose lease expired
    once, and a 0 s retention expired each record as it ended. Now the worker stops
    before serving, naming the variable."""
    done = run("worker", env={name: value, "EMP_REDIS_URL": "redis://127.0.0.1:1/0"},
               timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: {name} must be a positive"), done.stderr
    assert f"got '{value}'" in last and "Traceback" not in done.stdout + done.stderr


#: Settings read once, when their module is imported, and their documented defaults.
IMPORT_TIME = {
    "EMP_MAX_PAYLOAD_BYTES": ("capability_router.jobspec", "MAX_PAYLOAD_BYTES", 1048576),
    "EMP_MAX_RESULT_BYTES": ("capability_router.functions", "MAX_RESULT_BYTES", 65536),
    "EMP_ENQUEUE_WAIT_MS": ("capability_router.functions", "ENQUEUE_WAIT_MS", 1000),
    "EMP_GREEN_REDIS_CONNECTIONS": ("capability_router.green", "CONNECTIONS", 200),
}
READ_ON_USE = (  # (variable, call reading it, documented default)
    ("EMP_OOM_MAX_ESCALATIONS", "emp_tasks.oom_escalation.max_steps_from_env()", 3),
    ("EMP_ENQUEUE_REPLICAS", "capability_router.functions.enqueue_replicas()", 0),
)
CHECK = """
import importlib, json, os, sys
import emp_tasks.app, emp_tasks.oom_escalation, capability_router.functions
read = {name: getattr(importlib.import_module(module), attr)
        for name, (module, attr, _) in IMPORT_TIME.items()}
read.update({name: eval(call) for name, call, _ in READ_ON_USE})
refused = {}
for name, (module, _, _) in IMPORT_TIME.items():
    os.environ[name] = "1MB"
    try:
        importlib.reload(importlib.import_module(module))
    except ValueError as exc:
        refused[name] = str(exc)
    os.environ[name] = ""
for name, call, _ in READ_ON_USE:
    os.environ[name] = "1MB"
    try:
        eval(call)
    except ValueError as exc:
        refused[name] = str(exc)
print(json.dumps({"read": read, "refused": refused}))
"""


def test_an_empty_setting_means_its_default_and_a_malformed_one_is_named() -> None:
    """Tried: every setting read with a plain ``int(os.environ.get(...))`` set empty, as an
    env file's ``NAME=`` line leaves it, then each set to '1MB'. Before, empty was no
    default: ``EMP_MAX_PAYLOAD_BYTES=`` stopped every ``emp`` command, ``emp --help``
    included, with a traceback ending "invalid literal for int() with base 10: ''"
    (every other setting takes empty as unset), and '1MB' did not say which variable."""
    empty = {name: "" for name in [*IMPORT_TIME, *(name for name, _, _ in READ_ON_USE)]}
    script = (f"IMPORT_TIME = {IMPORT_TIME!r}\nREAD_ON_USE = {READ_ON_USE!r}\n{CHECK}")
    done = subprocess.run([sys.executable, "-c", script], env={**os.environ, **empty},
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-1500:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["read"] == {**{name: default for name, (_, _, default) in IMPORT_TIME.items()},
                              **{name: default for name, _, default in READ_ON_USE}}
    assert answer["refused"] == {name: f"{name} must be an integer, got '1MB'"
                                 for name in empty}


#: The two ways to run the command line: the console script pip installed, and the module.
FORMS = {"emp": [str(Path(sys.executable).with_name("emp"))],
         "python -m emp_tasks.cli": [sys.executable, "-m", "emp_tasks.cli"]}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("args", [["--help"], ["job", "some-id"]])
def test_a_setting_read_at_import_that_is_malformed_stops_emp_with_one_line(form, args) -> None:
    """Tried: ``emp --help`` and ``emp job some-id`` with ``EMP_MAX_PAYLOAD_BYTES=1MB``, a
    setting read when its module is imported, before click runs, through the console
    script and through ``python -m emp_tasks.cli``. Before: a 12-line traceback ending in
    the ValueError, from every command, ``--help`` included; once ``emp`` caught it, the
    module form still printed that traceback (importing the package ``emp_tasks``, which
    ``-m`` does before the module runs, read the setting) and exited 1. Now both give one
    line naming it and exit status 2, as for a bad option."""
    done = subprocess.run([*FORMS[form], *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "EMP_MAX_PAYLOAD_BYTES": "1MB",
                               "EMP_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip() == "Error: EMP_MAX_PAYLOAD_BYTES must be an integer, got '1MB'"
    assert done.stdout == ""


@pytest.mark.parametrize("form", FORMS)
def test_both_forms_of_the_command_line_run_with_good_settings(form) -> None:
    """The module form reaches the same commands as ``emp`` when the settings are good."""
    done = subprocess.run([*FORMS[form], "--help"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "EMP_MAX_PAYLOAD_BYTES": "2048"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "worker" in done.stdout and "submit" in done.stdout and done.stderr == ""
