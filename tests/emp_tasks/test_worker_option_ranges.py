"""``emp worker`` refuses a concurrency below 1 and negative hardware, before it registers
anything in Redis."""

from __future__ import annotations

import pytest

from tests.emp_tasks.test_cli import run

pytestmark = pytest.mark.timeout(180)


@pytest.mark.parametrize("args, env, named", [
    (["-c", "0"], {}, "'-c' / '--concurrency'"),
    ([], {"WORKER_CONCURRENCY": "0"}, "WORKER_CONCURRENCY"),
    (["--gpu-memory-gb", "-4"], {}, "'--gpu-memory-gb'"),
    ([], {"WORKER_GPU_MEMORY_GB": "-4"}, "WORKER_GPU_MEMORY_GB"),
    (["--ram-gb", "-1"], {}, "'--ram-gb'"),
    ([], {"WORKER_CPU_CORES": "-2"}, "WORKER_CPU_CORES"),
])
def test_a_worker_refuses_no_concurrency_and_negative_hardware(
        redis_server, client, args: list[str], env: dict[str, str], named: str) -> None:
    """Tried: ``emp worker -c 0`` (before: Celery ran it with one process, silently),
    ``--gpu-memory-gb -4`` (before: accepted, the worker registered a profile with -4 GB
    of GPU memory and took jobs), the same through WORKER_* variables. Now each stops
    with a usage error (exit 2) naming the option or variable, and nothing is written
    to Redis."""
    before = sorted(client.keys("*"))
    done = run("worker", *args, env={"EMP_REDIS_URL": redis_server.url, **env}, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ") and named in last, done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(client.keys("*")) == before
