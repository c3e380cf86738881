"""Handing back a dead worker process's jobs (``machine.handback``), against a real Redis.

The machine calls it when supervisord says a worker exited unexpectedly; the
process supervisor starts next has the same worker id, so the fence is the time:
only jobs assigned before the exit are the dead process's.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import redis
from machine_helpers import wait_until
from test_machine_reaper import running_job

from capability_router.functions import QueueFunctions, redis_now_ms
from machine.exits import ExitLog
from machine.gpus import GpuInventory
from machine.handback import cutoff_ms, hand_back_jobs
from machine.plan import MachinePlan, ProgramSpec
from machine.supervision import Supervisord
from machine.supervisor_conf import ProgramOptions, RunFiles, write_config

REASON = "worker process exited (terminated by SIGKILL)"


def job(client: redis.Redis, job_id: str) -> dict[str, str]:
    return client.hgetall(QueueFunctions(client, "default").keys.job(job_id))


def test_only_the_dead_processs_jobs_go_back_and_the_attempt_counts(
        client: redis.Redis) -> None:
    """Tried: worker ``m1-w`` holds a job claimed before its process died and one its
    next process (same worker id) claimed after; ``m2-w`` holds a third. Only the first
    goes back to pending, as lease expiry would return it (``job_requeued``, the attempt
    counted: with ``max_attempts`` 1 it fails instead); a second call changes nothing."""
    running_job(client, "j-old", "m1")
    cutoff = int(job(client, "j-old")["assigned_at"]) + 1
    wait_until(lambda: redis_now_ms(client) > cutoff, message="Redis's clock to pass the cutoff")
    running_job(client, "j-new", "m1")  # the next process of m1-w
    running_job(client, "j-other", "m2")
    running_job(client, "j-spent", "m3")

    assert hand_back_jobs(client, "m1-w", cutoff, REASON) == ["j-old"]
    old = job(client, "j-old")
    assert old["status"] == "pending" and old["last_error"] == REASON, old
    assert old["requeued_attempt"] == "1", old
    assert job(client, "j-new")["status"] == "in_progress"
    assert job(client, "j-other")["status"] == "in_progress"
    assert hand_back_jobs(client, "m1-w", cutoff, REASON) == []

    QueueFunctions(client, "default").configure(max_attempts=1)
    assert hand_back_jobs(client, "m3-w", redis_now_ms(client) + 1, REASON) == ["j-spent"]
    spent = job(client, "j-spent")
    assert spent["status"] == "failed", spent
    assert spent["last_error"] == f"{REASON}; gave up after 1 attempts", spent


def test_the_cutoff_does_not_depend_on_supervisords_time_zone(
        client: redis.Redis, tmp_path: Path) -> None:
    """Tried: a real supervisord whose local time is not the machine's (TZ three hours
    or more away; across a DST change the same happens for an hour), its worker killed
    with SIGKILL while holding a job. Before, the cutoff came from supervisord's local
    time stamp of the exit line read as the machine's local time: hours off, so the dead
    process's job was left to its lease (or, the other way, the next process's jobs were
    taken from it). Now it comes from supervisord's epoch stamps (``getProcessInfo``), so
    only the dead process's job goes back whatever either side's time zone. (It now
    comes from when the machine read the exit line, epoch time with milliseconds: the
    epoch stamps of ``getProcessInfo``, which a first form of this fix used, are whole
    seconds and left a job claimed in the dead process's last second to its lease,
    ``test_machine_worker_exits``.)"""
    zone = "Asia/Tokyo" if time.localtime().tm_gmtoff <= -3 * 3600 else "America/Sao_Paulo"
    files = RunFiles.in_dir(tmp_path)
    worker = ProgramSpec("sim-0", "worker", "simulation", ["sleep", "600"],
                         worker_id="box-w")
    write_config(MachinePlan("box", GpuInventory("none"), [worker]), files,
                 ProgramOptions(1024 * 1024, 1, 1, 0))
    exits = ExitLog(["sim-0"])
    supervisord = Supervisord(files, {**os.environ, "TZ": zone}, on_line=exits.feed).start()
    try:
        wait_until(lambda: supervisord.client.process("sim-0")["statename"] == "RUNNING",
                   message="sim-0 to run")
        dead_pid = supervisord.client.process("sim-0")["pid"]
        running_job(client, "j-dead", "box")
        time.sleep(1.1)  # held a while: supervisord's stamps are whole seconds
        os.kill(dead_pid, signal.SIGKILL)
        exited: list = []
        wait_until(lambda: exited.extend(exits.take()) or exited, message="the exit line")
        wait_until(lambda: (info := supervisord.client.process("sim-0"))["pid"] not in (
            0, dead_pid) and info["statename"] == "RUNNING", message="the next process")
        time.sleep(1.1)  # the next process claims long after it started
        running_job(client, "j-next", "box")
        before_ms = cutoff_ms(client, exited[0].wall)
        assert hand_back_jobs(client, "box-w", before_ms, REASON) == ["j-dead"], zone
        assert job(client, "j-next")["status"] == "in_progress"
    finally:
        supervisord.stop()
