"""``emp machine`` refuses at its start a setting its workers would refuse at theirs.

Before, the machine printed "machine ... up", its health server answered, and every
worker exited at start with the error line in its own log file only: supervisor
restarted it (BACKOFF) until it gave up (FATAL), the machine revived it every 30 s
and logged "simulation-0 is FATAL (Exited too quickly (process log may have details));
starting it again", forever. ``/ready`` said 503 "worker is BACKOFF".
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from machine.status import read_machine


@pytest.mark.timeout(150)
@pytest.mark.parametrize("variable, value, said", [
    ("EMP_MODEL_CACHE_DIR", "{file}/models", "EMP_MODEL_CACHE_DIR {file}/models cannot be used"),
    ("EMP_SIMULATION_STEPS", "x", "EMP_SIMULATION_STEPS must be a whole number from 1, got 'x'"),
    ("EMP_LEASE_SECONDS", "0", "EMP_LEASE_SECONDS must be a positive number, got '0'"),
    ("WORKER_RAM_GB", "lots", "WORKER_RAM_GB must be a number, got 'lots'"),
    ("MACHINE_POOL", "gpu pool", "invalid pool name 'gpu pool'"),
    ("MACHINE_POOL", "..", "MACHINE_POOL: '..' cannot be a pool name"),
])
def test_a_setting_its_workers_would_refuse_stops_the_machine_in_one_line(
        start_machine, client: redis.Redis, tmp_path: Path,  # noqa: ANN001
        variable: str, value: str, said: str) -> None:
    """Tried: ``emp machine`` (one mock GPU, a simulation worker) with each value above,
    which ``emp worker`` refuses at its start. Before: the machine ran with its worker
    exiting at start over and over (see the module docstring). Now the machine exits 1
    before starting anything, with one line naming the worker and the variable; no
    supervisord, no machine record."""
    file = tmp_path / "a-file"
    file.write_text("not a directory")
    machine = start_machine("box-pre", EMP_MOCK_GPUS="1",
                            **{variable: value.format(file=file)})
    code, output = machine.refused(f"{variable}={value}")
    assert code == 1, output
    last = output.strip().splitlines()[-1]
    assert last.startswith("Error: worker simulation-0: "), output
    assert said.format(file=file) in last and "Traceback" not in output, output
    assert read_machine(client, "box-pre") is None
    assert not (machine.run_dir / "supervisord.conf").exists()



@pytest.mark.timeout(120)
@pytest.mark.parametrize("env, said", [
    ({"EMP_MOCK_GPUS": "-1"}, "Error: EMP_MOCK_GPUS must be a whole number from 0 to 64, "
                              "got '-1'"),
    ({"EMP_MOCK_GPUS": "two"}, "Error: EMP_MOCK_GPUS must be a whole number from 0 to 64, "
                               "got 'two'"),
    ({"EMP_MOCK_GPUS": "1", "EMP_MOCK_GPU_MEMORY_GB": "nan"},
     "Error: EMP_MOCK_GPU_MEMORY_GB must be a finite number > 0 (GB per mock GPU), "
     "got 'nan'"),
])
def test_a_bad_mock_gpu_setting_is_one_line_naming_that_setting(
        start_machine, env: dict[str, str], said: str) -> None:  # noqa: ANN001
    """Tried: ``EMP_MOCK_GPUS=-1 emp machine``. Before: "EMP_MOCK_GPUS must be 0-64 and
    EMP_MOCK_GPU_MEMORY_GB a finite number > 0, got '-1', None", both settings in one
    message with the unset one's None. Now the line names the setting that is wrong,
    with its own value only."""
    machine = start_machine("box-mock", **env)
    code = machine.process.wait(timeout=60)
    output = machine.tail()
    assert code == 1, output
    assert output.strip().splitlines()[-1] == said, output
