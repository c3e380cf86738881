"""``emp machine``: run a machine's workers and services under supervisor, report its status.

The main thread starts supervisord (a child of this process) from the plan,
the health server and the reporter thread, then waits for SIGTERM/SIGINT.
The reporter reads supervisor's process states every ``poll_seconds``,
writes the machine's status to Redis at once when a state changed and every
``report_seconds`` otherwise, and runs the reaper of gone machines each
report period. Stopping: supervisord stops every program (workers hand
back the jobs they hold), the reporter keeps reporting meanwhile, then the
machine is recorded offline.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import redis

from capability_router.cluster import blocking_socket_timeout, make_client
from capability_router.env import SettingError
from machine import usage
from machine.counters import ENV as COUNTERS_ENV
from machine.counters import JOB_OUTCOMES, counters_dir, read_counters
from machine.errors import MachineError
from machine.exits import Exit, ExitLog
from machine.gpus import GpuInventory, detect_gpus
from machine.handback import cutoff_ms, hand_back_jobs
from machine.health import HealthServer
from machine.logs import configure_logging, log_format
from machine.plan import WORKER, MachinePlan, build_plan
from machine.preflight import check_workers
from machine.reaper import end_failed_machine, reap_gone_machines
from machine.restarts import RestartCounter
from machine.settings import MachineSettings
from machine.shipping import LogShipper, read_stats, shipping_settings
from machine.status import (
    MachineStatus,
    machine_key,
    now_ms,
    publish,
    publish_offline,
    read_machine,
    redis_now_ms,
)
from machine.supervision import Supervisord, remove_old_output, tail_file
from machine.supervisor_conf import RunFiles, write_config
from machine.views import not_ready, process_fields, program_views

logger = logging.getLogger("emp.machine")
#: The name under which ``/logs`` serves supervisord's own log.
SUPERVISORD = "supervisord"
#: Most characters of a program's error line quoted in the machine's log.
MAX_REASON_CHARS = 500
#: Seconds a revive waits past ``revive_seconds`` for a FATAL program's error line to be
#: readable (supervisord's tail could be read before it, or not at all, on a loaded host).
REASON_GRACE_SECONDS = 3.0


class MachineRuntime:
    """One machine: plan, supervisord, health server, status reporter."""

    def __init__(self, settings: MachineSettings, inventory: GpuInventory | None = None) -> None:
        try:  # the machine's own log shipping and its programs' (they inherit these)
            shipping_settings()
            log_format()  # not used (JSON here and for the workers), but a typo is refused
        except SettingError as exc:
            raise MachineError(str(exc)) from None
        self.settings = settings
        self.machine_id = settings.machine_id
        self.inventory = inventory or detect_gpus()
        self.plan: MachinePlan = build_plan(
            self.machine_id, settings.workers, self.inventory, settings.worker_loglevel,
            settings.comfyui_command, settings.comfyui_dir, settings.comfyui_base_port)
        check_workers(self.plan)  # before anything starts: a setting they would all refuse
        self.run_dir = Path(settings.run_dir or ".")
        for spec in self.plan.programs:
            if spec.role == WORKER:  # their job and download counts, for /status and /metrics
                spec.env[COUNTERS_ENV] = str(self.counters_dir)
        self.files = RunFiles.in_dir(self.run_dir)
        # make_client: a RedisCluster when the cluster switch is on, as for every other process.
        # Its timeout has been 5 s longer than the services' since the runtime was written
        # (10 s against 5): kept as that relation to EMP_REDIS_SOCKET_TIMEOUT, so a machine
        # that reports and reaps in the background does not give up before the services.
        self.redis = make_client(settings.redis_url, decode_responses=True,
                                 socket_timeout=blocking_socket_timeout(),
                                 health_check_interval=30)
        self.exits = ExitLog(spec.name for spec in self.plan.programs)
        self.supervisord = Supervisord(self.files, self.child_env(), settings.log_max_bytes,
                                       settings.log_backups, on_line=self.exits.feed)
        self.health: HealthServer | None = None
        self.health_token = settings.health_token
        self.metrics_public = settings.metrics_public
        self.restarts = RestartCounter(spec.name for spec in self.plan.programs)
        self.started_at = time.time()
        #: Uptime counts on the monotonic clock: a wall clock set back (NTP on a rented
        #: machine) made /health and /status report a negative uptime.
        self._started_monotonic = time.monotonic()
        self._stop = threading.Event()
        self._reporter: threading.Thread | None = None
        self._last_infos: dict[str, dict[str, Any]] = {}
        self._infos_lock = threading.Lock()
        self._published = False
        self._fatal_since: dict[str, float] = {}
        #: How each program's last unexpected exit went, with its error line, for /ready.
        self._last_exit: dict[str, str] = {}
        self._redis_down_since: float | None = None
        self._redis_warned = 0.0
        #: Set when supervisord died under the machine (``emp machine`` then exits 1).
        self.failed = False

    # -- environment of the children -----------------------------------------------

    @property
    def stats_dir(self) -> Path:
        return self.run_dir / "log-stats"

    @property
    def counters_dir(self) -> Path:
        return counters_dir(self.run_dir)

    def child_env(self) -> dict[str, str]:
        """supervisord's environment, inherited by every program. Workers get their
        ``PROMETHEUS_MULTIPROC_DIR`` in their own environment (the plan's); one set
        around the machine is not passed on: a service would write its metrics there."""
        inherited = {k: v for k, v in os.environ.items()
                     if k.upper() != COUNTERS_ENV}  # and the deprecated lower-case name
        return {**inherited, "EMP_REDIS_URL": self.settings.redis_url,
                "MACHINE_ID": self.machine_id, "EMP_LOG_FORMAT": "json",
                "EMP_LOG_STATS_DIR": str(self.stats_dir), "PYTHONUNBUFFERED": "1"}

    def log_env(self) -> dict[str, str]:
        """The machine process's own logging context."""
        return {**os.environ, "MACHINE_ID": self.machine_id,
                "EMP_LOG_STATS_DIR": str(self.stats_dir)}

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> MachineRuntime:
        """Write the config, start supervisord, the health server and the reporter."""
        self._refuse_live_twin()
        self.supervisord.claim_socket()
        try:
            for stale in (self.stats_dir, self.counters_dir, self.run_dir / "programs"):
                shutil.rmtree(stale, ignore_errors=True)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_config(self.plan, self.files, self.settings.program_options())
        except OSError as exc:  # a full disk, a read-only or misnamed directory
            raise MachineError(f"cannot write the run directory {self.run_dir} "
                               f"(EMP_MACHINE_RUN_DIR): {exc}") from None
        remove_old_output(self.files)
        try:
            self.health = HealthServer(self, self.settings.health_host,
                                       self.settings.health_port).start()
        except OSError as exc:
            raise MachineError(f"health server cannot listen on {self.settings.health_host}:"
                               f"{self.settings.health_port}: {exc}; set EMP_HEALTH_PORT "
                               "(--health-port) or EMP_HEALTH_HOST") from None
        self.supervisord.start()
        self._reporter = threading.Thread(target=self._report_loop, name="emp-machine-report",
                                          daemon=True)
        self._reporter.start()
        logger.info("machine %s started %d programs", self.machine_id, len(self.plan.programs),
                    extra={"event": "machine_started"})
        return self

    def _refuse_live_twin(self) -> None:
        """MachineError when another machine reports under this id and is not silent.

        Two machines of one id shared one record (each overwrote the other's report)
        and one set of worker ids: a clean stop of one deleted the other's worker
        records, and its readiness stayed 503. A record left by an earlier run of this
        machine (same host, its process gone) or one silent past its limit is no twin.
        """
        try:
            record = read_machine(self.redis, self.machine_id)
            now = redis_now_ms(self.redis)
        except redis.RedisError:
            return  # Redis away: the machine starts and reports once it is back
        if not record or record.get("status") != MachineStatus.ONLINE:
            return
        age_s = (now - int(record.get("last_report") or 0)) / 1000
        limit_s = float(record.get("stale_seconds") or self.settings.stale_seconds or 0)
        if age_s >= limit_s or (record.get("hostname") == socket.gethostname()
                                and not _alive(record.get("pid"))):
            return
        raise MachineError(
            f"machine id {self.machine_id!r} is already running on {record.get('hostname')} "
            f"(pid {record.get('pid')}, last report {age_s:.0f} s ago): give this machine "
            f"another MACHINE_ID, or stop that one (or wait until it has been silent "
            f"{limit_s:g} s)")

    def stopped_with_supervisord(self) -> bool:
        """True when a stop was asked for and supervisord died of that same signal.

        supervisord is forked into a session of its own, but until its ``setsid`` the
        child is in the machine's process group with default handlers: a SIGTERM or
        SIGINT sent to the group then (a deploy, Ctrl-C) kills it before it answers.
        """
        process = self.supervisord.process
        return (self._stop.is_set() and process is not None
                and process.returncode in (-signal.SIGTERM, -signal.SIGINT))

    def request_stop(self, *_: object) -> None:
        self._stop.set()

    def wait(self) -> None:
        """Block until a stop is requested (SIGTERM, SIGINT or ``request_stop``)."""
        while not self._stop.wait(1.0):
            if self.supervisord.process and self.supervisord.process.poll() is not None:
                logger.error("supervisord exited with %s; stopping the machine",
                             self.supervisord.process.returncode,
                             extra={"event": "machine_failed"})
                self.failed = True
                self._stop.set()

    def stop(self) -> None:
        """Stop every program, record the machine offline, stop the health server."""
        self._stop.set()
        if self.health is None and self.supervisord.process is None:
            return  # refused at start: nothing ran, so nothing to stop or log
        logger.info("machine %s stopping", self.machine_id, extra={"event": "machine_stopping"})
        self.supervisord.stop(timeout=self.settings.stop_wait_seconds + 30)
        if self._reporter is not None:
            self._reporter.join(timeout=10)
        if self._published:
            try:
                self._record_end()
            except redis.RedisError as exc:
                logger.warning("could not record the machine's end: %s", exc)
        if self.health is not None:
            self.health.stop()
        shutil.rmtree(self.counters_dir, ignore_errors=True)  # memory, not the run dir's
        logger.info("machine %s stopped", self.machine_id, extra={"event": "machine_stopped"})

    def _record_end(self) -> None:
        """Offline after a clean stop (every program stopped, its jobs handed back); gone,
        with its jobs requeued at once, when supervisord died under the machine."""
        if self.failed:
            result = end_failed_machine(self.redis, self.machine_id,
                                        "machine failed: supervisord exited",
                                        self.settings.retention_seconds)
            logger.error("machine %s failed: recorded gone, %d jobs requeued", self.machine_id,
                         len(result["requeued_jobs"]), extra={"event": "machine_failed_ended"})
            return
        stopped = {spec.name: {"statename": "STOPPED"} for spec in self.plan.programs}
        publish_offline(self.redis, self.report(stopped), self.settings.retention_seconds)

    # -- reporting ----------------------------------------------------------------------

    def _report_loop(self) -> None:
        previous: dict[str, tuple[str, int]] | None = None
        last_report = last_reap = 0.0
        # Runs on while supervisord stops its programs, so those changes are reported too.
        while self.supervisord.process is not None and self.supervisord.process.poll() is None:
            now = time.monotonic()
            infos = self._read_processes()
            if infos is not None:
                states = {name: (info["statename"], info["pid"]) for name, info in infos.items()}
                changed = states != previous
                if changed or now - last_report >= self.settings.report_seconds:
                    if self._safely(self._publish, changed):
                        last_report = now
                    previous = states
            if not self._stop.is_set() and now - last_reap >= self.settings.report_seconds:
                self._safely(self._reap)
                last_reap = now
            if infos is not None and not self._stop.is_set():
                self._revive(infos)
            for exited in self.exits.take():
                self._exited(exited)
            time.sleep(self.settings.poll_seconds)

    def _exited(self, exited: Exit) -> None:
        """Say that a program exited unexpectedly (supervisor starts it again), and hand
        a worker's jobs back now rather than when their leases run out."""
        name = exited.program
        said = self._error_line(name)
        self._last_exit[name] = f"{exited.how}: {said}" if said else exited.how
        logger.warning("%s exited unexpectedly (%s)%s; %d unexpected exits in the last %g "
                       "minutes", name, exited.how, f": {said}" if said else "",
                       len(self.exits.recent(name)), self.exits.window_seconds / 60,
                       extra={"event": "machine_program_exited", "program": name})
        spec = self.plan.program(name)
        if spec.role == WORKER and spec.worker_id:
            self._safely(self._hand_back, exited, spec.worker_id)

    def _hand_back(self, exited: Exit, worker_id: str) -> None:
        """Requeue the jobs ``worker_id``'s dead process held (``hand_back_jobs``).

        The cutoff is when the machine read the exit line (``cutoff_ms``): after the
        process died, before the next one claims (it claims nothing before it has
        started, registered and asked), on Redis's clock, which stamps ``assigned_at``.
        """
        name = exited.program
        before_ms = cutoff_ms(self.redis, exited.wall)
        jobs = hand_back_jobs(self.redis, worker_id, before_ms,
                              f"worker process exited ({exited.how})")
        if jobs:
            logger.warning("%s: %d jobs of its dead process returned to pending: %s", name,
                           len(jobs), ", ".join(jobs),
                           extra={"event": "machine_jobs_handed_back", "program": name,
                                  "requeued_jobs": jobs})

    def _revive(self, infos: Mapping[str, Mapping[str, Any]]) -> None:
        """Start again programs supervisor gave up on, once per ``revive_seconds`` each.

        supervisor stops retrying a program that keeps exiting at start
        (FATAL); on a machine that is usually a dependency that was down
        (Redis, ComfyUI), so after a pause the machine tries again.
        """
        if self.settings.revive_seconds <= 0:
            return
        now = time.monotonic()
        for name, info in infos.items():
            if info["statename"] != "FATAL":
                self._fatal_since.pop(name, None)
                continue
            since = self._fatal_since.setdefault(name, now)
            if now - since >= self.settings.revive_seconds:
                said = self._error_line(name)
                if said is None and (
                        now - since < self.settings.revive_seconds + REASON_GRACE_SECONDS):
                    continue  # its error line may not be readable yet: the next poll
                self._fatal_since[name] = now
                logger.warning("%s is FATAL (%s); starting it again", name,
                               said or self._fatal_reason(info),
                               extra={"event": "machine_revive", "program": name})
                try:
                    self.supervisord.client.start_program(name)
                except MachineError as exc:
                    logger.warning("could not start %s again: %s", name, exc)

    @staticmethod
    def _fatal_reason(info: Mapping[str, Any]) -> str:
        """Why a program kept exiting when its last process wrote no error line (a worker's
        one-line refusal is quoted instead): supervisor's own words (its exit status in a
        FATAL process's info is not the last exit's: 0 was seen for workers that exited 1)."""
        return info.get("spawnerr") or f"exit status {info.get('exitstatus')}"

    def _error_line(self, name: str) -> str | None:
        """The last ``Error:`` line of ``name``'s log (a worker's one-line refusal)."""
        try:
            lines = [line.strip() for line in self.supervisord.client.tail(name, 20)
                     if line.strip()]
        except Exception:  # supervisord busy or stopping: no line to quote
            return None
        said = next((line for line in reversed(lines) if line.startswith("Error:")), None)
        return said[:MAX_REASON_CHARS] if said else None

    def _read_processes(self) -> dict[str, dict[str, Any]] | None:
        try:
            infos = {info["name"]: info for info in self.supervisord.client.processes()}
        except Exception:  # supervisord starting or stopping: report from the last read
            return None
        self.restarts.observe(infos)
        with self._infos_lock:
            self._last_infos = infos
        return infos

    def _safely(self, action: Callable[..., object], *args: object) -> bool:
        """Run a Redis action; log the first failure, then one a minute, then the recovery."""
        try:
            action(*args)
        except redis.RedisError as exc:
            now = time.monotonic()
            if self._redis_down_since is None or now - self._redis_warned >= 60:
                logger.warning("redis unavailable for the machine report: %s", exc,
                               extra={"event": "machine_redis_down"})
                self._redis_warned = now
            if self._redis_down_since is None:
                self._redis_down_since = now
            return False
        if self._redis_down_since is not None:
            logger.info("redis reachable again after %.0fs",
                        time.monotonic() - self._redis_down_since)
            self._redis_down_since = None
        return True

    def _publish(self, emit: bool) -> None:
        if self.redis.hget(machine_key(self.machine_id), "status") == MachineStatus.GONE:
            logger.warning("machine %s had been marked gone (it stopped reporting); its jobs "
                           "were requeued and results of them here are refused",
                           self.machine_id, extra={"event": "machine_returned"})
            emit = True
        # Stamped with Redis's clock, which reapers compare it with (see redis_now_ms).
        publish(self.redis, {**self.report(), "last_report": redis_now_ms(self.redis)}, emit)
        self._published = True

    def _reap(self) -> None:
        for result in reap_gone_machines(self.redis, float(self.settings.stale_seconds or 0),
                                         self.settings.retention_seconds,
                                         exclude=self.machine_id):
            logger.info("reaped machine %s", result["machine_id"],
                        extra={"event": "machine_reaped", "reaped_machine_id": result["machine_id"],
                               "requeued_jobs": result["requeued_jobs"]})

    def _infos(self) -> dict[str, dict[str, Any]]:
        with self._infos_lock:
            return dict(self._last_infos)

    def report(self, infos: Mapping[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        """The status record written to Redis."""
        infos = self._infos() if infos is None else infos
        programs = [{**spec.summary(), **process_fields(infos.get(spec.name))}
                    for spec in self.plan.programs]
        return {
            "machine_id": self.machine_id, "status": MachineStatus.ONLINE,
            "hostname": socket.gethostname(), "pid": os.getpid(),
            "health_url": self.health_url, "started_at": int(self.started_at * 1000),
            "last_report": now_ms(), "uptime_seconds": self.uptime_seconds(),
            # How long this machine may be silent before it is gone (reapers read it).
            "stale_seconds": self.settings.stale_seconds,
            "gpu_source": self.inventory.source,
            "gpus": [gpu.as_dict() for gpu in self.inventory.gpus],
            "workers": [p for p in programs if p["role"] == "worker"],
            "services": [p for p in programs if p["role"] == "service"],
            "log_dropped": self.log_stats()["dropped"],
        }

    def uptime_seconds(self) -> float:
        """Seconds since the machine started, whatever its wall clock did meanwhile."""
        return round(time.monotonic() - self._started_monotonic, 1)

    @property
    def health_url(self) -> str | None:
        if self.health is None:
            return None
        host = self.settings.health_host
        if host in ("0.0.0.0", "::", ""):
            host = socket.gethostname()
        return f"http://{host}:{self.health.port}"

    def log_stats(self) -> dict[str, Any]:
        """Log shipping counters of this process and every program's processes."""
        totals: dict[str, Any] = read_stats(self.stats_dir) if self.stats_dir.exists() else {
            "shipped": 0, "dropped": 0, "rejected": 0, "failures": 0, "processes": 0}
        own = next((h for h in logging.getLogger().handlers if isinstance(h, LogShipper)), None)
        totals["enabled"] = own is not None
        if own is not None:
            stats = own.stats()
            totals["url"] = stats["url"]
            if not (self.stats_dir / f"{os.getpid()}.json").exists():
                for key in ("shipped", "dropped", "rejected", "failures"):
                    totals[key] += stats[key]
        return totals

    # -- what the health server asks ----------------------------------------------------

    def liveness(self) -> dict[str, Any]:
        return {"status": "ok", "machine_id": self.machine_id,
                "uptime_seconds": self.uptime_seconds()}

    def program_names(self) -> list[str]:
        return [spec.name for spec in self.plan.programs]

    def _views(self) -> list[dict[str, Any]]:
        infos = {info["name"]: info for info in self.supervisord.client.processes()}
        self.restarts.observe(infos)
        return program_views(self.plan, infos, self.redis)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        try:
            views = self._views()
        except MachineError as exc:
            return False, {"ready": False, "machine_id": self.machine_id, "error": str(exc)}
        waiting = [self._exiting(entry) for entry in not_ready(views)]
        return not waiting, {"ready": not waiting, "machine_id": self.machine_id,
                             "programs": len(views), "not_ready": waiting}

    def _exiting(self, entry: dict[str, Any]) -> dict[str, Any]:
        """A not-ready entry, its reason saying so when the program exited unexpectedly
        lately: a worker dying after its start period is never FATAL, and "has not
        registered in Redis yet" hid a crash loop."""
        exits = len(self.exits.recent(entry["name"]))
        if not exits:
            return entry
        role = self.plan.program(entry["name"]).role
        minutes = f"{self.exits.window_seconds / 60:g}"
        last = self._last_exit.get(entry["name"]) or self.exits.recent(entry["name"])[-1].how
        reason = (f"{role} keeps exiting: {exits} unexpected exits in the last {minutes} "
                  f"minutes, supervisor restarts it (last: {last})" if exits > 1 else
                  f"{role} exited unexpectedly ({last}); supervisor restarts it")
        return {**entry, "reason": reason, "unexpected_exits": exits}

    def status(self) -> dict[str, Any]:
        """What ``/status`` answers and ``/metrics`` is made of (``machine.metrics``)."""
        views = self._views()
        restarts = self.restarts.counts()
        counters = read_counters(self.counters_dir)
        for view in views:
            view["restarts"] = restarts.get(view["name"], 0)
            if view["role"] == "worker":
                view["job_counts"] = counters["jobs"].get(view["name"],
                                                          dict.fromkeys(JOB_OUTCOMES, 0))
        return {
            "machine_id": self.machine_id, "hostname": socket.gethostname(),
            "status": MachineStatus.ONLINE, "pid": os.getpid(),
            "uptime_seconds": self.uptime_seconds(),
            "started_at": int(self.started_at * 1000),
            "gpus": self.inventory.as_dict(),
            "workers": [v for v in views if v["role"] == "worker"],
            "services": [v for v in views if v["role"] == "service"],
            "supervisor": {"state": self.supervisord.client.state(),
                           "config": str(self.files.config),
                           "socket": str(self.files.socket),
                           "log": str(self.files.supervisord_log),
                           "log_dropped_bytes": self.supervisord.output.dropped_bytes},
            "log_shipping": self.log_stats(),
            "models": {**usage.model_cache(), "downloads": counters["downloads"]},
            "disk": usage.disk(self.run_dir),
            "settings": {"report_seconds": self.settings.report_seconds,
                         "stale_seconds": self.settings.stale_seconds,
                         "workers": self.settings.workers},
        }

    def tail(self, name: str, lines: int) -> list[str]:
        """A program's log tail, or supervisord's own (``logs/supervisord.log``: starts,
        exits, restarts of every program) for ``supervisord``."""
        if name == SUPERVISORD:
            return tail_file(self.files.supervisord_log, lines)
        return self.supervisord.client.tail(self.plan.program(name).name, lines)

    def restart(self, name: str) -> dict[str, Any]:
        program = self.plan.program(name).name
        logger.warning("restarting %s on request", program,
                       extra={"event": "machine_restart", "program": program})
        return process_fields(self.supervisord.client.restart(program))


def _alive(pid: object) -> bool:
    """True when a process of this pid runs on this host (signal 0)."""
    try:
        os.kill(int(pid), 0)  # type: ignore[call-overload]
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def run_machine(settings: MachineSettings,
                announce: Callable[[str], None] = print) -> int:
    """Run the machine until SIGTERM/SIGINT; returns the exit code. Called by ``emp machine``."""
    runtime = MachineRuntime(settings)
    configure_logging("INFO", environ=runtime.log_env())
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    previous = {sig: signal.signal(sig, runtime.request_stop)
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for line in describe(runtime):
            announce(line)
        try:
            runtime.start()
        except MachineError:
            if not runtime.stopped_with_supervisord():
                raise
            logger.info("machine %s stopped during its start", runtime.machine_id,
                        extra={"event": "machine_stopped_starting"})
            return 0
        announce(f"machine {runtime.machine_id} up: health {runtime.health_url} (listening on "
                 f"{runtime.settings.health_host}); supervisord {runtime.files.config}; "
                 f"logs {runtime.files.log_dir}")
        runtime.wait()
    finally:
        runtime.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 1 if runtime.failed else 0


def describe(runtime: MachineRuntime) -> list[str]:
    """What the machine starts, for the terminal."""
    inventory = runtime.inventory
    gpus = ", ".join(f"{g.index}: {g.name} {g.memory_gb:g} GB" for g in inventory.gpus) or "none"
    lines = [f"machine {runtime.machine_id}: GPUs ({inventory.source}) {gpus}"]
    for spec in runtime.plan.programs:
        where = f" GPU {spec.gpu.index}" if spec.gpu else ""
        port = f" port {spec.port}" if spec.port else ""
        who = f" worker {spec.worker_id}" if spec.worker_id else ""
        lines.append(f"  {spec.role} {spec.name}:{who}{where}{port}")
    return lines
