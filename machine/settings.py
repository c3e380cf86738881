"""Settings of one machine, read from the environment in one place (12-factor).

Environment (defaults in brackets):

- ``MACHINE_ID`` [hostname]: letters, digits, ``_ . -``; prefixes every worker id.
- ``WORKERS`` [``simulation:auto``]: the worker plan, see ``machine.plan``.
- ``EMP_MOCK_GPUS`` [unset]: pretend to have this many GPUs (``machine.gpus``), with
  ``EMP_MOCK_GPU_MEMORY_GB`` [24] and ``EMP_MOCK_GPU_MODEL`` [``Mock GPU``].
- ``EMP_HEALTH_HOST`` [0.0.0.0], ``EMP_HEALTH_PORT`` [9090]: the health server;
  ``EMP_HEALTH_TOKEN`` [unset]: when set, ``/logs`` and ``/restart`` need it as a
  bearer token, and so does ``/metrics`` unless ``EMP_METRICS_PUBLIC=1`` opens it to
  scrapers on purpose (the name the other services use).
- ``EMP_MACHINE_RUN_DIR`` [``./.emp/machine-<id>``]: supervisord config, socket, logs.
- ``EMP_MACHINE_REPORT_SECONDS`` [10]: status report period (also the reaper's).
- ``EMP_MACHINE_STALE_SECONDS`` [3 x report period]: a machine silent this long is gone;
  it must be longer than the report period.
- ``EMP_MACHINE_POLL_SECONDS`` [1]: how often supervisor's process states are read;
  a change is reported at once.
- ``EMP_MACHINE_RETENTION_SECONDS`` [86400]: how long an offline or gone machine's
  record is kept.
- ``EMP_WORKER_LOGLEVEL`` [info]: debug, info, warning, error, critical or fatal;
  ``EMP_LOG_MAX_BYTES`` [52428800],
  ``EMP_LOG_BACKUPS`` [5]: each program's log file and its rotation.
- ``EMP_STOP_WAIT_SECONDS`` [20]: how long a program may take to stop before SIGKILL.
- ``EMP_START_RETRIES`` [10]: exits within 2 s of a start before supervisor gives up
  on a program (FATAL).
- ``EMP_REVIVE_SECONDS`` [30]: a program supervisor gave up on (FATAL: it kept
  exiting at start, e.g. while Redis or ComfyUI was down) is started again
  after this long; 0 leaves it FATAL (negative is refused).
- ``COMFYUI_COMMAND`` [unset]: start ComfyUI instance N on port ``COMFYUI_BASE_PORT``
  [8188] + N with this command (``{port}`` and ``{gpu}`` substituted), in
  ``COMFYUI_DIR`` [current directory].
"""

from __future__ import annotations

import math
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

from emp_tasks import defaults
from machine.errors import MachineError
from machine.plan import COMFYUI_BASE_PORT
from machine.supervisor_conf import ProgramOptions

#: Health server port of the original.
HEALTH_PORT = 9090
#: Seconds between status reports (the original's 10 s).
REPORT_SECONDS = 10.0
#: Missed reports after which a machine counts as gone.
STALE_REPORTS = 3
#: Seconds between reads of supervisor's process states.
POLL_SECONDS = 1.0
#: Seconds an offline or gone machine's record is kept.
RETENTION_SECONDS = 24 * 3600
#: Bytes of a program log file before it rotates, and rotated files kept.
LOG_MAX_BYTES = 50 * 1024 * 1024
LOG_BACKUPS = 5
#: Seconds a program may take to stop before it is killed.
STOP_WAIT_SECONDS = 20
#: Quick exits before supervisor marks a program FATAL.
START_RETRIES = 10
#: Seconds before a FATAL program is started again.
REVIVE_SECONDS = 30.0

_MACHINE_ID_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def check_machine_id(machine_id: str) -> str:
    """Return the id, or raise MachineError saying what is wrong with it."""
    if not _MACHINE_ID_RE.fullmatch(machine_id or ""):  # match() took "box\n"
        raise MachineError(f"invalid machine id {machine_id!r}: use 1-64 letters, digits, "
                           "'_', '-' or '.' (set MACHINE_ID)")
    return machine_id


def _float(name: str, default: float) -> float:
    """A finite number, read by ``env_at_least`` (every service's reader): one text means
    the same to the machine as to them. Its floor, if any, is checked by ``FLOORS``."""
    try:
        return defaults.env_at_least(name, default, -math.inf, float, what="a finite number")
    except defaults.SettingError as exc:
        raise MachineError(str(exc)) from None


def _whole(name: str, default: int) -> int:
    """A count, port or size, read by ``env_at_least(..., int)``: a fraction is refused,
    not cut (9090.5 is no port), and so are ``1e3`` and ``10.0``, which ``float`` made
    whole numbers where every other service's reader refuses them."""
    try:
        return defaults.env_at_least(name, default, -math.inf, int)
    except defaults.SettingError:
        raise MachineError(f"{name} must be a whole number, got {defaults.env(name)!r}") from None


#: Settings that must be above a floor: (field, variable, lowest allowed, why).
FLOORS = (
    ("report_seconds", "EMP_MACHINE_REPORT_SECONDS", 0.1,
     "0 made every other machine look silent to this one's reaper"),
    ("poll_seconds", "EMP_MACHINE_POLL_SECONDS", 0.05, "0 is a busy loop"),
    ("stop_wait_seconds", "EMP_STOP_WAIT_SECONDS", 0,
     "below 0 supervisor kills workers at once, before they hand their jobs back"),
    ("retention_seconds", "EMP_MACHINE_RETENTION_SECONDS", 1, "records would never be kept"),
    ("log_max_bytes", "EMP_LOG_MAX_BYTES", 0, "a log file cannot be smaller than empty"),
    ("log_backups", "EMP_LOG_BACKUPS", 0, "a count of files"),
    ("start_retries", "EMP_START_RETRIES", 0, "a count of retries"),
    ("revive_seconds", "EMP_REVIVE_SECONDS", 0, "0 already leaves a FATAL program FATAL"),
)
#: Log levels a worker's ``-l`` takes (Celery's, any case): another one made every worker
#: exit at start, again under supervisor until FATAL, then every EMP_REVIVE_SECONDS.
WORKER_LOGLEVELS = ("debug", "info", "warning", "error", "critical", "fatal")


@dataclass
class MachineSettings:
    """What ``emp machine`` runs; ``from_env`` reads every field."""

    machine_id: str
    workers: str = "simulation:auto"
    redis_url: str = field(default_factory=defaults.redis_url)
    run_dir: Path | None = None
    health_host: str = "0.0.0.0"
    health_port: int = HEALTH_PORT
    health_token: str | None = None
    metrics_public: bool = False
    report_seconds: float = REPORT_SECONDS
    stale_seconds: float | None = None
    poll_seconds: float = POLL_SECONDS
    retention_seconds: float = RETENTION_SECONDS
    worker_loglevel: str = "info"
    log_max_bytes: int = LOG_MAX_BYTES
    log_backups: int = LOG_BACKUPS
    stop_wait_seconds: int = STOP_WAIT_SECONDS
    start_retries: int = START_RETRIES
    revive_seconds: float = REVIVE_SECONDS
    comfyui_command: str | None = None
    comfyui_dir: str | None = None
    comfyui_base_port: int = COMFYUI_BASE_PORT

    def __post_init__(self) -> None:
        check_machine_id(self.machine_id)
        for name, variable, lowest, why in FLOORS:
            value = getattr(self, name)
            try:
                defaults.check_at_least(variable, value, lowest, got=f"{value:g}")
            except defaults.SettingError as exc:
                raise MachineError(f"{exc} ({why})") from None
        if self.worker_loglevel.lower() not in WORKER_LOGLEVELS:
            raise MachineError(f"EMP_WORKER_LOGLEVEL must be one of {', '.join(WORKER_LOGLEVELS)}"
                               f" (any case), got {self.worker_loglevel!r}")
        if not 0 <= self.health_port <= 65535:
            raise MachineError(f"EMP_HEALTH_PORT must be 0-65535, got {self.health_port}")
        if self.comfyui_command and self.comfyui_dir and not Path(self.comfyui_dir).is_dir():
            raise MachineError(f"COMFYUI_DIR {self.comfyui_dir!r} is not a directory (ComfyUI "
                               "runs there, started by COMFYUI_COMMAND)")
        if not 1 <= self.comfyui_base_port <= 65535:
            raise MachineError(f"COMFYUI_BASE_PORT must be 1-65535, got {self.comfyui_base_port}")
        if self.run_dir is None:
            self.run_dir = Path(".emp") / f"machine-{self.machine_id}"
        self.run_dir = Path(self.run_dir).resolve()
        if self.stale_seconds is None:
            self.stale_seconds = STALE_REPORTS * self.report_seconds
        elif not self.stale_seconds > self.report_seconds:
            # Machines sharing the setting would mark each other gone between reports.
            raise MachineError(f"EMP_MACHINE_STALE_SECONDS ({self.stale_seconds:g}) must be "
                               f"longer than EMP_MACHINE_REPORT_SECONDS "
                               f"({self.report_seconds:g}): a machine silent that long "
                               "between two reports would be marked gone, its jobs requeued")

    @classmethod
    def from_env(cls, **overrides: object) -> MachineSettings:
        """Settings from the environment; ``overrides`` that are not None win."""
        values: dict[str, object] = {
            "machine_id": defaults.env("MACHINE_ID") or socket.gethostname(),
            "workers": defaults.env("WORKERS", "simulation:auto"),
            "run_dir": defaults.env("EMP_MACHINE_RUN_DIR"),
            "health_host": defaults.env("EMP_HEALTH_HOST", "0.0.0.0"),
            "health_port": _whole("EMP_HEALTH_PORT", HEALTH_PORT),
            "health_token": defaults.env("EMP_HEALTH_TOKEN"),
            "metrics_public": defaults.env_flag("EMP_METRICS_PUBLIC"),
            "report_seconds": _float("EMP_MACHINE_REPORT_SECONDS", REPORT_SECONDS),
            "stale_seconds": _float("EMP_MACHINE_STALE_SECONDS", 0.0) or None,
            "poll_seconds": _float("EMP_MACHINE_POLL_SECONDS", POLL_SECONDS),
            "retention_seconds": _float("EMP_MACHINE_RETENTION_SECONDS", RETENTION_SECONDS),
            "worker_loglevel": defaults.env("EMP_WORKER_LOGLEVEL", "info"),
            "log_max_bytes": _whole("EMP_LOG_MAX_BYTES", LOG_MAX_BYTES),
            "log_backups": _whole("EMP_LOG_BACKUPS", LOG_BACKUPS),
            "stop_wait_seconds": _whole("EMP_STOP_WAIT_SECONDS", STOP_WAIT_SECONDS),
            "start_retries": _whole("EMP_START_RETRIES", START_RETRIES),
            "revive_seconds": _float("EMP_REVIVE_SECONDS", REVIVE_SECONDS),
            "comfyui_command": defaults.env("COMFYUI_COMMAND"),
            "comfyui_dir": defaults.env("COMFYUI_DIR"),
            "comfyui_base_port": _whole("COMFYUI_BASE_PORT", COMFYUI_BASE_PORT),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    def program_options(self) -> ProgramOptions:
        """The supervisor settings every program of the machine gets."""
        return ProgramOptions(self.log_max_bytes, self.log_backups, self.stop_wait_seconds,
                              self.start_retries)
