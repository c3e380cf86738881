"""The ``emp`` command line as a user runs it: real processes, real Redis."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from redis_proxy import RedisProxy, State

from capability_router.functions import ensure_library
from capability_router.keys import Keys
from conftest import ROOT, wait_for
from emp_tasks.local_redis import LocalRedis, free_port

EMP = [sys.executable, "-m", "emp_tasks.cli"]


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> (
        subprocess.CompletedProcess[str]):
    return subprocess.run([*EMP, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


@pytest.mark.system
def test_up_with_demo_brings_the_system_up_and_every_demo_job_completes(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "EMP_REDIS_URL"}
    env["EMP_LEASE_SECONDS"] = "5"
    ports = ["--api-port", str(free_port()), "--webhook-port", str(free_port()),
             "--monitor-port", str(free_port())]
    done = subprocess.run([*EMP, "up", "--demo", "--data-dir", str(tmp_path), *ports],
                          capture_output=True, text=True, timeout=180,
                          env={**env, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "demo: all jobs completed" in done.stdout
    assert "no live worker" not in done.stdout, "the stack's workers serve the demo's pool"
    assert "Next: `emp up` keeps the stack running" in done.stdout, "it says what to do next"
    assert "emp submit simulation" in done.stdout
    assert "websocket: complete_job (success)" in done.stdout, "the API and its socket ran too"
    assert (tmp_path / "redis" / "appendonlydir").exists(), "append-only persistence is on"


def test_demo_without_a_live_worker_says_so_at_once_and_at_the_end(redis_server,
                                                                    client) -> None:
    """Tried: `emp demo` against a Redis no worker serves (a first hour without `emp up`).
    Before, it waited its whole minute in silence and ended, exit 1, with a table of
    pending jobs and no word why; now it says at once that no live worker serves the
    pool, and again at the end with what to start."""
    from io import StringIO

    from rich.console import Console

    from emp_tasks.demo import run_demo

    out = StringIO()
    assert run_demo(redis_server.url, timeout=0.5, console=Console(file=out, width=200)) is False
    text = out.getvalue()
    first, last = text.index("submitted 5 demo jobs"), text.index("EMP demo jobs")
    assert "note: no live worker serves pool default; waiting up to 0.5 s" in text[first:last]
    assert "demo: 5 of 5 jobs did not end within 0.5 s" in text[last:]
    assert "note: no live worker serves pool default; start one: `emp up`" in text[last:]
    # the table shows each job's requirements as they were submitted, in JSON (it
    # showed Python's repr: {'hardware': {'gpu_memory_gb': 16}})
    assert '{"hardware": {"gpu_memory_gb": 16}}' in text[last:], text[last:]
    assert "{'" not in text[last:], text[last:]


def test_up_refuses_a_taken_web_port_before_starting_anything(tmp_path) -> None:
    """Tried: `emp up` with --monitor-port on a port another server listens on (as two
    stacks on one machine do). The monitor could not bind and exited, the other server
    answered its health check, and the demo ran against that one; now `emp up` stops
    at once, naming the port and the option, and starts nothing."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run("up", "--data-dir", str(tmp_path / "up"), "--api-port", str(free_port()),
                   "--webhook-port", str(free_port()), "--monitor-port", str(port),
                   env={"EMP_REDIS_URL": ""}, timeout=60)
    assert done.returncode != 0
    assert f"port {port} for the monitor is in use" in done.stderr
    assert "--monitor-port" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "up").exists(), "nothing was started"


def test_up_refuses_a_data_dir_it_cannot_make_in_one_line(tmp_path) -> None:
    """Tried: `emp up --data-dir` naming a file, and a folder under a file (which no one
    can make). Both were a traceback (FileExistsError, NotADirectoryError); now each is
    one line naming the folder, and nothing is started or written."""
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    ports = ["--api-port", str(free_port()), "--webhook-port", str(free_port()),
             "--monitor-port", str(free_port())]
    on_a_file = run("up", "--data-dir", str(a_file), *ports, env={"EMP_REDIS_URL": ""},
                    timeout=60)
    assert on_a_file.returncode == 2 and "Traceback" not in on_a_file.stderr
    assert "Invalid value for '--data-dir'" in on_a_file.stderr and "is a file" in (
        on_a_file.stderr), on_a_file.stderr
    under_a_file = run("up", "--data-dir", str(a_file / "up"), *ports,
                       env={"EMP_REDIS_URL": ""}, timeout=60)
    assert under_a_file.returncode == 1 and "Traceback" not in under_a_file.stderr
    assert f"cannot keep the data and logs in {a_file / 'up'}" in under_a_file.stderr, (
        under_a_file.stderr)
    assert a_file.read_text() == "mine" and sorted(tmp_path.iterdir()) == [a_file]


def test_submit_waits_job_shows_and_bad_input_is_refused(redis_server, client,
                                                        start_worker) -> None:
    start_worker("cli-worker")
    env = {"EMP_REDIS_URL": redis_server.url}
    done = run("submit", "simulation", "--payload", '{"steps": 3, "duration": 0.3}', env=env)
    assert done.returncode == 0, done.stderr
    assert "no live worker" not in done.stderr

    # --timeout is wall time: a job reporting progress every 0.2 s for 20 s was waited
    # for to its end, since only reads that found no event counted toward the timeout
    started = time.monotonic()
    busy = run("submit", "simulation", "--payload", '{"steps": 100, "duration": 20}',
               "--timeout", "2", env=env)
    assert busy.returncode == 1 and json.loads(busy.stdout.splitlines()[-1])["status"] == (
        "timeout"), busy.stdout + busy.stderr
    assert time.monotonic() - started < 12
    run("cancel", busy.stdout.splitlines()[0], env=env)
    job_id = done.stdout.splitlines()[0]
    final = json.loads(done.stdout.splitlines()[-1])
    assert final["status"] == "completed" and final["job_id"] == job_id
    shown = json.loads(run("job", job_id, env=env).stdout)
    assert shown["status"] == "completed" and shown["worker_id"] == "cli-worker"

    before = sorted(client.keys("*"))
    bad = run("submit", "simulation", "--requirements", '{"hardware": {"gpu_memory_gb": "x"}}',
              "--no-wait", env=env)
    assert bad.returncode == 2 and "gpu_memory_gb must be a number" in bad.stderr
    bad_json = run("submit", "simulation", "--payload", "{not json", env=env)
    assert bad_json.returncode == 2 and "not valid JSON" in bad_json.stderr
    missing = run("job", "no-such-job", env=env)
    assert missing.returncode == 1 and "not found" in missing.stderr
    assert sorted(client.keys("*")) == before


def test_submit_reads_its_json_from_files_and_a_comfyui_workflow_file(
        redis_server, client, tmp_path: Path) -> None:
    """Tried: ``--payload @FILE``, ``--requirements @FILE``, ``--payload @-`` (standard
    input) and ``--workflow-file`` with a workflow saved in API format: each job is filed
    with what the file holds. Before, a workflow went in as
    ``--payload "{\"workflow\": $(cat workflow_api.json)}"``. Refused, naming the option,
    nothing written: a missing file, ``@`` alone, a file that is not JSON, a workflow file
    holding no object, the UI's own save format (no class_type), a workflow given
    twice, and JSON naming a member twice in one object."""
    env = {"EMP_REDIS_URL": redis_server.url}
    (tmp_path / "payload.json").write_text('{"steps": 2, "note": "from a file"}')
    (tmp_path / "requirements.json").write_text('{"hardware": {"gpu_memory_gb": 8}}')
    workflow = {"3": {"class_type": "KSampler", "inputs": {"seed": 5}}}
    (tmp_path / "workflow_api.json").write_text(json.dumps(workflow))
    (tmp_path / "ui.json").write_text('{"nodes": [], "links": []}')
    (tmp_path / "broken.json").write_text('{"steps": ')
    (tmp_path / "list.json").write_text('[{"class_type": "KSampler"}]')
    (tmp_path / "twice.json").write_text('{"hardware": {"gpu_memory_gb": 8, "gpu_memory_gb": 80}}')

    def submitted(*args: str, stdin: str | None = None) -> dict:
        done = subprocess.run([*EMP, "submit", *args, "--no-wait"], capture_output=True,
                              text=True, timeout=120, input=stdin, cwd=tmp_path,
                              env={**os.environ, "PYTHONPATH": str(ROOT), **env})
        assert done.returncode == 0, done.stderr
        job = json.loads(run("job", done.stdout.splitlines()[0], env=env).stdout)
        return json.loads(job["payload"]) if isinstance(job["payload"], str) else job["payload"]

    assert submitted("simulation", "--payload", "@payload.json", "--requirements",
                     "@requirements.json") == {"steps": 2, "note": "from a file"}
    assert submitted("simulation", "--payload", "@-", stdin='{"steps": 1}') == {"steps": 1}
    assert submitted("comfyui", "--workflow-file", "workflow_api.json",
                     "--payload", '{"seed_offset": 1}') == {"seed_offset": 1,
                                                             "workflow": workflow}

    before = sorted(client.keys("*"))
    for args, message in [
        (("--payload", "@missing.json"), "--payload: cannot read missing.json: No such file"),
        (("--payload", "@"), "--payload: @ names no file"),
        (("--requirements", "@broken.json"), "--requirements: not valid JSON in broken.json"),
        (("--workflow-file", "ui.json"), "--workflow-file: workflow is not in API format"),
        (("--workflow-file", "list.json"), "--workflow-file: list.json holds no ComfyUI workflow"),
        (("--workflow-file", "workflow_api.json", "--payload", '{"prompt": {}}'),
         "name two workflows"),
        # Before: taken, the last kept (10,000 steps), where the REST API refuses it.
        (("--payload", '{"steps": 1, "steps": 10000}'),
         '--payload: not valid JSON: name "steps" appears twice in one object'),
        (("--requirements", "@twice.json"), '--requirements: not valid JSON in twice.json: '
                                            'name "gpu_memory_gb" appears twice in one object'),
    ]:
        refused = subprocess.run([*EMP, "submit", "comfyui", *args, "--no-wait"],
                                 capture_output=True, text=True, timeout=120, cwd=tmp_path,
                                 env={**os.environ, "PYTHONPATH": str(ROOT), **env})
        assert refused.returncode == 2 and message in " ".join(refused.stderr.split()), (
            args, refused.stderr)
    assert sorted(client.keys("*")) == before


@pytest.mark.parametrize(("args", "option"), [
    (("submit", "simulation", "--timeout", "0"), "--timeout"),
    (("submit", "simulation", "--timeout", "-1"), "--timeout"),
    (("submit", "simulation", "--timeout", "nan"), "--timeout"),
    (("up", "--workers", "-1"), "--workers"),
    (("up", "--api-port", "70000"), "--api-port"),
    (("up", "--webhook-port", "-1"), "--webhook-port"),
    (("up", "--monitor-port", "65536"), "--monitor-port"),
    (("up", "--machine", "1", "--health-port", "70000"), "--health-port"),
    (("simulate", "--quick", "--scale", "nan"), "--scale"),
])
def test_a_bad_number_on_the_command_line_is_refused_before_anything_starts(
        redis_server, client, tmp_path, args: tuple[str, ...], option: str) -> None:
    """Tried each of these, as a typo would give them. Before: `emp submit --timeout 0`
    (or -1, or nan) filed the job and said "timeout" at once; `emp up` started with
    "-1 workers"; a port above 65535 was a traceback from bind() after Redis had started;
    `emp simulate --scale nan` ran on. Now each stops with click's usage error naming the
    option, and nothing is filed, started or written."""
    before = sorted(client.keys("*"))
    where = {"submit": [], "up": ["--data-dir", str(tmp_path / "up")],
             "simulate": ["--out", str(tmp_path / "sim")]}[args[0]]
    env = {"EMP_REDIS_URL": redis_server.url if args[0] == "submit" else ""}
    done = run(*args, *where, env=env, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"Invalid value for '{option}'" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(client.keys("*")) == before
    assert not (tmp_path / "up").exists() and not (tmp_path / "sim").exists()


def test_submit_without_a_live_worker_notes_it_while_it_waits(redis_server, client) -> None:
    """Tried: `emp submit echo` with no worker running (a first hour without `emp up`).
    Before, a bar at 0% for up to --timeout and no word why; now a note on stderr says no
    live worker serves the pool yet, and the job stays filed."""
    done = run("submit", "echo", "--timeout", "1", env={"EMP_REDIS_URL": redis_server.url})
    assert done.returncode == 1
    assert "note: no live worker serves pool default yet; the job waits for one" in (
        done.stderr), done.stderr
    job_id = done.stdout.splitlines()[0]
    assert json.loads(done.stdout.splitlines()[-1]) == {"job_id": job_id, "status": "timeout"}
    shown = run("job", job_id, env={"EMP_REDIS_URL": redis_server.url})
    assert json.loads(shown.stdout)["status"] == "pending"


def test_submit_that_no_live_worker_can_serve_says_why_while_it_waits(
        redis_server, client, start_worker) -> None:
    """Tried: `emp submit simulation` with a live worker serving simulation, asking
    ``{"hardware": {"gpu_mem": 16}}`` (a typo of gpu_memory_gb: a custom capability no
    worker has). Before: a bar at "pending 0%" until --timeout, not a word. Now, once it
    has waited, a note says no live worker can serve it, what it needs and what each live
    worker has (the monitor's words); a job the worker takes gets no such note."""
    start_worker("cli-typo", WORKER_SERVICES="simulation")
    env = {"EMP_REDIS_URL": redis_server.url}
    done = run("submit", "simulation", "--requirements", '{"hardware": {"gpu_mem": 16}}',
               "--timeout", "4", env=env)
    assert done.returncode == 1 and '"status": "timeout"' in done.stdout, done.stderr
    assert ("note: No live worker can serve this job: it needs simulation with "
            "hardware.gpu_mem >= 16. Live workers in pool default: cli-typo (no "
            "hardware.gpu_mem). It waits until such a worker joins or it is cancelled."
            ) in " ".join(done.stderr.split()), done.stderr
    served = run("submit", "simulation", "--payload", '{"duration": 3}', "--timeout", "30",
                 env=env)
    assert served.returncode == 0, served.stderr
    assert "note:" not in served.stderr, served.stderr


def test_ctrl_c_while_submit_waits_says_the_job_stays_filed(redis_server, client) -> None:
    """Tried: `emp submit echo` with no worker, then Ctrl-C (SIGINT to its process group,
    as a terminal sends it) while it waits. Before: click's bare "Aborted!", exit 1, not
    a word on the job. Now it says the job stays filed and how to follow or cancel it,
    and exits 130 (interrupted); the job is still pending."""
    waiting = subprocess.Popen(
        [*EMP, "submit", "echo"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "EMP_REDIS_URL": redis_server.url},
        start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        job_id = waiting.stdout.readline().strip()  # printed before it waits
        assert client.hget(Keys("default").job(job_id), "status") == "pending"
        time.sleep(1)
        os.killpg(waiting.pid, signal.SIGINT)
        _, stderr = waiting.communicate(timeout=30)
    finally:
        if waiting.poll() is None:
            os.killpg(waiting.pid, signal.SIGKILL)
    assert waiting.returncode == 130, stderr
    assert stderr.strip().endswith(
        f"stopped waiting; job {job_id} stays filed (emp job {job_id} shows it, "
        f"emp cancel {job_id} cancels it)"), stderr
    assert "Aborted" not in stderr and "Traceback" not in stderr, stderr
    assert client.hget(Keys("default").job(job_id), "status") == "pending"


def test_submit_to_a_pool_no_live_worker_serves_says_so(redis_server, client, start_worker,
                                                         tmp_path: Path) -> None:
    """Tried: `emp submit --pool standrd` (a typo) with EMP_POOLS_FILE naming fast and
    standard and a worker serving standard. Before, the job was filed in a new pool
    nobody serves, the command printed its id and nothing else, and a waiting submit
    sat at "pending 0%" until its timeout. Now it says on stderr that no live worker
    serves standrd and the pools file does not name it; a submit to a pool a live worker
    serves says nothing of the kind."""
    pools = tmp_path / "pools.toml"
    pools.write_text((ROOT / "conf" / "pools.toml").read_text())
    start_worker("cli-standard", wait=False, WORKER_POOLS="standard").wait_ready("standard")
    env = {"EMP_REDIS_URL": redis_server.url, "EMP_POOLS_FILE": str(pools)}
    typo = run("submit", "simulation", "--pool", "standrd", "--no-wait", env=env)
    assert typo.returncode == 0, typo.stderr
    assert client.hget(Keys("standrd").job(typo.stdout.strip()), "status") == "pending"
    assert ("warning: no live worker serves pool standrd, and the pools file "
            f"{pools} does not name it (it has fast, standard, heavy)") in typo.stderr
    served = run("submit", "simulation", "--pool", "standard", "--no-wait", env=env)
    assert served.returncode == 0 and "warning" not in served.stderr, served.stderr


def test_submit_warns_by_the_rules_of_post_api_jobs(redis_server, client,
                                                   tmp_path: Path) -> None:
    """Tried, with no worker running: `emp submit --pool heavy` (a pool the pools file
    names) and `emp submit` naming no pool (routing off: the default pool). Before, both
    warned that no live worker serves the pool, where POST /api/jobs says nothing of
    either (a pool of the file has a scaler asking machines for its jobs; a job naming
    no pool was not sent anywhere by mistake). Now the command follows the same rules
    (``pool_view.unserved_warnings``): no warning for either, and a pool named in
    requirements.pool is warned of like --pool."""
    pools = tmp_path / "pools.toml"
    pools.write_text((ROOT / "conf" / "pools.toml").read_text())
    routed = {"EMP_REDIS_URL": redis_server.url, "EMP_POOLS_FILE": str(pools)}
    of_the_file = run("submit", "simulation", "--pool", "heavy", "--no-wait", env=routed)
    assert of_the_file.returncode == 0 and "warning" not in of_the_file.stderr, \
        of_the_file.stderr
    unnamed = run("submit", "simulation", "--no-wait", env={"EMP_REDIS_URL": redis_server.url})
    assert unnamed.returncode == 0 and "warning" not in unnamed.stderr, unnamed.stderr
    in_requirements = run("submit", "simulation", "--requirements", '{"pool": "hevy"}',
                          "--no-wait", env=routed)
    assert in_requirements.returncode == 0, in_requirements.stderr
    assert "warning: no live worker serves pool hevy, and the pools file" in \
        in_requirements.stderr


class StopsRedisAfterSubmit(RedisProxy):
    """A proxy to ``server`` that stops it (SIGKILL) and stops accepting connections as
    the reply to the job's filing (``FCALL emp_enqueue``) passes: the job is filed, and
    every later call of the submitter finds no Redis, at once."""

    def __init__(self, server: LocalRedis) -> None:
        super().__init__(server.port)
        self.server = server

    def request(self, data: bytes, state: State) -> bytes:
        if b"$11\r\nemp_enqueue\r\n" in data:
            state["filing"] = True
        return data

    def reply(self, data: bytes, state: State) -> bytes | None:
        if state.pop("filing", False):  # the client has no reply yet: none connects meanwhile
            self.close()
            self.server.stop(kill=True)
        return data


@pytest.mark.parametrize("wait", [False, True])
def test_a_redis_lost_right_after_the_filing_prints_the_id_and_no_traceback(
        tmp_path: Path, wait: bool) -> None:
    """Tried: `emp submit simulation --pool nosuch [--no-wait]` against a Redis killed
    as the reply to the job's filing came back. Before, the command printed the job's
    id, then a redis ConnectionError traceback from its look-up of the pool's live
    workers, and exited 1. Now the id, then one line: with --no-wait a note that the job
    is filed (exit 0); waiting, after the progress bar's line, that it is filed and how to
    follow it (exit 1)."""
    server = LocalRedis(tmp_path / "redis", appendonly=False).start()
    try:
        ensure_library(redis.Redis(port=server.port))
        proxy = StopsRedisAfterSubmit(server)
        done = run("submit", "simulation", "--pool", "nosuch",
                   *([] if wait else ["--no-wait"]), env={"EMP_REDIS_URL": proxy.url},
                   timeout=90)
    finally:
        server.stop(kill=True)
    assert server.process is None, "the proxy stopped the server"
    assert "Traceback" not in done.stderr, done.stderr
    job_id = done.stdout.strip()
    assert len(done.stdout.split()) == 1, done.stdout  # the job's id, alone
    lines = done.stderr.strip().splitlines()
    if wait:  # the progress bar's line, then the error
        assert done.returncode == 1
        assert lines[-1].startswith(f"Error: job {job_id} is filed, but Redis stopped "
                                    "answering"), lines
        assert f"emp job {job_id}" in lines[-1] and len(lines) <= 2, lines
    else:
        assert done.returncode == 0, done.stderr
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"note: job {job_id} is filed; Redis stopped answering"), lines
        assert lines[0].endswith("so whether a live worker serves pool nosuch is not known")


# -- finding the Redis of `emp up`; no tracebacks for ordinary mistakes -------------------------


def without_redis_url(state_home: Path, **extra: str) -> dict[str, str]:
    """The environment of a new shell: no EMP_REDIS_URL/REDIS_URL, its own XDG state folder."""
    env = {k: v for k, v in os.environ.items() if k not in ("EMP_REDIS_URL", "REDIS_URL")}
    return {**env, "XDG_STATE_HOME": str(state_home), "PYTHONPATH": str(ROOT), **extra}


def read_until(process: subprocess.Popen[str], marker: str, timeout: float = 120) -> str:
    """``process``'s stdout up to the first line that contains ``marker``."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout],
                     daemon=True).start()
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if process.poll() is not None and lines.empty():
                pytest.fail(f"exited {process.returncode} before {marker!r}: {seen}")
            continue
        seen += line
        if marker in line:
            return seen
    pytest.fail(f"no {marker!r} within {timeout}s: {seen}")


@pytest.mark.system
def test_up_records_its_redis_so_commands_and_the_python_api_in_other_shells_find_it(
        tmp_path: Path) -> None:
    """`emp up` from a git checkout with EMP_REDIS_URL unset, then `emp submit`, `emp job` and
    `emp_tasks.submit()` in other processes without EMP_REDIS_URL: all reach that stack. The
    banner gives the export line; stopping it removes the record; `git status` stays clean."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    subprocess.run(["git", "init", "-q", str(checkout)], check=True)
    state_home = tmp_path / "state"
    env = without_redis_url(state_home, EMP_LEASE_SECONDS="5")
    up = subprocess.Popen([*EMP, "up", "--no-web", "--workers", "1"], cwd=checkout, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)
    try:
        banner = read_until(up, "export EMP_REDIS_URL=")
        url = banner.split("export EMP_REDIS_URL=")[1].split()[0]
        assert f"EMP is up: redis {url}" in banner
        record = state_home / "emp" / "stack.json"
        assert str(record) in banner and json.loads(record.read_text())["redis_url"] == url
        if "in use" not in banner:
            assert url == "redis://127.0.0.1:6390/0", "the stable default port, not 6379"

        done = run("submit", "echo", "--payload", '{"x": 1}', "--timeout", "60", env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        job_id = done.stdout.splitlines()[0]
        assert json.loads(done.stdout.splitlines()[-1])["status"] == "completed"
        shown = run("job", job_id, env=env)
        assert shown.returncode == 0 and json.loads(shown.stdout)["worker_id"] == "local-0"
        python = subprocess.run(
            [sys.executable, "-c", "from emp_tasks import submit, get_job\n"
             "r = submit('echo', {'y': 2}); r.get(timeout=60)\n"
             "print(get_job(r.id)['status'])"],
            capture_output=True, text=True, timeout=120, env=env)
        assert python.stdout.strip() == "completed", python.stderr[-2000:]
    finally:
        if up.poll() is None:
            os.kill(up.pid, signal.SIGTERM)  # SIGINT is ignored if pytest runs in background
        try:
            up.wait(timeout=60)
        finally:
            if up.poll() is None:
                os.killpg(up.pid, signal.SIGKILL)
    assert not (state_home / "emp" / "stack.json").exists(), "a clean exit removes the record"
    assert (state_home / "emp" / "up" / "redis").is_dir(), "data outside the work tree"
    status = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=checkout,
                            capture_output=True, text=True, check=True)
    assert status.stdout == "", "emp up leaves the checkout as it was"


@pytest.mark.system
def test_ctrl_c_of_emp_up_hands_running_jobs_back_before_its_redis_stops(
        tmp_path: Path) -> None:
    """Tried: ``emp up --no-web --workers 1``, a 60 s simulation job running on its worker,
    then Ctrl-C as a terminal sends it (SIGINT to the whole foreground process group),
    then the stack's Redis started again on its data to read the job.

    Before: the local Redis was in that group, so it stopped at once, while the worker
    was handing its running job back ("could not requeue ... Connection refused; its
    lease will expire"): the job stayed ``in_progress`` under a dead worker until its
    lease ran out. Now the Redis has its own session and ``emp up`` stops it last: the
    job is back in the queue (``pending``) when the stack has stopped."""
    data = tmp_path / "up"
    env = without_redis_url(tmp_path / "state", EMP_LEASE_SECONDS="120")
    up = subprocess.Popen(  # SIGINT as in a terminal (a background shell ignores it)
        [*EMP, "up", "--no-web", "--workers", "1", "--data-dir", str(data)], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        banner = read_until(up, "export EMP_REDIS_URL=")
        url = banner.split("export EMP_REDIS_URL=")[1].split()[0]
        done = run("submit", "simulation", "--payload", '{"duration": 60}', "--no-wait",
                   env={**env, "EMP_REDIS_URL": url})
        assert done.returncode == 0, done.stderr
        job_id = done.stdout.split()[-1]
        record = Keys("default").job(job_id)
        stack_redis = redis.Redis.from_url(url, decode_responses=True)
        wait_for(lambda: stack_redis.hget(record, "status") == "in_progress", timeout=60,
                 message="the job to run")
        os.killpg(up.pid, signal.SIGINT)
        assert up.wait(timeout=90) == 0
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
    logs = (data / "worker-0.log").read_text(errors="replace")
    assert "could not requeue" not in logs, logs[-3000:]
    again = LocalRedis(data / "redis").start()  # its append-only file, as the next emp up
    try:
        reread = redis.Redis(port=again.port, decode_responses=True)
        assert reread.hget(record, "status") == "pending", reread.hgetall(record)
    finally:
        again.stop()


def _start_up(data: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """``emp up --no-web --workers 1`` on ``data``, in its own process group; with its
    Redis URL once it is up."""
    up = subprocess.Popen([*EMP, "up", "--no-web", "--workers", "1", "--data-dir", str(data)],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, start_new_session=True)
    banner = read_until(up, "Ctrl-C to stop")
    return up, banner.split("export EMP_REDIS_URL=")[1].split()[0]


def _stack_processes(url: str) -> dict[int, str]:
    """Live processes of the stack on ``url`` (pid -> command line), found without emp up's
    help: its Redis by the address in its title, the rest by EMP_REDIS_URL in their
    environment."""
    address = url.removeprefix("redis://").split("/")[0]
    found = {}
    for folder in Path("/proc").iterdir():
        try:
            line = (folder / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            environ = (folder / "environ").read_bytes().split(b"\0")
        except OSError:  # not a process, or gone meanwhile
            continue
        if line and (("redis-server" in line or "valkey-server" in line) and address in line
                     or f"EMP_REDIS_URL={url}".encode() in environ):
            found[int(folder.name)] = line
    return found


@pytest.mark.system
def test_a_closed_terminal_stops_emp_up_and_everything_it_started(tmp_path: Path) -> None:
    """Tried: ``emp up --no-web --workers 1``, then SIGHUP to its process group, as a
    terminal that is closed sends it. Before: emp up died at once (SIGHUP's default) and
    its Redis and worker ran on, orphaned, holding port 6390 and the data folder. Now it
    stops its stack as Ctrl-C does and exits 0; nothing it started runs on."""
    data = tmp_path / "up"
    up, url = _start_up(data, without_redis_url(tmp_path / "state"))
    try:
        started = _stack_processes(url)
        assert len(started) >= 3, started  # Redis, the worker and its pool process
        os.killpg(up.pid, signal.SIGHUP)
        assert up.wait(timeout=90) == 0
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
    try:
        wait_for(lambda: not _stack_processes(url), timeout=30,
                 message="every process emp up started to stop")
    finally:
        for pid in _stack_processes(url):
            os.kill(pid, signal.SIGKILL)
    assert not (data / "emp-up-pids.json").exists()


@pytest.mark.system
def test_emp_up_refuses_a_data_folder_an_earlier_one_left_running(tmp_path: Path) -> None:
    """Tried: ``emp up --no-web --workers 1`` killed (SIGKILL: no chance to stop its
    stack), then ``emp up`` again on the same data folder. Before: port 6390 was taken by
    the orphaned Redis, so the second one started another Redis on a free port over the
    same append-only files, beside the orphaned worker. Now it refuses in one line naming
    what still runs and how to stop it, and starts nothing; once those are stopped, the
    same command starts."""
    data = tmp_path / "up"
    env = without_redis_url(tmp_path / "state")
    first, url = _start_up(data, env)
    try:
        first.kill()  # emp up alone, as the OOM killer would
        first.wait(timeout=30)
        left = _stack_processes(url)
        again = run("up", "--no-web", "--workers", "1", "--data-dir", str(data), env=env,
                    timeout=30)  # a refusal is at once; a start took ~5 s, then ran on
        assert again.returncode == 1, again.stdout + again.stderr
        assert again.stdout == "" and len(again.stderr.strip().splitlines()) == 1
        assert again.stderr.startswith(f"Error: {data} is in use by an earlier emp up, still "
                                       "running or left running: redis (pid "), again.stderr
        named = [int(pid) for pid in re.findall(r"\(pid (\d+)\)", again.stderr)]
        assert len(named) == 2 and set(named) <= set(left), (named, left)  # Redis, worker
        assert f"Stop them (`kill {named[0]} {named[1]}`;" in again.stderr
        assert _stack_processes(url) == left, "nothing was started"
        for pid in named:
            os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not _stack_processes(url), timeout=30, message="the orphans to stop")
        second, _ = _start_up(data, env)
        second.terminate()
        assert second.wait(timeout=90) == 0
    finally:
        for pid in _stack_processes(url):
            os.kill(pid, signal.SIGKILL)


def test_emp_up_on_a_damaged_append_only_file_says_why_and_how_to_repair_it(
        tmp_path: Path) -> None:
    """Tried: ``emp up`` on a data folder whose append-only base file is damaged (not an
    RDB file), as a disk fault leaves it. Before: "redis server on port 6390 did not start;
    see .../server.log", the reason only in that file. Now the error line says it, with
    the repair command's manifest path, and nothing else is started."""
    data = tmp_path / "up"
    aof = data / "redis" / "appendonlydir"
    aof.mkdir(parents=True)
    (aof / "appendonly.aof.manifest").write_text(
        "file appendonly.aof.1.base.rdb seq 1 type b\n"
        "file appendonly.aof.1.incr.aof seq 1 type i\n")
    (aof / "appendonly.aof.1.base.rdb").write_text("garbage")
    (aof / "appendonly.aof.1.incr.aof").write_text("")
    done = run("up", "--no-web", "--workers", "1", "--data-dir", str(data),
               env=without_redis_url(tmp_path / "state"), timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "did not start: Bad file format reading the append only file" in done.stderr
    assert f"--fix <filename.manifest> (here: {aof / 'appendonly.aof.manifest'}); see " \
        f"{data / 'redis' / 'server.log'}" in done.stderr, done.stderr
    assert sorted(path.name for path in data.iterdir()) == ["redis"], "no worker started"


def test_a_stale_record_of_a_killed_emp_up_is_not_used(redis_server, client, app,
                                                        tmp_path: Path) -> None:
    """A state file left by a killed `emp up` (its pid is gone) names a Redis that holds a job:
    `emp job` in a new shell does not read that Redis and says why on stderr."""
    from emp_tasks.producer import submit

    job_id = submit("echo", {"x": 1}, app=app).id
    gone = subprocess.Popen(["true"])
    gone.wait()
    state_home = tmp_path / "state"
    record = state_home / "emp" / "stack.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"pid": gone.pid, "redis_url": redis_server.url,
                                  "services": {}, "data_dir": str(tmp_path)}))
    shown = run("job", job_id, env=without_redis_url(state_home))
    assert shown.returncode != 0 and job_id not in shown.stdout
    assert str(record) in shown.stderr and f"pid {gone.pid}" in shown.stderr
    assert "not running" in shown.stderr and "Traceback" not in shown.stderr


@pytest.mark.parametrize("args", [["submit", "echo", "--payload", '{"x": 1}'], ["demo"],
                                  ["job", "some-job"], ["cancel", "some-job"]])
def test_without_a_reachable_redis_commands_fail_fast_in_one_line(args: list[str]) -> None:
    """`emp submit/demo/job/cancel` against a port where nothing listens: one line on stderr
    naming the URL and the fix, exit code not 0, no traceback, without waiting on Redis
    (the bound is loose: a command's start alone took 4.6 s on a loaded 2-core machine)."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    done = run(*args, env={"EMP_REDIS_URL": url}, timeout=60)
    elapsed = time.monotonic() - started
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and url in lines[0] and "EMP_REDIS_URL" in lines[0], done.stderr
    assert elapsed < 20, f"took {elapsed:.1f}s"


def test_without_emp_up_or_a_url_commands_name_the_default_and_emp_up(tmp_path: Path) -> None:
    """No EMP_REDIS_URL, no `emp up` record, nothing on the default port: `emp job` says it
    tried redis://127.0.0.1:6390/0 and suggests `emp up`; it never asks port 6379."""
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 6390)) == 0:
            pytest.skip("something (another emp up?) listens on 6390 on this machine")
    done = run("job", "some-job", env=without_redis_url(tmp_path / "state"), timeout=60)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "redis://127.0.0.1:6390/0" in done.stderr and "emp up" in done.stderr
    assert "6379" not in done.stderr


def test_cancel_of_a_finished_job_says_so_and_fails(redis_server, client, app,
                                                    start_worker) -> None:
    """`emp cancel` of a completed job: exit 1 and 'already completed', as the API's 409."""
    from emp_tasks.producer import submit

    start_worker("cancel-worker")
    result = submit("echo", {"x": 1}, app=app)
    result.get(timeout=60)
    done = run("cancel", result.id, env={"EMP_REDIS_URL": redis_server.url})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"job {result.id!r} is already completed" in done.stderr
    assert client.hget(Keys("default").job(result.id), "status") == "completed"


def test_emp_celery_config_is_imported_from_the_working_directory_as_celery_does(
        redis_server, tmp_path: Path) -> None:
    """Tried: ``EMP_CELERY_CONFIG=conf.celeryconfig`` (the README's example) from a
    checkout. The ``emp`` script does not put the working directory on ``sys.path``, so
    every command died with a ModuleNotFoundError traceback; a name that does not
    exist must still fail, in one line naming the variable."""
    (tmp_path / "myconf").mkdir()
    (tmp_path / "myconf" / "celeryconfig.py").write_text("task_soft_time_limit = 33\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EMP_REDIS_URL": redis_server.url}

    def emp_job(config: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*EMP, "job", "no-such-job"], capture_output=True, text=True,
                              timeout=60, cwd=tmp_path, env={**env, "EMP_CELERY_CONFIG": config})

    found = emp_job("myconf.celeryconfig")
    assert found.returncode == 1 and "job 'no-such-job' not found" in found.stderr, found.stderr
    missing = emp_job("nope.celeryconfig")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "EMP_CELERY_CONFIG='nope.celeryconfig' cannot be imported" in missing.stderr


def test_version_names_emp_and_what_it_runs_on() -> None:
    """Tried: ``emp --version``, as ``celery --version`` is tried first in a bug report.
    Before: "No such option: --version", exit 2. Now one line: emp's version and Celery's,
    kombu's, redis-py's and Python's, as installed; exit 0, no Redis needed."""
    from importlib.metadata import version

    done = run("--version", env={"EMP_REDIS_URL": "redis://127.0.0.1:1/0"}, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (f"emp {version('emp-job-queue')} (celery {version('celery')}, "
                           f"kombu {version('kombu')}, redis-py {version('redis')}, "
                           f"Python {sys.version.split()[0]})\n")


@pytest.mark.parametrize(("url", "words"), [
    ("redis://127.0.0.1:6390/abc", "the database (the URL's path) must be a number such as "
                                   "/0, got '/abc'"),
    ("redis://127.0.0.1:6390/1/2", "the database (the URL's path) must be a number such as "
                                   "/0, got '/1/2'"),
    ("redis://:s3cret@127.0.0.1:99999/0", "port: Port out of range 0-65535"),
])
def test_a_redis_url_that_does_not_parse_is_one_line_for_every_command(
        url: str, words: str, tmp_path: Path) -> None:
    """Tried: EMP_REDIS_URL with a database that is no number ("/abc", or "/1/2", which
    redis-py reads as database 12), or a port past 65535, for each command. Before, redis-py
    took "/abc" as database 0 where kombu refused it: `emp api` started and answered every
    submit with a 500, the webhook service ran on database 0, `emp worker`, `emp submit`
    and `emp job` ended in tracebacks (the port one too: even the URL shown in the error
    raised), and `emp up` said only that its API exited. Now each command exits 1 at once
    with one line naming the setting, its password masked, and starts nothing."""
    from emp_tasks.locate import locate_redis

    shown = url.replace(":s3cret@", ":**@")
    commands = [["job", "x"], ["submit", "echo", "--no-wait"], ["worker"], ["api"],
                ["webhooks"], ["monitor"], ["up", "--data-dir", str(tmp_path / "up")]]
    for args in commands if url.endswith("/abc") else commands[:1]:  # one path for all
        done = run(*args, env={"EMP_REDIS_URL": url}, timeout=60)
        assert done.returncode == 1, (args, done.stderr[-2000:])
        assert done.stderr.startswith(f"Error: {shown} (EMP_REDIS_URL) is not a Redis URL: "
                                      f"{words}"), (args, done.stderr[-2000:])
        assert len(done.stderr.strip().splitlines()) == 1, (args, done.stderr[-2000:])
    assert not (tmp_path / "up").exists()
    for good in ("redis://127.0.0.1:6390", "redis://127.0.0.1:6390/", "redis://h:1/15",
                 "rediss://:pw@h:6380/0?ssl_cert_reqs=none", "unix:///tmp/redis.sock?db=1"):
        assert locate_redis(good).url == good


def test_a_redis_that_refuses_the_login_is_named_as_such_with_the_fix(tmp_path: Path) -> None:
    """Tried: a Redis with a password (``requirepass``), and EMP_REDIS_URL with a wrong
    password, with none, and with an ACL user it does not know, for ``emp job``, ``emp
    submit`` and ``emp worker``. Before, the commands said "no Redis answers at ...: invalid
    username-password pair" (or redis-py's "HELLO must be called with the client already
    authenticated") and told the user to start that Redis, which was running. Now they
    say it refused the login and how to put the password in the URL; nothing is written."""
    server = LocalRedis(tmp_path / "redis", appendonly=False).start()
    try:
        admin = redis.Redis(port=server.port, decode_responses=True)
        admin.config_set("requirepass", "s3cret")
        admin = redis.Redis(port=server.port, password="s3cret", decode_responses=True)
        base = f"127.0.0.1:{server.port}/0"
        fix = "Fix: put its password in the URL, redis://:PASSWORD@host:port/0"
        for url, shown, reason in [
                (f"redis://:wrong@{base}", f"redis://:**@{base}",
                 "invalid username-password pair or user is disabled"),
                (f"redis://{base}", f"redis://{base}",
                 "it needs a password, and the URL gives none"),
                (f"redis://bob:s3cret@{base}", f"redis://bob:**@{base}",
                 "invalid username-password pair or user is disabled")]:
            for args in (["job", "x"], ["submit", "echo", "--no-wait"]):
                done = run(*args, env={"EMP_REDIS_URL": url}, timeout=60)
                assert done.returncode == 1, (args, done.stderr[-2000:])
                assert done.stderr.strip() == (
                    f"Error: Redis at {shown} (EMP_REDIS_URL) refused the login: {reason}. "
                    f"{fix} (or redis://USER:PASSWORD@... for an ACL user)."), done.stderr
        worker = run("worker", env={"EMP_REDIS_URL": f"redis://:wrong@{base}"}, timeout=60)
        assert worker.returncode == 1 and "Traceback" not in worker.stderr, worker.stderr
        assert f"Redis at redis://:**@{base} refused the login" in worker.stderr, worker.stderr
        assert admin.dbsize() == 0
    finally:
        server.stop()
