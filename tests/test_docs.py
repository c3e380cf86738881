"""What a user copies from ``conf/`` and the README, checked against the code that reads it.

No process, no Redis: each example file is read by the code's own parser (pools file,
supervisord.conf renderer, settings readers, Flower's and Celery's option names), and
the README's REST table by the OpenAPI document the API serves.
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
README = (ROOT / "README.md").read_text()

#: ``NAME=value`` lines of an env example; ``#NAME=value`` (no space) is a default left
#: commented out, ``# NAME=value`` an example.
SETTING = re.compile(r"^(?P<off>#?)(?P<name>[A-Z][A-Z0-9_]*)=(?P<value>.*)$")
#: Variables whose values in the env examples are examples, as their sections say.
EXAMPLE_VALUES = re.compile(r"^(WORKER_.*|ALLOWED_CUSTOMERS|DENIED_CUSTOMERS|MACHINE_ID|"
                            r"WORKERS|EMP_CONNECTOR)$")
#: Read by Flower and by the OpenTelemetry SDK, not by this project's code.
READ_BY_OTHERS = ("FLOWER_", "OTEL_")


def shown_settings(*names: str, commented: bool = True) -> dict[str, str]:
    """Every ``NAME=value`` of the env examples ``names`` (``commented``: also ``#NAME=``)."""
    found: dict[str, str] = {}
    for name in names:
        for line in (CONF / name).read_text().splitlines():
            match = SETTING.match(line.strip()) if not line.startswith("# ") else None
            if match and (commented or not match["off"]):
                found[match["name"]] = match["value"]
    return found


def code_strings() -> str:
    return "\n".join(path.read_text() for package in ("capability_router", "emp_tasks",
                                                      "webapp", "machine")
                     for path in (ROOT / package).rglob("*.py"))


def example_names() -> set[str]:
    """Every variable the env examples name, commented out or not."""
    text = (CONF / "emp.env.example").read_text() + (CONF / "connectors.env.example").read_text()
    return set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", text, re.MULTILINE))


def read_settings() -> dict[str, Any]:
    """Every setting the services read through their readers, as they read them now."""
    from capability_router.prediction.service import IntelligenceSettings
    from emp_tasks import defaults
    from machine.settings import MachineSettings
    from webapp.settings import WebSettings
    from webapp.webhooks.config import WebhookConfig

    queue = {k: v for k, v in defaults.queue_settings().items()
             if k not in defaults.AFFINITY_ENV and k != "affinity"}
    return {
        "web": WebSettings.from_env(), "webhooks": WebhookConfig.from_env(),
        "machine": MachineSettings.from_env(machine_id="m", workers="simulation:1",
                                            redis_url="redis://127.0.0.1:1/0"),
        "intelligence": IntelligenceSettings.from_env(instance="i"), "queue": queue,
        "worker": (defaults.lease_seconds(), defaults.idle_block_seconds(),
                   defaults.health_gate(), defaults.health_gate_seconds(),
                   defaults.health_gate_timeout_seconds(), defaults.health_gate_open_seconds(),
                   defaults.worker_pools(), defaults.time_limits()),
    }


def render_example_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """The supervisord.conf and worker spec `emp machine` writes for the example's machine."""
    from machine.gpus import Gpu, GpuInventory
    from machine.plan import build_plan
    from machine.settings import MachineSettings
    from machine.supervisor_conf import RunFiles, render_config

    monkeypatch.setattr(sys, "executable", "/usr/bin/python3")
    card = "NVIDIA GeForce RTX 4090"
    plan = build_plan("gpu-box-1", "comfyui:auto", GpuInventory("nvml", [Gpu(0, card, 24.0),
                                                                         Gpu(1, card, 24.0)]),
                      comfyui_command="python main.py --listen 127.0.0.1 --port {port}",
                      comfyui_dir="/opt/ComfyUI")
    run_dir = tmp_path / "var/lib/emp/machine-gpu-box-1"
    options = MachineSettings(machine_id="gpu-box-1", redis_url="redis://x").program_options()
    text = render_config(plan, RunFiles(run_dir, run_dir / "supervisor.sock"), options)
    spec = (run_dir / "programs" / "comfyui-1.json").read_text()
    return text.replace(str(tmp_path), ""), spec


def test_every_conf_file_is_what_the_code_reads(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Tried: each file of conf/ through the code that reads it. The env examples' shown
    defaults change no setting, and every variable they name is read; pools.toml loads
    and holds the README's excerpts of it; supervisord.conf.example is what `emp machine`
    writes for the machine its header describes; keda.yaml bounds the pool as pools.toml
    does and holds the README's trigger; flowerconfig.py and celeryconfig.py set
    only options Flower and Celery know."""
    from capability_router import functions, green, jobspec
    from capability_router.pools import load_pools_file

    names = example_names()
    code = code_strings()
    unread = sorted(n for n in names if not n.startswith(READ_BY_OTHERS)
                    and f'"{n}"' not in code and f"'{n}'" not in code)
    assert not unread, f"conf/*.env.example name variables no code reads: {unread}"

    for name in [n for n in os.environ if n.startswith(("EMP_", "WORKER_"))]:
        monkeypatch.delenv(name)
    for name in ("MACHINE_POOL", "MACHINE_ID", "WORKERS", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    unset = read_settings()
    shown = {k: v for k, v in shown_settings("emp.env.example", "connectors.env.example").items()
             if not EXAMPLE_VALUES.match(k)}
    for name, value in shown.items():
        monkeypatch.setenv(name, value)
    assert read_settings() == unset, "a default shown in conf/emp.env.example is not the code's"
    assert (jobspec.MAX_PAYLOAD_BYTES, functions.MAX_RESULT_BYTES, functions.ENQUEUE_WAIT_MS,
            green.CONNECTIONS) == tuple(int(shown[n]) for n in (
                "EMP_MAX_PAYLOAD_BYTES", "EMP_MAX_RESULT_BYTES", "EMP_ENQUEUE_WAIT_MS",
                "EMP_GREEN_REDIS_CONNECTIONS"))

    pools = load_pools_file(str(CONF / "pools.toml"))
    assert list(pools.pools) == ["fast", "standard", "heavy"]
    whole = tomllib.loads((CONF / "pools.toml").read_text())
    excerpts = re.findall(r"<!-- not-run: an excerpt of conf/pools.toml[^>]*-->\n```toml\n"
                          r"(.*?)```", README, re.DOTALL)
    assert len(excerpts) == 2

    def within(part: dict[str, Any], of: dict[str, Any], where: str) -> None:
        for key, value in part.items():
            assert key in of, f"README's excerpt of conf/pools.toml has {where}{key}; the file not"
            if isinstance(value, dict):
                within(value, of[key], f"{where}{key}.")
            else:
                assert of[key] == value, f"{where}{key}: README {value!r}, file {of[key]!r}"

    for excerpt in excerpts:
        within(tomllib.loads(excerpt), whole, "")

    yaml = pytest.importorskip("yaml")
    keda = yaml.safe_load((CONF / "keda.yaml").read_text())
    standard = pools.pools["standard"].scaling
    assert (keda["spec"]["minReplicaCount"], keda["spec"]["maxReplicaCount"]) == (
        standard.min_machines, standard.max_machines)
    shown_keda = re.search(r"\(conf/keda.yaml\)[^>]*-->\n```yaml\n(.*?)```", README, re.DOTALL)
    assert yaml.safe_load(shown_keda[1])["triggers"] == keda["spec"]["triggers"]

    rendered, spec = render_example_machine(tmp_path, monkeypatch)
    example = (CONF / "supervisord.conf.example").read_text()
    body = [line for line in example.splitlines() if not line.startswith(";")]
    assert body == [line for line in rendered.splitlines() if not line.startswith(";")]
    shown_spec = re.search(r"programs/comfyui-1.json:\n(.*?)\n;\n", example, re.DOTALL)[1]
    assert "\n".join(line[4:] for line in shown_spec.splitlines()) == spec

    from celery.app.defaults import DEFAULTS
    from flower.command import is_flower_option

    flower = re.findall(r"^#? ?(\w+) = ", (CONF / "flowerconfig.py").read_text(), re.MULTILINE)
    flower += re.findall(r"; (\w+) = ", (CONF / "flowerconfig.py").read_text())
    assert flower and all(is_flower_option(name) for name in flower), flower
    celery = re.findall(r"^#? ?(\w+) = ", (CONF / "celeryconfig.py").read_text(), re.MULTILINE)
    assert celery and all(name in DEFAULTS for name in celery), celery


def test_the_readme_rest_table_is_the_openapi_document() -> None:
    """Tried: each row of the README's REST table against the document /api/openapi.json
    serves. Each route is an operation there with every status the row names, and each
    error's description is true of that operation. Before, POST /api/jobs's 409 said
    "The job's state forbids this" (the README, rightly: the id is already this
    customer's), and the pool metrics' and machine's 404 said "No such job ... or model"."""
    from webapp.api.openapi import build

    document = build(["simulation"])
    responses = document["components"]["responses"]
    rows = re.findall(r"^\| `(GET|POST|PUT|DELETE) ([^`]+)`(?:, `(GET) ([^`]+)`)?"
                      r"(?: \(admin\))? \| (.*) \|$", README, re.MULTILINE)
    assert len(rows) >= 8
    for method, route, method2, route2, answer in rows:
        codes = set(re.findall(r"\b([1-5]\d\d)\b", answer))
        named: set[str] = set()
        for verb, path in ((method, route), (method2, route2)):
            if not verb:
                continue
            path = re.sub(r"<(\w+)>", lambda m: "{" + ("job_id" if m[1] == "id" else m[1])
                          + "}", path.split("?")[0].replace("[", "").split("]")[0])
            if path.startswith("/api/machines/"):
                path = "/api/machines/{machine_id}"
            operation = document["paths"][path][verb.lower()]
            named |= set(operation["responses"])
            for code, response in operation["responses"].items():
                if "$ref" in response:
                    response = responses[response["$ref"].rsplit("/", 1)[1]]
                text = response["description"].lower()
                if code == "404":
                    param = re.findall(r"\{(\w+?)(?:_id)?\}", path)[-1]
                    noun = {"name": "pool" if "/pools/" in path else "model"}.get(param, param)
                    assert noun in text, (verb, path, text)
                if code == "409" and (verb, path) == ("POST", "/api/jobs"):
                    assert "id" in text.split() and "state" not in text, text
        assert codes <= named, (method, route, codes - named)
