"""``comfyui``: run a job's workflow on a stock ComfyUI server over its own API.

Protocol (ComfyUI's, unchanged):

- ``GET /ws?clientId=<id>`` is opened first, so no message of the prompt is missed;
- ``POST /prompt {prompt, client_id, prompt_id}`` -> ``{prompt_id, number, node_errors}``
  (the id is chosen here: a POST that timed out may still queue the prompt, which
  is then found in ``/queue`` and stopped before the job fails);
  400 ``{error, node_errors}`` is a VALIDATION error, or MODEL when a loader's
  model is "not in list";
- socket messages ``execution_start``, ``execution_cached``, ``executing``
  (``node: null`` = done), ``progress {value, max, node}``, ``executed``,
  ``execution_success``, ``execution_error``, ``execution_interrupted``
  (binary preview frames are ignored);
- ``GET /history/<prompt_id>`` for outputs, also polled while the socket is
  quiet or after it dropped (a prompt in neither ``/history`` nor ``/queue`` was
  removed by another client or lost in a restart: the job fails at once);
  ``GET /view`` fetches each output file into the output store, previews
  (PreviewImage's ``type: temp`` files) too, marked ``preview: true``; text
  outputs (PreviewAny's ``{"text": [...]}``) are returned in ``output_text``,
  other kinds as they are in ``other_outputs``, logged (``comfyui_outputs``);
- ``GET /queue`` after queueing: while other clients' prompts run first, the
  job's progress says how many are ahead (and a timeout, that it never started);
- cancel: ``GET /queue``, then ``POST /interrupt {prompt_id}`` if the prompt is
  the one running, or ``POST /queue {delete}`` if it still waits. ComfyUI acts on
  an interrupt between nodes only, so a stopped job's ``process_job`` returns
  only once the prompt left ComfyUI (``executing {node: null}`` for it, or
  ``/queue`` without it), at most ``stop_wait_seconds`` later; past that the
  connector is unhealthy (``service_stuck`` logged) until the prompt ends, in
  every process of the machine (comfyui_stuck: the worker's claim gate asks
  its own instance), and the next job waits for it (up to ``busy_wait_seconds``)
  before queueing its own. The instance is not restarted: the worker cannot reach the supervisor
  of a local ComfyUI, and a remote one is not ours to restart;
- ``GET /system_stats`` is the health check (a ``cpu`` device, ComfyUI's
  ``--cpu``, reports system RAM as VRAM: counted as no GPU memory),
  ``GET /object_info/<loader>`` the model list;
- a loader that cannot load a model file it lists (corrupt, missing), or a
  model input ``/prompt`` finds "not in list" (the file was removed after the
  worker read its models at start), is a MODEL error naming the model in
  ``details["bad_models"]``; the connector stops
  reporting the model, and the error is retryable when the job's requirements
  name the model (the worker stops advertising it, so the retry goes to a
  worker whose copy is good; see emp_tasks.bad_models).

Job payload: ``workflow`` (API format; ``prompt`` is accepted too).

Settings (``make_connector("comfyui", {...})``; environment names in brackets):
``url`` [COMFYUI_URL, http://127.0.0.1:8188], ``username``/``password``
[COMFYUI_USERNAME/COMFYUI_PASSWORD], ``api_token`` [COMFYUI_API_TOKEN],
``verify_tls`` [COMFYUI_VERIFY_TLS, true], ``ca_bundle`` [COMFYUI_CA_BUNDLE],
``timeout_seconds`` [EMP_COMFYUI_TIMEOUT_SECONDS, 600: submit to done],
``startup_timeout_seconds`` [EMP_COMFYUI_STARTUP_TIMEOUT_SECONDS, 120: how long
``initialize`` waits for the server to answer; a first start importing custom nodes
is slow], ``stop_wait_seconds``
[EMP_COMFYUI_STOP_WAIT_SECONDS, 120: how long a stopped prompt may keep
running], ``output_store`` (an OutputStore; default from EMP_OUTPUT_STORE),
``gpu_memory_gb`` [EMP_COMFYUI_GPU_MEMORY_GB, the server's VRAM] and
``model_size_gb`` [EMP_COMFYUI_MODEL_SIZE_GB, 6.5] for the model residency the
worker reports (``comfyui_residency``: disk from ``/object_info``, the models
of the last prompts in the card's memory, least recently used out first).
"""

from __future__ import annotations

import json
import logging
import mimetypes
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
from simple_websocket import ConnectionClosed
from urllib3.exceptions import NewConnectionError

from emp_tasks.websocket_client import WebSocketClient
from machine.connectors.bad_models import ModelUnusableHere
from machine.connectors.base import (
    Connector,
    ConnectorError,
    ErrorType,
    Health,
    JobCancelledByService,
    JobInput,
    JobOutput,
    Progress,
    ProgressCallback,
    ServiceUnavailable,
)
from machine.connectors.comfyui_client import ComfyUIClient
from machine.connectors.comfyui_models import (
    MODEL_LOADERS,
    NOT_MODEL_FILES,
    combo_options,
    model_aliases,
)
from machine.connectors.comfyui_outputs import sort_outputs
from machine.connectors.comfyui_progress import ProgressTracker, ahead_text
from machine.connectors.comfyui_residency import ComfyUIResidency
from machine.connectors.comfyui_stuck import StuckPrompt
from machine.connectors.errors import MODEL_INPUTS, classify_error
from machine.outputs import OutputStore, output_store_from_env

DEFAULT_URL = "http://127.0.0.1:8188"
DEFAULT_TIMEOUT_SECONDS = 600.0
#: A real ComfyUI takes 10-25 s to answer after a restart on CPU, longer with custom nodes.
DEFAULT_STARTUP_TIMEOUT_SECONDS = 120.0
DEFAULT_STOP_WAIT_SECONDS = 120.0
#: An input no ComfyUI node declares, set on output nodes to make ComfyUI run them again.
RERUN_INPUT = "emp_rerun"
#: Socket messages that say ComfyUI is executing the prompt (``executing`` with a node).
PROMPT_RUNS = frozenset({"execution_start", "execution_cached", "executing", "progress",
                         "executed"})


@dataclass
class PromptRun:
    """One job's prompt on the server, shared with ``cancel_job`` on another thread."""

    job_id: str
    prompt_id: str | None = None
    #: The WebSocket the prompt's messages come on (replaced when it drops).
    socket: Any = None
    cancel: threading.Event = field(default_factory=threading.Event)
    #: When ComfyUI must have stopped the prompt by (monotonic; 0: no stop sent yet).
    stop_deadline: float = 0.0
    #: Removed from ComfyUI's queue before it ran: no message will come.
    dequeued: bool = False
    #: ComfyUI said the prompt ended (success, error or interrupt).
    ended: bool = False
    #: The prompt left ComfyUI's queue (``executing null`` for it, its history, /queue).
    off_queue: bool = False
    #: An interrupt or unqueue was sent already.
    stop_sent: bool = False
    #: ``POST /prompt`` failed after it was sent: ComfyUI may still queue ``prompt_id``.
    unconfirmed: bool = False
    #: ComfyUI began executing the prompt (until then it waits behind other prompts).
    started: bool = False
    last_report: tuple[float, str] | None = None


def api_workflow(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The payload's ComfyUI workflow (``workflow``, else ``prompt``) in API format;
    ConnectorError (validation) for none or another format (the UI's own save)."""
    workflow = payload.get("workflow", payload.get("prompt"))
    if not isinstance(workflow, dict) or not workflow:
        raise ConnectorError("payload needs 'workflow' (or 'prompt'): a ComfyUI workflow "
                             "in API format", ErrorType.VALIDATION)
    if not all(isinstance(node, dict) and "class_type" in node for node in workflow.values()):
        raise ConnectorError("workflow is not in API format (every node needs class_type; "
                             "export with 'Save (API Format)')", ErrorType.VALIDATION)
    return workflow


class ComfyUIConnector(Connector):
    """A ComfyUI server (normally this machine's, one per GPU)."""

    kind = "comfyui"
    service = "comfyui"

    #: Seconds between ``/history`` checks while the socket is quiet.
    history_poll_seconds: float = 5.0
    #: Seconds ``/history`` may lag the end of a prompt.
    history_wait_seconds: float = 10.0
    #: Seconds between ``/queue`` checks while waiting for a stopped prompt to end.
    stop_poll_seconds: float = 0.5
    #: Seconds a new job waits for a prompt that outlived ``stop_wait_seconds``.
    busy_wait_seconds: float = 60.0
    #: Seconds between tries while ``initialize`` waits for the server.
    startup_poll_seconds: float = 0.5
    #: Output file types fetched into the store: "output" (SaveImage and the like) and
    #: "temp" (PreviewImage: the images ComfyUI's UI shows, kept in its temp folder).
    output_types: tuple[str, ...] = ("output", "temp")
    #: Seconds to wait for the socket's first ``status`` message, which ComfyUI sends once
    #: it routes messages to the client id; queueing sooner could lose the first ones.
    greeting_timeout_seconds: float = 5.0
    #: WebSocket ping interval, seconds (None: none; the remote connector pings).
    ws_ping_seconds: float | None = None

    def __init__(self, connector_id: str, client: ComfyUIClient,
                 timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
                 startup_timeout_seconds: float = DEFAULT_STARTUP_TIMEOUT_SECONDS,
                 output_store: OutputStore | None = None,
                 stop_wait_seconds: float = DEFAULT_STOP_WAIT_SECONDS,
                 gpu_memory_gb: float | None = None, model_size_gb: float = 6.5) -> None:
        super().__init__(connector_id)
        self.client = client
        self.timeout_seconds = float(timeout_seconds)
        self.startup_timeout_seconds = float(startup_timeout_seconds)
        self.stop_wait_seconds = float(stop_wait_seconds)
        self._output_store = output_store
        self._runs: dict[str, PromptRun] = {}
        self._lock = threading.Lock()
        #: Prompt of a stopped job that outlived ``stop_wait_seconds``, seen by every process.
        self.stuck = StuckPrompt(self.client.url)
        #: Models a loader failed to load here: no longer reported (see bad_models).
        self.bad_models: set[str] = set()
        #: Which models are on disk and which its last prompts left in the card.
        self.models_held = ComfyUIResidency(self._model_files, self._vram_gb, gpu_memory_gb,
                                            model_size_gb)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> ComfyUIConnector:
        """Build from a settings mapping (see the module docstring for the keys)."""
        client = ComfyUIClient(
            settings.get("url") or DEFAULT_URL, username=settings.get("username"),
            password=settings.get("password"), api_token=settings.get("api_token"),
            verify_tls=settings.get("verify_tls", True) not in (False, "0", "false", "no"),
            ca_bundle=settings.get("ca_bundle"), ws_ping_seconds=cls.ws_ping_seconds)
        return cls(
            settings.get("connector_id") or cls.kind, client,
            timeout_seconds=float(settings.get("timeout_seconds") or DEFAULT_TIMEOUT_SECONDS),
            startup_timeout_seconds=float(settings.get("startup_timeout_seconds")
                                          or DEFAULT_STARTUP_TIMEOUT_SECONDS),
            output_store=settings.get("output_store"),
            stop_wait_seconds=float(settings.get("stop_wait_seconds")
                                    or DEFAULT_STOP_WAIT_SECONDS),
            gpu_memory_gb=(float(settings["gpu_memory_gb"]) if settings.get("gpu_memory_gb")
                           not in (None, "") else None),
            model_size_gb=float(settings.get("model_size_gb") or 6.5))

    @property
    def output_store(self) -> OutputStore:
        if self._output_store is None:
            self._output_store = output_store_from_env()
        return self._output_store

    # -- service ------------------------------------------------------------------

    def initialize(self) -> None:
        """Wait up to ``startup_timeout_seconds`` for the server to answer ``/system_stats``."""
        deadline = time.monotonic() + self.startup_timeout_seconds
        while True:
            try:
                self.client.get_json("/system_stats")
                return
            except ConnectorError as exc:
                waiting_helps = (exc.error_type == ErrorType.NETWORK
                                 and not isinstance(exc.__cause__, requests.exceptions.SSLError))
                if not waiting_helps or time.monotonic() >= deadline:
                    raise ConnectorError(f"ComfyUI at {self.client.url} is not usable: "
                                         f"{exc.message}", exc.error_type) from exc
            time.sleep(self.startup_poll_seconds)

    def check_health(self) -> Health:
        """``/system_stats``: reachable, with its devices and GPU memory (GB).

        A ``cpu`` device (ComfyUI ``--cpu``) reports system RAM as its VRAM;
        it counts as no GPU memory. Unhealthy while a stopped job's prompt
        still runs past ``stop_wait_seconds``.
        """
        try:
            stats = self.client.get_json("/system_stats")
            stuck = self._still_stuck()
        except ConnectorError as exc:
            return Health(False, {"url": self.client.url, "error": str(exc)})
        devices = stats.get("devices") or []
        gpus = [d for d in devices if str(d.get("type") or "").lower() != "cpu"]
        gib = 1024 ** 3
        details = {
            "url": self.client.url,
            "comfyui_version": (stats.get("system") or {}).get("comfyui_version"),
            "devices": [device.get("name") for device in devices],
            "device_types": [device.get("type") for device in devices],
            "gpu": bool(gpus),
            "vram_total_gb": round(sum(d.get("vram_total") or 0 for d in gpus) / gib, 2),
            "vram_free_gb": round(sum(d.get("vram_free") or 0 for d in gpus) / gib, 2),
        }
        if stuck:
            return Health(False, {**details, "error": f"ComfyUI still runs prompt {stuck} "
                                  "of a stopped job"})
        return Health(True, details)

    def available_models(self) -> dict[str, list[str]]:
        """Options of the loader nodes' model inputs, with aliases (see comfyui_models).

        Built-in options that are no file (``pixel_space``) and models a loader
        failed to load here (``bad_models``) are left out.
        """
        names: set[str] = set()
        for option in self._model_files():
            names |= model_aliases(option)
        return {self.service: sorted(names - self.bad_models)}

    def _model_files(self) -> list[str]:
        """The model files the loader nodes offer (``/object_info``), as ComfyUI names them."""
        files: list[str] = []
        for node_class, input_name in MODEL_LOADERS:
            info = self.client.get_json(f"/object_info/{node_class}")
            files += [option for option in combo_options(info.get(node_class), input_name)
                      if option not in NOT_MODEL_FILES and option not in self.bad_models]
        return list(dict.fromkeys(files))

    def _vram_gb(self) -> float:
        """The server's GPU memory in GB (0 with ``--cpu`` or when it cannot say)."""
        try:
            return float(self.check_health().details.get("vram_total_gb") or 0)
        except ConnectorError:
            return 0.0

    def residency(self) -> dict[str, Any]:
        """Models on disk and in the card's memory (see ``comfyui_residency``)."""
        try:
            return self.models_held.residency()
        except ConnectorError:  # server away: report nothing rather than fail the job
            return {}

    def close(self) -> None:
        self.client.close()

    # -- jobs ---------------------------------------------------------------------

    def process_job(self, job: JobInput, progress: ProgressCallback) -> JobOutput:
        """Queue the workflow, follow it to the end, store its output files, return its text.

        ComfyUI serves an unchanged output node from its cache, naming the file it
        saved then; if that file was deleted since (an output folder cleaned up),
        the output nodes run once more, with an input they ignore but ComfyUI's
        cache keys on (``RERUN_INPUT``): only they run, their inputs stay cached.
        """
        workflow = api_workflow(job.payload)
        tracker = ProgressTracker(workflow)
        run, entry = self._prompt(job, workflow, tracker, progress)
        found = sort_outputs(entry.get("outputs") or {})
        try:
            output_files = self._store_outputs(job.job_id, found.files)
        except OutputGone as gone:
            self.log(None, job.job_id, logging.WARNING, f"{gone.message} (deleted since "
                     "ComfyUI cached it); running the output nodes again")
            rerun = _with_rerun_input(workflow, entry.get("outputs") or {})
            run, entry = self._prompt(job, rerun, tracker, progress)
            found = sort_outputs(entry.get("outputs") or {})
            output_files = self._store_outputs(job.job_id, found.files)
        for other in found.other:
            self.log("output_unhandled", job.job_id, logging.WARNING,
                     f"ComfyUI node {other['node_id']} output {other['kind']!r} is neither "
                     "files nor text: returned as it is in other_outputs",
                     node_id=other["node_id"], kind=other["kind"])
        tracker.finish()
        self._report(run, tracker, progress)
        return JobOutput(True, data={"prompt_id": run.prompt_id,
                                     "outputs": entry.get("outputs") or {},
                                     "status": entry.get("status") or {},
                                     "output_text": found.text,
                                     "other_outputs": found.other},
                         output_files=output_files)

    def _prompt(self, job: JobInput, workflow: dict[str, Any], tracker: ProgressTracker,
                progress: ProgressCallback) -> tuple[PromptRun, dict[str, Any]]:
        """Run ``workflow`` as one prompt; its run and history entry."""
        self._wait_until_free()
        run = PromptRun(job.job_id)
        client_id = f"emp-{uuid.uuid4().hex}"
        with self._lock:
            self._runs[job.job_id] = run
        try:
            entry = self._run_prompt(run, workflow, client_id, tracker, progress)
        except ConnectorError as exc:
            if exc.error_type == ErrorType.MODEL:
                unusable = self._unusable_models(exc, workflow, job)
                if unusable is not None:
                    raise unusable from None
            raise
        finally:
            with self._lock:
                self._runs.pop(job.job_id, None)
        self.models_held.ran(workflow)
        return run, entry

    def cancel_job(self, job_id: str) -> bool:
        """Stop the job's prompt if it runs or waits here; process_job then raises."""
        with self._lock:
            run = self._runs.get(job_id)
        if run is None:
            return False
        run.cancel.set()
        if run.prompt_id is not None:
            self._stop_quietly(run)
        return True

    # -- the prompt's life --------------------------------------------------------

    def _run_prompt(self, run: PromptRun, workflow: dict[str, Any], client_id: str,
                    tracker: ProgressTracker, progress: ProgressCallback) -> dict[str, Any]:
        try:
            run.socket = self.client.websocket(client_id)
        except ConnectorError as exc:
            raise _unavailable(exc, before_prompt=True) from exc
        try:
            try:
                _await_greeting(run.socket, self.greeting_timeout_seconds)
            except ConnectorError as exc:
                raise _unavailable(exc, before_prompt=True) from exc
            prompt_id = str(uuid.uuid4())
            try:
                run.prompt_id = self._queue_prompt(workflow, client_id, prompt_id)
            except ConnectorError as exc:
                error = _unavailable(exc, before_prompt=False)
                if (exc.error_type in (ErrorType.TIMEOUT, ErrorType.NETWORK)
                        and not isinstance(error, ServiceUnavailable)):
                    run.prompt_id, run.unconfirmed = prompt_id, True
                raise error from exc
            self.log("job_started", run.job_id, prompt_id=run.prompt_id)
            if run.cancel.is_set():  # cancelled while we queued it
                self._stop_quietly(run)
            elif self._waiting(run, tracker):
                self._report(run, tracker, progress)
            return self._follow(run, client_id, tracker, progress)
        except BaseException:
            # Cancelled (here or by the progress callback), timed out or failed: the
            # worker's next job must not be queued into a ComfyUI still running this one.
            if run.unconfirmed:
                self._withdraw(run)
            elif run.prompt_id and not run.off_queue and not run.dequeued:
                if not run.ended and not run.stop_sent:
                    self._stop_quietly(run)
                self._await_off_queue(run)
            raise
        finally:
            _close_quietly(run.socket)

    def _queue_prompt(self, workflow: dict[str, Any], client_id: str, prompt_id: str) -> str:
        """``POST /prompt`` under an id chosen here (ComfyUI keeps it), so a prompt
        whose POST timed out can still be found; returns the id ComfyUI answers with."""
        response = self.client.post("/prompt", {"prompt": workflow, "client_id": client_id,
                                                "prompt_id": prompt_id})
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code == 400:
            raise _rejection(body)
        if response.status_code != 200 or not body.get("prompt_id"):
            raise ConnectorError(f"ComfyUI POST /prompt: HTTP {response.status_code}: "
                                 f"{response.text[:300]}", ErrorType.SERVICE)
        return str(body["prompt_id"])

    def _follow(self, run: PromptRun, client_id: str, tracker: ProgressTracker,
                progress: ProgressCallback) -> dict[str, Any]:
        """Read the socket until the prompt ends; returns its history entry."""
        deadline = time.monotonic() + self.timeout_seconds
        next_history_check = time.monotonic() + self.history_poll_seconds
        while True:
            now = time.monotonic()
            if run.cancel.is_set():
                if run.dequeued or (run.stop_deadline and now >= run.stop_deadline):
                    run.ended = run.ended or run.dequeued
                    raise JobCancelledByService(f"job {run.job_id} cancelled")
                next_history_check = min(next_history_check, now + self.stop_poll_seconds)
            elif now >= deadline:
                if not run.started:
                    self._waiting(run, tracker)
                ahead = 0 if run.started else tracker.queue_ahead
                self._stop_quietly(run)
                if ahead:
                    raise ConnectorError(
                        f"prompt {run.prompt_id} never started within {self.timeout_seconds:g}s: "
                        f"ComfyUI was busy with other prompts ({ahead_text(ahead)})",
                        ErrorType.TIMEOUT)
                raise ConnectorError(f"prompt {run.prompt_id} did not finish within "
                                     f"{self.timeout_seconds:g}s", ErrorType.TIMEOUT)
            try:
                raw = run.socket.receive(timeout=0.25)
            except ConnectionClosed:
                try:
                    run.socket = self._reconnect(client_id)
                except ConnectorError as exc:
                    raise ConnectorError(f"ComfyUI at {self.client.url} went away while prompt "
                                         f"{run.prompt_id} ran (stopped or restarting?): "
                                         f"{exc.message}", exc.error_type) from exc
                next_history_check = now
                continue
            if raw is None or isinstance(raw, bytes):  # quiet, or a binary preview frame
                if now >= next_history_check:
                    next_history_check = now + self.history_poll_seconds
                    entry = self._history(run.prompt_id) or self._unless_gone(run)
                    if entry is not None:
                        return self._outcome(run, entry)
                continue
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            kind, data = message.get("type"), message.get("data") or {}
            if data.get("prompt_id") not in (None, run.prompt_id):
                continue  # another prompt on the same server
            if kind == "status" and not run.started and tracker.queue_ahead:
                if self._waiting(run, tracker):  # a prompt ahead of it ended
                    self._report(run, tracker, progress)
                continue
            if kind in PROMPT_RUNS and data.get("node", "") is not None and not run.started:
                run.started = True
                tracker.waiting(0)
            if kind == "executing" and data.get("node") is None:
                if data.get("prompt_id") == run.prompt_id:
                    run.off_queue = True
                    return self._outcome(run, self._wait_for_history(run))
                continue
            if kind == "execution_success":
                next_history_check = now + 0.5  # in case "executing null" never comes
            elif kind == "execution_error":
                run.ended = True
                raise execution_error(data)
            elif kind == "execution_interrupted":
                run.ended = True
                raise self._interrupted(run)
            elif self._track(tracker, kind, data):
                self._report(run, tracker, progress)

    @staticmethod
    def _track(tracker: ProgressTracker, kind: str | None, data: dict[str, Any]) -> bool:
        """Feed one message to the tracker; True when progress should be reported."""
        if kind == "execution_start":
            return True
        if kind == "execution_cached":
            tracker.cached(data.get("nodes") or [])
        elif kind == "executing":
            tracker.executing(data["node"])
        elif kind == "progress":
            tracker.progress(data.get("node"), data.get("value"), data.get("max"))
        elif kind == "executed" and data.get("node") is not None:
            tracker.executed(data["node"])
        else:
            return False
        return True

    @staticmethod
    def _report(run: PromptRun, tracker: ProgressTracker, progress: ProgressCallback) -> None:
        """Publish progress unless it says what was said last."""
        report: Progress = tracker.report()
        key = (report.percent, report.message)
        if key != run.last_report:
            run.last_report = key
            progress(report)

    def _interrupted(self, run: PromptRun) -> ConnectorError:
        if run.cancel.is_set():
            return JobCancelledByService(f"job {run.job_id} cancelled (prompt interrupted)")
        return ConnectorError(f"prompt {run.prompt_id} was interrupted on the ComfyUI server",
                              ErrorType.SERVICE)

    def _outcome(self, run: PromptRun, entry: dict[str, Any]) -> dict[str, Any]:
        """The history entry of a finished prompt, or its failure raised."""
        run.ended = run.off_queue = True  # ComfyUI writes history as it dequeues
        status = entry.get("status") or {}
        if run.cancel.is_set():
            raise JobCancelledByService(f"job {run.job_id} cancelled")
        if status.get("status_str") == "error":
            for name, data in status.get("messages") or []:
                if name == "execution_error":
                    raise execution_error(data)
                if name == "execution_interrupted":
                    raise self._interrupted(run)
            raise ConnectorError(f"prompt {run.prompt_id} ended with an error",
                                 ErrorType.SERVICE)
        return entry

    def _history(self, prompt_id: str | None) -> dict[str, Any] | None:
        entry = self.client.get_json(f"/history/{prompt_id}")
        return entry.get(prompt_id) if isinstance(entry, dict) else None

    def _unless_gone(self, run: PromptRun) -> None:
        """Raise if the prompt, not in ``/history``, is not in ``/queue`` either.

        Another client removed it (ComfyUI's "clear queue", a delete) or ComfyUI
        restarted: no message will ever come for it. ComfyUI moves a prompt from
        its queue to its history under one lock, so ``/history`` is read again
        for a prompt that ended between the two reads.
        """
        try:
            if self._in_queue(str(run.prompt_id)) or self._history(run.prompt_id) is not None:
                return None
        except (LookupError, TypeError, AttributeError):  # an odd /queue: keep waiting
            return None
        run.ended = run.off_queue = True
        raise ConnectorError(f"prompt {run.prompt_id} left ComfyUI's queue without running "
                             "(removed by another client, or ComfyUI restarted)",
                             ErrorType.SERVICE)

    def _wait_for_history(self, run: PromptRun) -> dict[str, Any]:
        deadline = time.monotonic() + self.history_wait_seconds
        while True:
            entry = self._history(run.prompt_id)
            if entry is not None:
                return entry
            if time.monotonic() >= deadline:
                raise ConnectorError(f"prompt {run.prompt_id} finished but is not in /history",
                                     ErrorType.SERVICE)
            time.sleep(0.1)

    def _reconnect(self, client_id: str) -> WebSocketClient:
        """A new socket under the same client id (ComfyUI routes by it)."""
        for attempt in range(3):
            try:
                return self.client.websocket(client_id)
            except ConnectorError:
                if attempt == 2:
                    raise
                time.sleep(1.0)
        raise AssertionError("unreachable")

    def _stop_quietly(self, run: PromptRun) -> None:
        """Interrupt the prompt if it runs, unqueue it if it waits; never raises.

        Interrupt names the prompt; a ComfyUI too old to honour that interrupts
        whatever runs, so the queue is read first to make sure it is ours.
        """
        run.stop_sent = True
        if not run.stop_deadline:
            run.stop_deadline = time.monotonic() + self.stop_wait_seconds
        try:
            queue = self.client.get_json("/queue")
            running = [item[1] for item in queue.get("queue_running") or []]
            pending = [item[1] for item in queue.get("queue_pending") or []]
            if run.prompt_id in running:
                self.client.post("/interrupt", {"prompt_id": run.prompt_id})
            elif run.prompt_id in pending:
                self.client.post("/queue", {"delete": [run.prompt_id]})
                run.dequeued = True
        except (ConnectorError, LookupError, TypeError, AttributeError) as exc:
            self.log(None, run.job_id, logging.WARNING,
                     f"could not stop prompt {run.prompt_id}: {exc}")

    def _withdraw(self, run: PromptRun) -> None:
        """After a ``POST /prompt`` that failed once sent: stop the prompt if ComfyUI
        queued it anyway (a server too busy to answer in time queues it later); never raises.

        Looks for ``prompt_id`` in ``/queue`` until ComfyUI has answered without it
        for ``history_wait_seconds``, at most ``stop_wait_seconds`` in all; a refused
        connection means ComfyUI is down, its queue gone with it.
        """
        prompt_id = str(run.prompt_id)
        deadline = time.monotonic() + self.stop_wait_seconds
        absent_since: float | None = None
        while (now := time.monotonic()) < deadline:
            try:
                if self._in_queue(prompt_id):
                    self.log(None, run.job_id, logging.WARNING, f"ComfyUI queued prompt "
                             f"{prompt_id} after its POST failed; stopping it")
                    self._stop_quietly(run)
                    self._await_off_queue(run)
                    return
                if self._history(prompt_id) is not None:
                    return  # it ran already
                if absent_since is None:
                    absent_since = now
                elif now - absent_since >= self.history_wait_seconds:
                    return
            except ConnectorError as exc:
                if isinstance(_unavailable(exc, before_prompt=False), ServiceUnavailable):
                    return
                absent_since = None
            except (LookupError, TypeError, AttributeError) as exc:
                self.log(None, run.job_id, logging.WARNING,
                         f"could not tell whether ComfyUI queued prompt {prompt_id}: {exc}")
                return
            time.sleep(self.stop_poll_seconds)

    def _waiting(self, run: PromptRun, tracker: ProgressTracker) -> bool:
        """Count the prompts ComfyUI runs before this one (``/queue``); True if that changed.

        Other clients (an artist's browser) share the server. Never raises: the
        count is only for the job's progress message.
        """
        try:
            queue = self.client.get_json("/queue")
            running = list(queue.get("queue_running") or [])
            pending = list(queue.get("queue_pending") or [])
            number = next((row[0] for row in pending if row[1] == run.prompt_id), None)
            if number is None and all(row[1] != run.prompt_id for row in running):
                return False  # ended, or removed: the history checks tell which
            ahead = 0 if number is None else len(running) + sum(
                1 for row in pending if row[0] < number)
        except (ConnectorError, LookupError, TypeError, AttributeError):
            return False
        if run.started or ahead == tracker.queue_ahead:
            return False
        tracker.waiting(ahead)
        return True

    def _in_queue(self, prompt_id: str) -> bool:
        """Whether ComfyUI's ``/queue`` still lists the prompt (running or waiting)."""
        queue = self.client.get_json("/queue")
        rows = [*(queue.get("queue_running") or []), *(queue.get("queue_pending") or [])]
        return any(isinstance(row, list) and len(row) > 1 and row[1] == prompt_id
                   for row in rows)

    def _await_off_queue(self, run: PromptRun) -> None:
        """Wait until the prompt left ComfyUI, at most until ``stop_deadline``; never raises.

        The socket tells first (``executing {node: null}`` for the prompt comes
        after ComfyUI dequeued it); ``/queue`` is read every ``stop_poll_seconds``
        in case the socket is gone. Past the deadline the prompt is remembered
        as stuck: the connector is unhealthy until it ends.
        """
        deadline = run.stop_deadline or time.monotonic() + self.stop_wait_seconds
        next_check = 0.0
        while True:
            now = time.monotonic()
            try:
                if now >= next_check:
                    next_check = now + self.stop_poll_seconds
                    if not self._in_queue(str(run.prompt_id)):
                        run.off_queue = True
                        return
                if now >= deadline:
                    break
                if _prompt_left(run.socket, run.prompt_id, min(0.25, deadline - now)):
                    run.off_queue = True
                    return
            except ConnectionClosed:
                run.socket = None
            except (ConnectorError, LookupError, TypeError, AttributeError) as exc:
                self.log(None, run.job_id, logging.WARNING, f"could not tell whether prompt "
                         f"{run.prompt_id} stopped: {exc}")
                return
            if run.socket is None:
                time.sleep(min(self.stop_poll_seconds, max(0.0, deadline - now)))
        self.stuck.set(str(run.prompt_id))
        self.log("service_stuck", run.job_id, logging.WARNING,
                 f"ComfyUI still runs prompt {run.prompt_id} {self.stop_wait_seconds:g}s after "
                 "it was stopped; unhealthy until it ends", prompt_id=run.prompt_id)

    def _still_stuck(self) -> str | None:
        """The stuck prompt if ComfyUI still has it; clears (and logs) once it is gone."""
        prompt_id = self.stuck.get()
        if prompt_id is None:
            return None
        if self._in_queue(prompt_id):
            return prompt_id
        self.stuck.clear(prompt_id)
        self.log(None, level=logging.INFO,
                 message=f"ComfyUI finished stuck prompt {prompt_id}; healthy again")
        return None

    def _wait_until_free(self) -> None:
        """Before queueing: wait up to ``busy_wait_seconds`` for a stuck prompt to end."""
        deadline = time.monotonic() + self.busy_wait_seconds
        while (stuck := self._still_stuck()) is not None:
            if time.monotonic() >= deadline:
                raise ConnectorError(f"ComfyUI still runs prompt {stuck} of a stopped job",
                                     ErrorType.SERVICE)
            time.sleep(self.stop_poll_seconds)

    def _unusable_models(self, exc: ConnectorError, workflow: dict[str, Any],
                         job: JobInput) -> ModelUnusableHere | None:
        """A model this worker advertised is unusable here: stop reporting it; retry
        elsewhere if the job requires it.

        Either a loader failed on a model ComfyUI lists (corrupt, missing file:
        the failing node's model inputs name it), or ComfyUI refused the prompt
        because a model input is "not in list" (the file was removed after the
        worker read its models at start). Their aliases go into the error, which
        the worker uses to re-register its profile without them, and, for a model
        ComfyUI still lists, into ``bad_models``. None when the error names no model.
        """
        names: set[str] = set()
        for value in _failed_models(exc, workflow):
            names |= model_aliases(value)
        if not names:
            return None
        if exc.details.get("node_id") is not None:  # listed but unloadable: ComfyUI lists it on
            self.bad_models |= names
        required = (job.requirements or {}).get("models") or []
        required = [required] if isinstance(required, str) else required
        elsewhere = isinstance(required, list) and bool(names & set(required))
        self.log("model_unusable", job.job_id, logging.WARNING,
                 f"{', '.join(sorted(names))} cannot be used here ({exc.message}); "
                 "no longer reported", models=sorted(names))
        return ModelUnusableHere(exc.message, {self.service: sorted(names)},
                                 retry_elsewhere=elsewhere, details=exc.details)

    # -- outputs ------------------------------------------------------------------

    def _store_outputs(self, job_id: str,
                       files: list[tuple[str, str, dict[str, Any]]]) -> list[dict[str, Any]]:
        """Fetch each output file (``sort_outputs``) with ``/view``, put it in the store.

        Previews (``type: temp``, PreviewImage's) are stored too, marked
        ``preview: true`` and listed after the saved files: a workflow whose only
        output is a preview would otherwise succeed with no file at all.
        """
        stored = [self._store_file(job_id, node_id, kind, item)
                  for node_id, kind, item in files
                  if item.get("type", "output") in self.output_types]
        return sorted(stored, key=lambda entry: entry["preview"])

    def _store_file(self, job_id: str, node_id: str, kind: str,
                    item: dict[str, Any]) -> dict[str, Any]:
        filename, subfolder = str(item["filename"]), str(item.get("subfolder") or "")
        file_type = str(item.get("type") or "output")
        response = self.client.request("GET", "/view", params={
            "filename": filename, "subfolder": subfolder, "type": file_type})
        if response.status_code == 404:
            raise OutputGone(f"ComfyUI GET /view {filename}: HTTP 404", ErrorType.SERVICE,
                             {"node_id": node_id, "filename": filename, "subfolder": subfolder})
        if response.status_code != 200:
            raise ConnectorError(f"ComfyUI GET /view {filename}: HTTP {response.status_code}",
                                 ErrorType.SERVICE)
        content_type = (response.headers.get("Content-Type", "").split(";")[0]
                        or mimetypes.guess_type(filename)[0] or "application/octet-stream")
        name = f"{subfolder}/{filename}" if subfolder else filename
        url = self.output_store.put(job_id, name, response.content, content_type)
        return {"filename": filename, "subfolder": subfolder, "type": file_type,
                "node_id": node_id, "kind": kind, "url": url, "size": len(response.content),
                "content_type": content_type, "preview": file_type == "temp"}


class OutputGone(ConnectorError):
    """``/view`` has no file of that name (any more)."""


def _with_rerun_input(workflow: dict[str, Any], outputs: Mapping[str, Any]) -> dict[str, Any]:
    """``workflow`` with a new ``RERUN_INPUT`` value on each node in ``outputs``.

    ComfyUI passes a node only the inputs it declares, but its cache key holds
    every input: those nodes run again, the nodes they read from stay cached.
    """
    nonce = uuid.uuid4().hex
    rerun = dict(workflow)
    for node_id in outputs:
        node = workflow.get(str(node_id))
        if isinstance(node, dict):
            rerun[str(node_id)] = {**node, "inputs": {**(node.get("inputs") or {}),
                                                      RERUN_INPUT: nonce}}
    return rerun


def execution_error(data: Mapping[str, Any]) -> ConnectorError:
    """A classified error from ComfyUI's ``execution_error`` message."""
    exception_type = str(data.get("exception_type") or "")
    text = str(data.get("exception_message") or "").strip()
    where = f"{data.get('node_type') or 'node'} #{data.get('node_id')}"
    return ConnectorError(
        f"{where}: {exception_type + ': ' if exception_type else ''}{text}",
        classify_error(text, exception_type),
        {"node_id": data.get("node_id"), "node_type": data.get("node_type"),
         "exception_type": exception_type,
         "traceback": list(data.get("traceback") or [])[-5:]})


def _failed_models(exc: ConnectorError, workflow: Mapping[str, Any]) -> list[str]:
    """The model values a MODEL error is about: the failing node's model inputs
    (``execution_error``), or those ``/prompt`` validation found not in list."""
    values: list[Any] = []
    node_id = exc.details.get("node_id")
    if node_id is not None:
        node = workflow.get(str(node_id)) or {}
        values += [value for name, value in (node.get("inputs") or {}).items()
                   if name in MODEL_INPUTS]
    for node_error in (exc.details.get("node_errors") or {}).values():
        for item in (node_error or {}).get("errors") or []:
            extra = item.get("extra_info") or {}
            if item.get("type") == "value_not_in_list" and extra.get("input_name") in MODEL_INPUTS:
                values.append(extra.get("received_value"))
    return [value for value in values if isinstance(value, str) and value]


def _rejection(body: Mapping[str, Any]) -> ConnectorError:
    """A classified error from a 400 on ``POST /prompt``: MODEL if a model is not in list."""
    error = body.get("error") or {}
    if isinstance(error, str):
        error = {"message": error}
    node_errors = body.get("node_errors") or {}
    error_type = ErrorType.VALIDATION
    lines = [str(error.get("message") or "invalid prompt")]
    if error.get("details"):
        lines.append(str(error["details"]))
    for node_id, node in node_errors.items():
        for item in node.get("errors") or []:
            lines.append(f"{node.get('class_type')} #{node_id}: {item.get('message')}: "
                         f"{item.get('details')}")
            input_name = (item.get("extra_info") or {}).get("input_name")
            if item.get("type") == "value_not_in_list" and input_name in MODEL_INPUTS:
                error_type = ErrorType.MODEL
    return ConnectorError("; ".join(lines), error_type,
                          {"error": error, "node_errors": node_errors})


def _unavailable(exc: ConnectorError, before_prompt: bool) -> ConnectorError:
    """``exc`` as ServiceUnavailable when ComfyUI surely never got the prompt, else itself.

    That is a NETWORK failure before ``POST /prompt`` was sent (the socket refused
    or never answered: ComfyUI down or restarting), or a POST whose connection
    was refused; a POST that failed later may have queued the prompt.
    """
    if exc.error_type != ErrorType.NETWORK or isinstance(exc, ServiceUnavailable):
        return exc
    cause = exc.__cause__
    reason = getattr(cause.args[0], "reason", None) if cause is not None and cause.args else None
    if before_prompt or isinstance(reason, NewConnectionError):
        return ServiceUnavailable(exc.message, ErrorType.NETWORK, exc.details)
    return exc


def _await_greeting(ws: WebSocketClient, timeout: float) -> None:
    """Read until the first text frame (ComfyUI's ``status``); give up quietly at ``timeout``.

    Without it the prompt's first messages may precede the server's routing of
    the client id; the ``/history`` checks cover a server that sends none.
    """
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            if isinstance(ws.receive(timeout=left), str):
                return
        except ConnectionClosed as exc:
            raise ConnectorError(f"ComfyUI closed the WebSocket at once: {exc}",
                                 ErrorType.NETWORK) from exc


def _prompt_left(ws: WebSocketClient | None, prompt_id: str | None, timeout: float) -> bool:
    """Read one socket message; True if it is ``executing {node: null}`` for the prompt."""
    if ws is None:
        return False
    raw = ws.receive(timeout=max(0.0, timeout))
    if not isinstance(raw, str):
        return False
    try:
        message = json.loads(raw)
    except ValueError:
        return False
    data = message.get("data") or {}
    return (message.get("type") == "executing" and data.get("node") is None
            and data.get("prompt_id") == prompt_id)


def _close_quietly(ws: WebSocketClient) -> None:
    try:
        ws.close()
    except Exception:  # already closed by the server: nothing to release
        pass
