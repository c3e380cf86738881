"""The operators' monitor (``emp monitor``, port 3333): Flower extended with GPU queue views.

``create_monitor`` builds it the way ``celery flower`` builds Flower, so
every Flower option (command line, ``FLOWER_*`` variables, ``--conf`` file)
works, including its authentication; ``run`` serves it until stopped.
"""

from __future__ import annotations

import atexit
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

DEFAULT_PORT = 3333
DEFAULT_ADDRESS = "127.0.0.1"
#: Tasks Flower keeps in memory for its Tasks page (``--max_tasks``, ``FLOWER_MAX_TASKS``),
#: the most recently active first. Each costs ~7 KB (its event fields, Flower's search
#: index entry, the task heap's entries; tracemalloc under the production bench), so at
#: Celery's 10,000 the monitor grew ~10 MB every 30 s for its first 10,000 jobs and had
#: not levelled off when the bench's load ended; 2,000 is ~14 MB, full within a minute
#: at 100 jobs/s, and twice the jobs that bench runs at once (a running job whose last
#: event is older than 2,000 others' leaves the Tasks page). Every job stays readable
#: from Redis on its Jobs page.
DEFAULT_MAX_TASKS = 2_000
logger = logging.getLogger(__name__)


class MonitorOptionError(ValueError):
    """A command-line argument that is not one of Flower's options."""


def flower_options(argv: Sequence[str], port: int | None, address: str | None) -> Any:
    """Flower's options from its defaults, ``FLOWER_*``, its config file and ``argv``."""
    from flower.command import apply_env_options, apply_options, is_flower_option
    from flower.options import options

    unknown = [a for a in argv if not a.startswith("--") or not is_flower_option(a)]
    if unknown:
        raise MonitorOptionError(f"not a Flower option: {unknown[0]!r} (Flower's options are "
                                 "written --name=value, e.g. --basic_auth=user:password)")
    options.port = DEFAULT_PORT
    options.address = DEFAULT_ADDRESS  # Flower binds every interface; the API does not either
    options.max_tasks = DEFAULT_MAX_TASKS
    check_flower_env(options)
    apply_env_options()
    apply_options("emp monitor", list(argv))
    if port is not None:
        options.port = port
    if address is not None:
        options.address = address
    check_flower_values(options)
    return options


def check_flower_values(options: Any) -> None:
    """MonitorOptionError for a Flower option Flower takes but cannot use: a
    ``--basic_auth`` entry without ``user:password`` matched no login (Flower compares
    the decoded ``user:password`` with each entry), so the monitor started and refused
    everyone, its operator included; a negative ``--max_tasks``."""
    for entry in options.basic_auth or []:
        user, colon, _ = entry.partition(":")
        if not user or not colon:
            raise MonitorOptionError(f"--basic_auth (or FLOWER_BASIC_AUTH): {entry!r} is not "
                                     "user:password (several: a comma list)")
    if options.max_tasks is not None and options.max_tasks < 0:
        raise MonitorOptionError(f"--max_tasks (or FLOWER_MAX_TASKS) must be at least 0, got "
                                 f"{options.max_tasks}")


def check_flower_env(options: Any) -> None:
    """SettingError naming the first ``FLOWER_*`` variable Flower cannot convert to its
    option's type: Flower's own ``apply_env_options`` raised a traceback naming neither
    the variable nor what it takes ("invalid truth value 'maybe'"). Flower takes its
    flags' words (y, yes, t, true, on, 1 and n, no, f, false, off, 0); the error names
    the ones every other flag of the project takes too."""
    import os

    from flower.command import ENV_VAR_PREFIX, is_flower_envvar, strtobool

    from emp_tasks.defaults import SettingError, flag_error

    kinds = {int: "an integer", float: "a number"}
    for name in filter(is_flower_envvar, os.environ):
        key = name[len(ENV_VAR_PREFIX):].lower()
        option = options._options.get(key) or options._options.get(key.replace("_", "-"))
        if option is None or option.type not in (bool, *kinds):
            continue
        text = os.environ[name]
        convert = strtobool if option.type is bool else option.type
        try:
            for item in text.split(",") if option.multiple else [text]:
                convert(item)
        except ValueError:
            if option.type is bool:
                raise flag_error(name, text) from None
            raise SettingError(f"{name} must be {kinds[option.type]} (Flower's "
                               f"--{key}), got {text!r}") from None


def create_monitor(argv: Sequence[str] = (), redis_url: str | None = None,
                   port: int | None = None, address: str | None = None,
                   address_setting: str = "--host") -> Any:
    """Build the monitor application (not yet listening); ``address_setting`` names where
    ``address`` came from, for the error when it cannot be listened on."""
    from flower.command import extract_settings, setup_logging
    from flower.urls import settings

    from capability_router.cluster import SOCKET_TIMEOUT_SECONDS
    from emp_tasks import defaults
    from emp_tasks.app import create_app as create_celery_app
    from webapp.api.events import EventHub
    from webapp.backend import Backend
    from webapp.listen import check_host
    from webapp.monitor import metrics, quiet
    from webapp.monitor.app import EmpMonitor
    from webapp.monitor.live import backlog_limit
    from webapp.monitor.state import MonitorState

    options = flower_options(argv, port, address)
    check_host(options.address, address_setting if address is not None
               else "--address (or FLOWER_ADDRESS)")
    extract_settings()
    setup_logging()
    logging.getLogger("kombu.mixins").addFilter(_one_line)
    url = redis_url or defaults.redis_url()
    prefix = "/" + options.url_prefix.strip("/") if options.url_prefix else ""
    state = MonitorState(Backend.connect(url), EventHub(url), url_prefix=prefix)
    metrics.register(url, outage=state.outage)  # a scrape shares the handlers' outage
    metrics.bound_flower_senders()
    metrics.pools_file()  # read now: a broken edit later keeps this version, as routing does
    backlog_limit()  # read now: a bad EMP_SSE_BACKLOG stops the start, not every stream
    capp = create_celery_app(url)
    # Flower's /api/task/result reads Celery's result backend, which waits 120 s on a hung
    # Redis (Celery's default); the monitor's other Redis calls give up after 5 s.
    capp.conf.redis_socket_timeout = SOCKET_TIMEOUT_SECONDS
    capp.conf.redis_socket_connect_timeout = SOCKET_TIMEOUT_SECONDS
    quiet.install(capp)  # Flower's "Failed to enable events", once per outage
    return EmpMonitor(options, capp, state, **settings)


def _one_line(record: logging.LogRecord) -> bool:
    """Flower's event capture (kombu's ConsumerMixin) logs each failed reconnect to a
    hung or lost Redis with a traceback of kombu's internals: keep its one line ("Broker
    connection error, trying again in N seconds: ..."), as the monitor logs an outage."""
    record.exc_info, record.exc_text = None, None
    return True


def run(argv: Sequence[str] = (), redis_url: str | None = None, port: int | None = None,
        address: str | None = None, address_setting: str = "--host") -> None:
    """Serve the monitor until SIGTERM or Ctrl-C."""
    monitor = create_monitor(argv, redis_url=redis_url, port=port, address=address,
                             address_setting=address_setting)
    atexit.register(monitor.stop)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    bound = monitor.start_http_server()
    options = monitor.options
    if not (options.basic_auth or options.auth):
        # Read-only refuses every action: what is open then is reading, not acting.
        exposed = ("read every job's payload, result and error (--read_only refuses the "
                   "actions)" if options.read_only else "cancel, retry and submit jobs")
        logger.warning("NO MONITOR AUTHENTICATION CONFIGURED: anyone who can reach port %s can "
                       "%s. Use --basic_auth=user:password or --auth (Flower's options)%s.",
                       bound, exposed, "" if options.read_only else ", or --read_only")
    logger.info("EMP monitor (Flower %s) on http://%s:%s%s", _flower_version(),
                options.address or "127.0.0.1", bound, monitor.emp.url_prefix + "/")
    try:
        monitor.start()
    except (KeyboardInterrupt, SystemExit):
        pass


def _flower_version() -> str:
    import flower

    return flower.__version__
