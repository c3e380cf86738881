"""Which Redis a command or the Python API talks to, decided in this one place.

Order: an explicit URL (``--redis-url``), ``EMP_REDIS_URL``, the original's
``REDIS_URL``, the stack a running ``emp up`` recorded (``stack_state``),
then the default, which is ``emp up``'s own port (6390). A stale record is
never used, and a URL that does not answer is an error naming it, never a
reason to try another server.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import redis
from kombu.utils.url import maybe_sanitize_url
from redis.backoff import NoBackoff
from redis.retry import Retry

from capability_router.cluster import SOCKET_TIMEOUT_ENV, SOCKET_TIMEOUT_SECONDS
from capability_router.errors import EmpError
from capability_router.whole_numbers import is_whole
from emp_tasks import defaults, stack_state

log = logging.getLogger(__name__)


class RedisUnreachable(EmpError):
    """No Redis answers at the URL a command resolved."""


@dataclass(frozen=True)
class RedisLocation:
    """A Redis URL and, for messages, where it came from."""

    url: str
    #: e.g. "--redis-url", "EMP_REDIS_URL", "the emp up running as pid 12 (...)", "the default"
    source: str
    #: Something the user should hear about, such as a stale record that was ignored.
    note: str = ""

    @property
    def shown(self) -> str:
        """The URL without its password (also when it does not parse: a port past 65535)."""
        try:
            return maybe_sanitize_url(self.url)
        except ValueError:
            return _PASSWORD.sub(r"\1**@", self.url)


#: The password of a URL kombu cannot parse, for ``shown``.
_PASSWORD = re.compile(r"^([a-z+]+://[^:/@]*:)[^@]*@")


def url_problem(url: str) -> str | None:
    """What makes a ``redis://`` or ``rediss://`` URL unusable, or None. Its clients read
    it differently: redis-py takes a database that is no number as database 0 ("/abc")
    or joins its digits ("/1/2" is database 12), where kombu and Celery's result backend
    refuse it at their first use. So ``emp api`` started on "/abc" and answered every
    submit with a 500, the webhook service ran on database 0, and ``emp worker`` and
    ``emp submit`` ended in a traceback."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        return None  # redis-py's own check names the schemes it takes
    try:
        parts.port  # noqa: B018 - raises ValueError: not a number, or past 65535
    except ValueError as exc:
        return f"port: {exc}"
    database = parts.path.removeprefix("/")
    if database and not is_whole(database):
        return (f"the database (the URL's path) must be a number such as /0, "
                f"got {parts.path!r}")
    return None


def checked(location: RedisLocation) -> RedisLocation:
    """``location``; RedisUnreachable naming its source when its URL does not parse."""
    problem = url_problem(location.url)
    if problem:
        raise RedisUnreachable(f"{location.shown} ({location.source}) is not a Redis URL: "
                               f"{problem}")
    return location


def locate_redis(explicit: str | None = None) -> RedisLocation:
    """Resolve the Redis URL; ``explicit`` is a ``--redis-url`` value. RedisUnreachable
    for a given URL that does not parse (``url_problem``)."""
    given = [("--redis-url", explicit)] + [(name, defaults.env(name))
                                           for name in ("EMP_REDIS_URL", "REDIS_URL")]
    for source, value in given:
        if value:
            return checked(RedisLocation(value, source))
    path = stack_state.state_path()
    try:
        state = stack_state.read()
    except EmpError as exc:
        return RedisLocation(defaults.REDIS_URL, "the default", f"ignored {exc}")
    if state is None:
        return RedisLocation(defaults.REDIS_URL, "the default")
    if state.alive:
        return RedisLocation(state.redis_url, f"the emp up running as pid {state.pid}, {path}")
    return RedisLocation(defaults.REDIS_URL, "the default",
                         f"ignored {path}: the emp up it names (pid {state.pid}) is not running")


def redis_url() -> str:
    """The resolved URL for the Python API; logs a warning about a stale record."""
    location = locate_redis()
    if location.note:
        log.warning("emp: %s; using %s", location.note, location.shown)
    return location.url


def _hint(location: RedisLocation) -> str:
    if location.source == "the default":
        return ("start the local stack with `emp up`, or point at your Redis with "
                "EMP_REDIS_URL=redis://host:port/0 (or --redis-url)")
    if location.source.startswith("the emp up"):
        return "restart `emp up`, or set EMP_REDIS_URL (or --redis-url) to another Redis"
    return (f"start that Redis or correct {location.source}; without it, commands use the "
            "stack `emp up` starts")


def _login_refused(location: RedisLocation, exc: redis.AuthenticationError) -> str:
    """A Redis that answers but refuses the URL's login: the fix is the URL's password,
    not starting a Redis ("no Redis answers ... Fix: start that Redis", said before)."""
    parts = urlsplit(location.url)
    if parts.password is None and not parts.username:
        reason = "it needs a password, and the URL gives none"
    else:
        reason = str(exc).rstrip(".")
    return (f"Redis at {location.shown} ({location.source}) refused the login: {reason}. "
            f"Fix: put its password in the URL, redis://:PASSWORD@host:port/0 (or "
            f"redis://USER:PASSWORD@... for an ACL user).")


def require_redis(location: RedisLocation, timeout: float | None = None) -> None:
    """Raise RedisUnreachable (one line: URL, reason, fix) unless Redis answers a PING.

    :param timeout: connect and read timeout, seconds; no retries. By default a quick 1 s
        (a refused connection fails at once anyway), or ``EMP_REDIS_SOCKET_TIMEOUT`` when
        the operator set it: for a far or slow Redis the command after the check waits
        that long, so the check must not refuse first.
    """
    if timeout is None:
        timeout = SOCKET_TIMEOUT_SECONDS if defaults.env(SOCKET_TIMEOUT_ENV) else 1.0
    try:
        client = redis.Redis.from_url(location.url, socket_connect_timeout=timeout,
                                      socket_timeout=timeout, retry=Retry(NoBackoff(), 0))
    except ValueError as exc:
        raise RedisUnreachable(f"{location.shown} ({location.source}) is not a Redis URL: "
                               f"{exc}") from None
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise RedisUnreachable(_login_refused(location, exc)) from None
    except (redis.RedisError, OSError) as exc:
        note = f"; {location.note}" if location.note else ""
        reason = str(exc).replace(location.url, location.shown).rstrip(".") or type(exc).__name__
        raise RedisUnreachable(
            f"no Redis answers at {location.shown} ({location.source}{note}): {reason}. "
            f"Fix: {_hint(location)}.") from None
    finally:
        client.close()
