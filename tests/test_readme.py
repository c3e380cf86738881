"""The README's code blocks, run as a reader would run them, against a running system.

Every fenced block of README.md runs unless an HTML comment right before it says why not:
``<!-- not-run: reason -->``, or ``<!-- ci: ... -->`` for the blocks ``.ci/run`` runs
itself. The system is the one ``emp up`` starts, on test ports: a Redis of this module,
``emp up``'s two local workers (same profiles), the API server with the token the examples
use (``EMP_API_TOKENS=tok-acme=acme``) and the webhook service, allowed to call a local
receiver that stands in for the documented ``https://hooks.example.com`` (not resolvable here).

What a block sees: ``EMP_REDIS_URL`` points at the test Redis; the documented addresses
``localhost:3331`` (API) and ``localhost:3332`` (webhooks) are replaced by the test ports,
``https://hooks.example.com`` by the receiver's address;
in shell blocks, ``<job_id>``/``<job-id>`` become the last job id a command printed and
``<id>`` the last webhook id; a ``emp worker`` line runs in the background until the block
ends. Python blocks run in a fresh interpreter and must exit on their own; one that submits
a job must leave it in the system's Redis (not in a broker of Celery's defaults).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from capability_router.functions import ensure_library
from capability_router.keys import Keys, idle_workers
from conftest import ROOT, Receiver, ServerProcess, WorkerProcess
from emp_tasks.local_redis import LocalRedis
from emp_tasks.stack import LOCAL_WORKERS

README = ROOT / "README.md"
#: How long one command or one Python block may take, seconds.
BLOCK_TIMEOUT = 120
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w-]*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*(?P<kind>not-run|ci):\s*(?P<reason>.+?)\s*-->\s*$")
#: Commands that run until stopped: started in the background for the rest of their block.
LONG_RUNNING = ("emp worker",)

#: Each block runs against a system ``emp up`` starts: not in the fast selection.
pytestmark = pytest.mark.system


#: Names of that form the code reads that are no setting (a Flask config key).
NOT_SETTINGS = {"EMP_SETTINGS"}


def test_every_setting_the_code_reads_is_in_the_conf_examples() -> None:
    """Tried: every ``EMP_*``/``WORKER_*``/``COMFYUI_*``/``FLUENT*``/``MACHINE_*`` name in a
    string of the code. The README says the example files list them all; 36 were missing."""
    pattern = re.compile(r"""["']((?:EMP|WORKER|COMFYUI|FLUENTD?|MACHINE)_[A-Z0-9_]+)["']""")
    read = {name for package in ("capability_router", "emp_tasks", "webapp", "machine")
            for path in (ROOT / package).rglob("*.py")
            for name in pattern.findall(path.read_text())}
    listed = (ROOT / "conf" / "emp.env.example").read_text() + (
        ROOT / "conf" / "connectors.env.example").read_text()
    missing = sorted(name for name in read - NOT_SETTINGS if name not in listed)
    assert not missing, f"settings missing from conf/*.env.example: {missing}"


@dataclass
class Block:
    line: int  #: 1-based line of the opening fence
    lang: str
    code: str
    marker: str | None  #: the not-run / ci comment before it, if any

    @property
    def id(self) -> str:
        return f"README.md:{self.line}-{self.lang}"


def readme_blocks(text: str) -> list[Block]:
    """The fenced code blocks of a Markdown text, with the marker comment before each."""
    lines, blocks, index = text.splitlines(), [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent, start = opening["indent"], index
        index += 1
        body: list[str] = []
        while lines[index].strip() != "```":
            body.append(lines[index][len(indent):] if lines[index].startswith(indent)
                        else lines[index])
            index += 1
        before = next((line for line in reversed(lines[:start]) if line.strip()), "")
        marker = MARKER.match(before)
        blocks.append(Block(start + 1, opening["lang"], "\n".join(body) + "\n",
                            marker.group(0).strip() if marker else None))
        index += 1
    return blocks


BLOCKS = readme_blocks(README.read_text())
RUN = [block for block in BLOCKS if block.marker is None]


def test_every_block_is_run_or_says_why() -> None:
    """Tried: every block of the README; each is Python or shell, or carries a marker."""
    assert len(BLOCKS) >= 10 and RUN
    strange = [b.id for b in RUN if b.lang not in ("python", "sh")]
    assert not strange, f"blocks this test cannot run: {strange}; mark them <!-- not-run: why -->"


def test_the_block_parser_reads_markers_and_indented_blocks() -> None:
    """Tried: a marked block, an unmarked one, and one indented in a list item."""
    text = ("<!-- not-run: needs a GPU -->\n```sh\nemp x\n```\n\ntext\n\n```python\nprint(1)\n"
            "```\n\n- item:\n\n  ```python\n  if True:\n      pass\n  ```\n")
    marked, plain, indented = readme_blocks(text)
    assert (marked.marker, marked.code) == ("<!-- not-run: needs a GPU -->", "emp x\n")
    assert (plain.marker, plain.line, plain.code) == (None, 8, "print(1)\n")
    assert indented.code == "if True:\n    pass\n"


def test_ci_runs_the_readme_test_command_exactly() -> None:
    """Tried: .ci/run's own reading of the README: the block marked for CI, set-up included."""
    marked = [b for b in BLOCKS if b.marker and b.marker.startswith("<!-- ci: test command")]
    assert len(marked) == 1, "one README block must be marked <!-- ci: test command -->"
    done = subprocess.run(["bash", str(ROOT / ".ci" / "run"), "--print-test-command"],
                          capture_output=True, text=True, timeout=30, check=True)
    assert done.stdout == marked[0].code
    assert marked[0].code.strip().endswith("pip install -e '.[dev]' && pytest")


@dataclass
class Stack:
    redis_url: str
    api: ServerProcess
    webhooks: ServerProcess
    receiver: Receiver
    logs: Path

    def env(self) -> dict[str, str]:
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        return {**os.environ, "EMP_REDIS_URL": self.redis_url, "PYTHONPATH": str(ROOT),
                "PATH": path}

    def jobs(self) -> int:
        """How many job records the system's Redis holds."""
        client = redis.Redis.from_url(self.redis_url)
        try:
            return sum(1 for _ in client.scan_iter(match=Keys("default").job("*"), _type="HASH"))
        finally:
            client.close()

    def localize(self, code: str) -> str:
        """The documented addresses replaced by this stack's."""
        return (code.replace("localhost:3331", f"127.0.0.1:{self.api.port}")
                .replace("localhost:3332", f"127.0.0.1:{self.webhooks.port}")
                .replace("https://hooks.example.com", self.receiver.url))


@pytest.fixture(scope="module")
def stack(redis_server: LocalRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """What ``emp up`` runs (its two local workers, API, webhooks), on this module's Redis."""
    logs = tmp_path_factory.mktemp("readme-stack")
    client = redis.Redis(port=redis_server.port, decode_responses=True)
    client.flushall()
    ensure_library(client)
    client.close()
    workers = [WorkerProcess(redis_server.url, logs, f"local-{index}",
                             {**profile, "WORKER_SERVICES": "simulation,echo"}, [])
               for index, profile in enumerate(LOCAL_WORKERS)]
    servers = [ServerProcess("api", redis_server.url, logs, {"EMP_API_TOKENS": "tok-acme=acme"}),
               ServerProcess("webhooks", redis_server.url, logs,
                             {"EMP_WEBHOOK_ALLOW_PRIVATE": "1"})]
    receiver = Receiver().start()
    try:
        for process in [*workers, *servers]:
            process.wait_ready() if isinstance(process, WorkerProcess) else process.start()
        yield Stack(redis_server.url, servers[0], servers[1], receiver, logs)
    finally:
        receiver.close()
        for server in servers:
            server.stop()
        for worker in workers:
            worker.kill()


def shell_commands(code: str) -> list[str]:
    """A shell block's commands: continued (``\\``) and multi-line quoted lines joined."""
    commands, pending = [], ""
    for line in code.splitlines():
        pending = f"{pending}\n{line}" if pending else line
        if not pending.strip() or pending.lstrip().startswith("#"):
            pending = ""
            continue
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # an open quote or a trailing backslash: the command goes on
            continue
        commands.append(pending)
        pending = ""
    assert not pending, f"unfinished command: {pending}"
    return commands


class ShellSession:
    """Runs a shell block's commands one by one, carrying the ids they print."""

    def __init__(self, stack: Stack, cwd: Path) -> None:
        self.stack, self.cwd = stack, cwd
        self.env = {**stack.env(), "WORKER_ID": "readme-worker"}
        self.ids: dict[str, str] = {}
        self.background: list[subprocess.Popen[bytes]] = []

    def substitute(self, command: str) -> str:
        command = self.stack.localize(command)
        for placeholder in re.findall(r"<[a-z_-]+>", command):
            name = "job" if placeholder in ("<job_id>", "<job-id>") else placeholder.strip("<>")
            assert name in self.ids, f"{placeholder} before any command printed one: {command}"
            command = command.replace(placeholder, self.ids[name])
        return command

    def remember_ids(self, output: str) -> None:
        try:
            reply = json.loads(output)
        except ValueError:
            reply = None
        if isinstance(reply, dict):
            if isinstance(reply.get("job_id"), str):
                self.ids["job"] = reply["job_id"]
            data = reply.get("data")
            if isinstance(data, dict) and isinstance(data.get("id"), str):
                self.ids["id"] = data["id"]
        elif re.fullmatch(r"[0-9a-f-]{36}", output.strip()):  # emp submit --no-wait
            self.ids["job"] = output.strip()

    def run(self, command: str) -> str:
        command = self.substitute(command)
        if command.startswith(LONG_RUNNING):
            self.start_background(command)
            return ""
        try:
            done = subprocess.run(["bash", "-o", "pipefail", "-c", command], env=self.env,
                                  cwd=self.cwd, capture_output=True, text=True,
                                  timeout=BLOCK_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{command!r} did not finish within {BLOCK_TIMEOUT} s")
        assert done.returncode == 0, f"{command!r} exited {done.returncode}: " \
                                     f"{done.stdout[-2000:]} {done.stderr[-2000:]}"
        if command.startswith("curl"):  # curl -s exits 0 on a 4xx: read the answer
            reply = json.loads(done.stdout)
            assert reply.get("success") is not False, f"{command!r} answered {reply}"
        self.remember_ids(done.stdout)
        return done.stdout

    def start_background(self, command: str) -> None:
        with open(self.stack.logs / f"background-{len(self.background)}.log", "ab") as log:
            process = subprocess.Popen(["bash", "-c", f"exec {command}"], env=self.env,
                                       cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.background.append(process)
        client = redis.Redis.from_url(self.stack.redis_url, decode_responses=True)
        deadline = time.monotonic() + 60
        while "readme-worker" not in idle_workers(client.zrange(Keys("default").idle, 0, -1)):
            assert process.poll() is None, f"{command!r} exited {process.returncode}"
            assert time.monotonic() < deadline, f"{command!r} never asked for work"
            time.sleep(0.1)
        client.close()

    def close(self) -> None:
        for process in self.background:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=10)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("block", RUN, ids=[block.id for block in RUN])
def test_readme_block_runs_as_written(block: Block, stack: Stack, tmp_path: Path) -> None:
    """Tried: the block as the README shows it, against the running test system."""
    if block.lang == "python":
        jobs_before = stack.jobs()
        try:
            done = subprocess.run([sys.executable, "-c", stack.localize(block.code)],
                                  env=stack.env(), cwd=tmp_path, capture_output=True,
                                  text=True, timeout=BLOCK_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{block.id} did not exit within {BLOCK_TIMEOUT} s")
        assert done.returncode == 0, f"{block.id} exited {done.returncode}: " \
                                     f"{done.stdout[-2000:]} {done.stderr[-3000:]}"
        if re.search(r"submit\(|apply_async\(|/api/jobs", block.code):
            assert stack.jobs() > jobs_before, f"{block.id} submitted no job to the system"
        return
    session = ShellSession(stack, tmp_path)
    try:
        for command in shell_commands(block.code):
            session.run(command)
    finally:
        session.close()
