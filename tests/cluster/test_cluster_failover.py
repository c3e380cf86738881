"""A master killed mid-run: its replica, which got the function library by replication,
takes over and no accepted job is lost (enqueues wait for the replica's copy)."""

from __future__ import annotations

import threading

import pytest
import redis
from cluster_fixtures import *  # noqa: F403 - the cluster fixtures

from capability_router.keys import Keys
from conftest import wait_for
from emp_tasks.producer import get_job, submit

pytestmark = pytest.mark.slow


def test_a_killed_master_loses_no_accepted_job(
        cluster, cclient, capp, pools, start_cluster_worker) -> None:
    first, second = pools
    workers = [start_cluster_worker("w1", pools), start_cluster_worker("w2", pools)]
    victim = cluster.port_of_slot(cclient.keyslot(Keys(first).config))
    accepted: list[tuple[str, str]] = []
    refused: list[str] = []
    stop = threading.Event()

    def produce() -> None:
        n = 0
        while not stop.is_set():
            pool = pools[n % 2]
            n += 1
            try:
                job = submit("echo", {"n": n, "sleep": 0.1}, pool=pool, app=capp)
            except Exception as exc:  # noqa: BLE001 - a refused submit is counted, not lost
                refused.append(f"{type(exc).__name__}: {exc}")
            else:
                accepted.append((pool, job.id))
            stop.wait(0.02)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    try:
        wait_for(lambda: len(accepted) >= 40, timeout=60, message="jobs before the kill")
        waiting = [job_id for pool, job_id in list(accepted) if pool == first
                   and get_job(job_id, pool=pool, app=capp)["status"] != "completed"]
        assert waiting, "the victim's pool should hold unfinished jobs when it dies"
        heir, = cluster.replica_ports(victim)
        # Replicas refuse FUNCTION LOAD: the library got there by replication.
        assert redis.Redis(port=heir).function_list(library="emp"), "replica lacks the library"
        cluster.kill(victim)  # SIGKILL mid-run: jobs pending, leased and in flight
        before = len(accepted)
        wait_for(lambda: victim not in cluster.master_ports()
                 and len(cluster.master_ports()) == 3, timeout=60,
                 message="the victim's replica to take over")
        cluster.restart(victim)  # it comes back as the new master's replica
        cluster.wait_ok()
        cluster.wait_replicas_online()
        wait_for(lambda: sum(p == first for p, _ in accepted[before:]) >= 20, timeout=90,
                 message="the failed-over pool to accept jobs again")
    finally:
        stop.set()
        producer.join(timeout=60)

    def unfinished() -> list[tuple[str, str, str]]:
        left = []
        for pool, job_id in accepted:
            status = get_job(job_id, pool=pool, app=capp)["status"]
            if status != "completed":
                left.append((pool, job_id, status))
        return left

    try:
        wait_for(lambda: not unfinished(), timeout=120, every=0.5,
                 message="every accepted job to complete")
    except BaseException:
        left = unfinished()
        logs = "".join(w.log_path.read_text()[-3000:] for w in workers)
        raise AssertionError(f"{len(left)} accepted jobs unfinished: {left[:10]}\n{logs}") from None
    print(f"accepted {len(accepted)} ({before} before the kill, {len(waiting)} of them "
          f"unfinished in the victim's pool), refused {len(refused)}: "
          f"{sorted(set(r[:120] for r in refused))[:5]}")
    assert victim not in cluster.master_ports() and heir in cluster.master_ports()
