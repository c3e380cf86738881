"""The worker plan, GPU detection and the supervisord config rendered from them."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from machine import gpus as gpu_detection
from machine.errors import MachineError, PlanError, UnknownProgram
from machine.gpus import Gpu, GpuInventory, detect_gpus, parse_nvidia_smi
from machine.plan import PlanItem, build_plan, parse_workers
from machine.settings import MachineSettings
from machine.supervisor_conf import ProgramOptions, RunFiles, render_config, write_config

TWO = GpuInventory("mock", [Gpu(0, "RTX 4090", 24, "GPU-a"), Gpu(1, "RTX 3080", 10, "GPU-b")])


def test_parse_workers_syntax() -> None:
    assert parse_workers("comfyui:auto, simulation:2,comfyui-remote") == [
        PlanItem("comfyui", None), PlanItem("simulation", 2), PlanItem("comfyui-remote", 1)]


@pytest.mark.parametrize(("text", "names"), [
    ("", "empty"),
    ("simulation:0", "'simulation:0'"),
    ("simulation:two", "'simulation:two'"),
    ("a1111:2", "unknown kind 'a1111'"),
    ("simulation:1,simulation:2", "listed twice"),
    ("simulation:1:2", "'simulation:1:2'"),
    ("comfyui-remote:auto", "comfyui-remote:auto"),
    ("simulation:\u00b2", "count must be a positive integer"),
    ("simulation:" + "9" * 5000, "count must be a positive integer"),
    ("simulation:1000", "at most 256 workers"),
    ("simulation:200,comfyui-remote:100", "at most 256 workers"),
])
def test_bad_plans_name_the_item(text: str, names: str) -> None:
    """Tried (audit): ``simulation:²`` and a 5000-digit count were a ValueError
    traceback; ``simulation:100000000`` (a typo) built the plan for minutes, eating
    memory, and would have started that many workers. Each is one line now."""
    with pytest.raises(PlanError, match=names):
        build_plan("box", text, TWO)


def test_auto_is_one_worker_per_gpu_pinned_to_it() -> None:
    plan = build_plan("box", "comfyui:auto,simulation:3", TWO)
    comfy = [p for p in plan.workers if p.kind == "comfyui"]
    assert [p.worker_id for p in comfy] == ["box-comfyui-0", "box-comfyui-1"]
    first = comfy[0].env
    assert first["CUDA_VISIBLE_DEVICES"] == "0" and first["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert first["WORKER_GPU_MEMORY_GB"] == "24" and first["WORKER_GPU_MODEL"] == "RTX 4090"
    assert first["COMFYUI_URL"] == "http://127.0.0.1:8188"
    assert comfy[1].env["COMFYUI_URL"] == "http://127.0.0.1:8189"
    assert comfy[1].env["WORKER_GPU_MEMORY_GB"] == "10"
    assert {k: first[k] for k in ("MACHINE_ID", "WORKER_ID", "WORKER_SERVICES", "EMP_CONNECTOR",
                                  "EMP_CONNECTOR_ID")} == {
        "MACHINE_ID": "box", "WORKER_ID": "box-comfyui-0", "WORKER_SERVICES": "comfyui",
        "EMP_CONNECTOR": "comfyui", "EMP_CONNECTOR_ID": "comfyui-0"}
    simulation = [p for p in plan.workers if p.kind == "simulation"]
    assert [p.gpu.index for p in simulation if p.gpu] == [0, 1, 0]  # a larger count shares
    assert plan.services == []  # no COMFYUI_COMMAND: ComfyUI is run by someone else


def test_remote_workers_use_no_local_gpu() -> None:
    plan = build_plan("box", "comfyui-remote:2", TWO)
    assert [p.name for p in plan.workers] == ["comfyui-remote-0", "comfyui-remote-1"]
    assert all(p.gpu is None and "CUDA_VISIBLE_DEVICES" not in p.env for p in plan.workers)
    assert all(p.service == "comfyui" and "COMFYUI_URL" not in p.env for p in plan.workers)


def test_no_gpus_auto_is_an_error_and_a_count_runs_without_gpu_fields() -> None:
    with pytest.raises(PlanError, match="none detected by NVML"):
        build_plan("box", "simulation:auto", GpuInventory("none"))
    plan = build_plan("box", "simulation:2", GpuInventory("none"))
    assert len(plan.workers) == 2 and "WORKER_GPU_MEMORY_GB" not in plan.workers[0].env


def test_comfyui_instances_when_a_command_is_configured() -> None:
    plan = build_plan("box", "comfyui:auto", TWO, comfyui_dir="/opt/ComfyUI",
                      comfyui_command="python main.py --port {port} --cuda-device {gpu} "
                                      "--extra-model-paths-config 'my paths.yaml'")
    assert [p.name for p in plan.services] == ["comfyui-server-0", "comfyui-server-1"]
    second = plan.services[1]
    assert second.command == ["python", "main.py", "--port", "8189", "--cuda-device", "1",
                              "--extra-model-paths-config", "my paths.yaml"]
    assert second.directory == "/opt/ComfyUI" and second.env["CUDA_VISIBLE_DEVICES"] == "1"
    assert plan.programs[:2] == plan.services  # services start first
    assert plan.program("box-comfyui-1").name == "comfyui-1"
    with pytest.raises(UnknownProgram):
        plan.program("nope")
    with pytest.raises(PlanError, match="has no GPU"):
        build_plan("box", "comfyui:1", GpuInventory("none"), comfyui_command="x --gpu {gpu}")


def test_mock_gpus_from_the_environment() -> None:
    found = detect_gpus({"EMP_MOCK_GPUS": "3", "EMP_MOCK_GPU_MEMORY_GB": "48",
                         "EMP_MOCK_GPU_MODEL": "A6000"})
    assert found.source == "mock" and [g.index for g in found.gpus] == [0, 1, 2]
    assert found.gpus[2] == Gpu(2, "A6000", 48, "MOCK-GPU-2")
    assert detect_gpus({"EMP_MOCK_GPUS": "0"}).gpus == []
    assert detect_gpus({"EMP_MOCK_GPUS": "1"}).gpus[0].memory_gb == 24
    with pytest.raises(MachineError, match="EMP_MOCK_GPUS"):
        detect_gpus({"EMP_MOCK_GPUS": "many"})


def test_nvidia_smi_output_is_parsed_in_whole_gigabytes() -> None:
    gpus = parse_nvidia_smi("0, NVIDIA GeForce RTX 4090, 24564, GPU-1a2b\n"
                            "1, NVIDIA A100-SXM4-80GB, 81920, GPU-3c4d\n\n")
    assert gpus == [Gpu(0, "NVIDIA GeForce RTX 4090", 24, "GPU-1a2b"),
                    Gpu(1, "NVIDIA A100-SXM4-80GB", 80, "GPU-3c4d")]
    with pytest.raises(ValueError):
        parse_nvidia_smi("No devices were found")


def test_detection_falls_back_to_nvidia_smi_then_to_none(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    if _nvml_works():
        pytest.skip("this machine has a working NVML; the fallback is not reachable")
    monkeypatch.delenv("EMP_MOCK_GPUS", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert detect_gpus().source == "none"
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho '0, Fake GPU, 16384, GPU-fake'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    found = detect_gpus()
    assert found.source == "nvidia-smi" and found.gpus == [Gpu(0, "Fake GPU", 16, "GPU-fake")]
    fake.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    assert detect_gpus().source == "none"


def _nvml_works() -> bool:
    try:
        return gpu_detection._nvml_gpus() is not None
    except Exception:
        return False


def test_rendered_config_is_accepted_by_supervisord(tmp_path: Path) -> None:
    plan = build_plan("box", "simulation:2", TWO, comfyui_command=None)
    files = RunFiles.in_dir(tmp_path)
    options = ProgramOptions(log_max_bytes=1024, log_backups=2, stop_wait_seconds=5,
                             start_retries=3)
    text = render_config(plan, files, options)
    assert "[program:simulation-1]" in text and "stdout_logfile_maxbytes=1024" in text
    assert "stopasgroup=true" in text and "autorestart=true" in text
    assert "startretries=3" in text and "stopwaitsecs=5" in text
    write_config(plan, files, options)
    # supervisord's own option parser reads it (and would exit non-zero on an error).
    check = subprocess.run(
        [sys.executable, "-c", "import sys; from supervisor.options import ServerOptions; "
         "o = ServerOptions(); o.realize(['-c', sys.argv[1]]); "
         "print(sorted(g.name for g in o.process_group_configs))", str(files.config)],
        capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    assert "['simulation-0', 'simulation-1']" in check.stdout
    spec = files.program_spec("simulation-0").read_text()
    assert '"WORKER_ID": "box-simulation-0"' in spec
    assert oct(files.program_spec("simulation-0").stat().st_mode & 0o777) == "0o600"


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MACHINE_ID", "gpu-box.eu")
    monkeypatch.setenv("EMP_MACHINE_REPORT_SECONDS", "2")
    monkeypatch.setenv("EMP_MACHINE_RUN_DIR", str(tmp_path))
    settings = MachineSettings.from_env(health_port=9191)
    assert settings.machine_id == "gpu-box.eu" and settings.health_port == 9191
    assert settings.stale_seconds == 6 and settings.run_dir == tmp_path.resolve()
    monkeypatch.setenv("EMP_MACHINE_STALE_SECONDS", "4.5")
    assert MachineSettings.from_env().stale_seconds == 4.5
    with pytest.raises(MachineError, match="invalid machine id"):
        MachineSettings.from_env(machine_id="a b")
    # Tried: "box\n" (an env file's stray line end) passed the check ('$' matches before
    # a final newline), made a run directory with a newline in its name, and only then
    # failed writing supervisord.conf.
    with pytest.raises(MachineError, match="invalid machine id"):
        MachineSettings.from_env(machine_id="box\n")
    monkeypatch.setenv("EMP_MACHINE_REPORT_SECONDS", "soon")
    with pytest.raises(MachineError, match="EMP_MACHINE_REPORT_SECONDS"):
        MachineSettings.from_env()
    assert os.environ["MACHINE_ID"] == "gpu-box.eu"


def test_a_long_run_directory_puts_the_socket_in_the_temp_directory(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    files = RunFiles.in_dir(deep)
    assert files.socket.parent != deep and len(str(files.socket)) <= 100
    assert RunFiles.in_dir(deep).socket == files.socket  # the same name at every start
    assert RunFiles.in_dir(tmp_path).socket == tmp_path / "supervisor.sock"


@pytest.mark.parametrize(("variable", "value", "words"), [
    ("EMP_MACHINE_REPORT_SECONDS", "0", "at least 0.1"),
    ("EMP_MACHINE_POLL_SECONDS", "0", "busy loop"),
    ("EMP_STOP_WAIT_SECONDS", "-1", "at least 0"),
    ("EMP_HEALTH_PORT", "-5", "0-65535"),
    ("EMP_HEALTH_PORT", "99999", "0-65535"),
    ("EMP_MACHINE_RETENTION_SECONDS", "nan", "finite"),
    ("COMFYUI_BASE_PORT", "70000", "1-65535"),
    ("COMFYUI_BASE_PORT", "0", "1-65535"),
    ("EMP_LOG_MAX_BYTES", "-5", "at least 0"),
    ("EMP_LOG_BACKUPS", "-1", "at least 0"),
    ("EMP_START_RETRIES", "-3", "at least 0"),
    ("EMP_HEALTH_PORT", "9090.5", "whole number"),  # was port 9090
    ("EMP_LOG_BACKUPS", "2.5", "whole number"),  # was 2
])
def test_settings_that_cannot_work_are_one_line_naming_them(
        monkeypatch: pytest.MonkeyPatch, variable: str, value: str, words: str) -> None:
    """Tried (an audit, each from outside): a report period of 0 (its reaper then marked
    every other machine gone each second), a poll of 0 (a busy loop at 50-60% CPU), a
    stop wait of -1 (supervisor killed workers before they handed their jobs back), a
    health port of -5 (a traceback) and 99999 (silently port 34463). Later: a ComfyUI
    base port of 70000 or 0, and negative log sizes, log backups and start retries,
    were all written into supervisord.conf as they were; a health port of 9090.5 was cut to
    9090. Each is refused."""
    monkeypatch.setenv("MACHINE_ID", "box")
    monkeypatch.setenv(variable, value)
    with pytest.raises(MachineError, match=variable) as refused:
        MachineSettings.from_env()
    assert words in str(refused.value)


def test_a_missing_comfyui_dir_is_refused_before_anything_starts(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tried: COMFYUI_DIR=/opt/ComfyU (a typo) with COMFYUI_COMMAND set: the machine
    started, supervisor could not chdir there, every ComfyUI went FATAL and was revived
    every 30 s, and its workers waited for a ComfyUI that never came."""
    monkeypatch.setenv("MACHINE_ID", "box")
    monkeypatch.setenv("COMFYUI_COMMAND", "python main.py --port {port}")
    monkeypatch.setenv("COMFYUI_DIR", str(tmp_path / "ComfyU"))
    with pytest.raises(MachineError, match="COMFYUI_DIR .* is not a directory"):
        MachineSettings.from_env()
    monkeypatch.setenv("COMFYUI_DIR", str(tmp_path))
    assert MachineSettings.from_env().comfyui_dir == str(tmp_path)


def test_comfyui_ports_past_65535_are_refused() -> None:
    """Tried: COMFYUI_BASE_PORT=65535 with comfyui:2 planned ComfyUI on port 65536."""
    with pytest.raises(PlanError, match="port 65536"):
        build_plan("box", "comfyui:2", TWO, comfyui_command="run {port}",
                   comfyui_base_port=65535)


def test_a_mock_gpu_count_past_64_is_refused() -> None:
    """Tried: EMP_MOCK_GPUS=100000000 (a typo) sat building mock GPUs for minutes,
    memory growing, before anything was said; now one line names the limit."""
    with pytest.raises(MachineError, match="EMP_MOCK_GPUS must be a whole number from 0 to 64"):
        detect_gpus({"EMP_MOCK_GPUS": "100000"})
    assert len(detect_gpus({"EMP_MOCK_GPUS": "64"}).gpus) == 64


@pytest.mark.parametrize("memory", ["inf", "nan", "-1"])
def test_mock_gpu_memory_must_be_a_finite_positive_number(memory: str) -> None:
    """Tried: EMP_MOCK_GPU_MEMORY_GB=inf and nan were accepted; the workers then served a
    job asking for 100,000 GB and /status answered a bare Infinity, which is not JSON."""
    with pytest.raises(MachineError, match="finite number > 0"):
        detect_gpus({"EMP_MOCK_GPUS": "1", "EMP_MOCK_GPU_MEMORY_GB": memory})


@pytest.mark.parametrize("stale", ["5", "10", "-1"])
def test_a_stale_limit_not_longer_than_the_report_period_is_refused(
        monkeypatch: pytest.MonkeyPatch, stale: str) -> None:
    """Tried: ``emp machine`` with EMP_MACHINE_STALE_SECONDS=5 (reports every 10 s), 10 and
    -1. Before, each started. Read from ``machine.reaper`` (not run end to end here):
    machines sharing one env file each declare that limit, and every machine's reaper
    looks at the others silent longer than it, so each was marked gone between two of
    its own reports and its running jobs requeued. Now the start stops naming both
    variables."""
    monkeypatch.setenv("MACHINE_ID", "box")
    monkeypatch.setenv("EMP_MACHINE_STALE_SECONDS", stale)
    with pytest.raises(MachineError, match="^EMP_MACHINE_STALE_SECONDS .*longer than "
                                           "EMP_MACHINE_REPORT_SECONDS"):
        MachineSettings.from_env()
    monkeypatch.setenv("EMP_MACHINE_STALE_SECONDS", "10.5")
    assert MachineSettings.from_env().stale_seconds == 10.5


@pytest.mark.parametrize("name, value", [
    ("EMP_METRICS_PUBLIC", "ture"), ("EMP_HEALTH_GATE", "of"), ("EMP_DIRECTIVES", "none"),
    ("EMP_AFFINITY", "maybe"),
])
def test_a_flag_that_is_neither_on_nor_off_stops_the_machine_naming_it(
        monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    """Tried: each value as ``emp machine`` reads it at start (its settings, then its
    workers' start checks). Before, nothing refused them and each silently meant one
    side: EMP_METRICS_PUBLIC=ture kept /metrics behind the token (off), EMP_HEALTH_GATE=of
    and EMP_DIRECTIVES=none left the gate and the directives on in every worker, and
    EMP_AFFINITY=maybe turned warm-first claims on. Now the machine (and ``emp worker``,
    which runs the same checks) refuses the start naming the variable and the words."""
    from machine.preflight import check_workers

    monkeypatch.setenv("MACHINE_ID", "box")
    monkeypatch.setenv(name, value)
    with pytest.raises((ValueError, MachineError), match=f"{name} must be one of .*{value!r}"):
        MachineSettings.from_env()
        check_workers(build_plan("box", "simulation:1", GpuInventory("none")))


def test_negative_revive_seconds_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tried: ``EMP_REVIVE_SECONDS=-1`` as ``emp machine`` reads it. Before, it was
    accepted and the reviver (``revive_seconds <= 0``) left every FATAL program FATAL,
    as 0 documents, with nothing saying -1 meant that. Now the start stops naming it;
    0 still turns reviving off."""
    monkeypatch.setenv("MACHINE_ID", "box")
    monkeypatch.setenv("EMP_REVIVE_SECONDS", "-1")
    with pytest.raises(MachineError, match="^EMP_REVIVE_SECONDS must be at least 0"):
        MachineSettings.from_env()
    monkeypatch.setenv("EMP_REVIVE_SECONDS", "0")
    assert MachineSettings.from_env().revive_seconds == 0


@pytest.mark.parametrize("level", ["loud", "verbose", "5"])
def test_a_worker_log_level_workers_refuse_stops_the_machine(
        monkeypatch: pytest.MonkeyPatch, level: str) -> None:
    """Tried: ``EMP_WORKER_LOGLEVEL=loud emp machine``. Before, the machine started and
    each worker exited at start with Celery's "Invalid value for '-l' / '--loglevel':
    'LOUD' is not one of 'DEBUG', 'INFO', ...", again under supervisor until FATAL, then
    every EMP_REVIVE_SECONDS: no worker ever served. Now the start stops naming the
    variable and the levels; any case of a level Celery takes still starts."""
    monkeypatch.setenv("MACHINE_ID", "box")
    monkeypatch.setenv("EMP_WORKER_LOGLEVEL", level)
    with pytest.raises(MachineError, match="^EMP_WORKER_LOGLEVEL must be one of .*debug.*"
                                           f"{level!r}"):
        MachineSettings.from_env()
    monkeypatch.setenv("EMP_WORKER_LOGLEVEL", "Warning")
    assert MachineSettings.from_env().worker_loglevel == "Warning"


def test_fluentd_secure_takes_the_words_every_flag_takes() -> None:
    """Tried: ``FLUENTD_SECURE=on`` (and ``ture``) with FLUENTD_HOST set for ``emp
    machine``. Before, both shipped logs over plain http: "on" was not one of the three
    words this flag took, though every other flag takes it, and a typo meant off. Now
    "on" is https and an unknown word stops the start naming the variable."""
    from machine.shipping import shipping_url

    host = {"FLUENTD_HOST": "logs.example"}
    assert shipping_url({**host, "FLUENTD_SECURE": "on"}).startswith("https://")
    assert shipping_url({**host, "FLUENTD_SECURE": "off"}).startswith("http://")
    assert shipping_url(host).startswith("http://")
    with pytest.raises(ValueError, match="^FLUENTD_SECURE must be one of .*'ture'"):
        shipping_url({**host, "FLUENTD_SECURE": "ture"})
