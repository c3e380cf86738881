"""What a server process does as soon as it is told to stop, before its connections end.

gunicorn's gevent worker (``webapp.graceful``) runs each hook, each in its own
greenlet, when SIGTERM or SIGINT reaches it; the app registers them as it is
built, in the worker. Outside gunicorn nothing runs them.
"""

from __future__ import annotations

from collections.abc import Callable

_HOOKS: list[Callable[[], None]] = []


def at_stop(hook: Callable[[], None]) -> None:
    """Run ``hook`` when this process is told to stop (once, however often registered:
    a process may build its app more than once)."""
    if hook not in _HOOKS:
        _HOOKS.append(hook)


def stop_hooks() -> list[Callable[[], None]]:
    """The hooks registered in this process, in order."""
    return list(_HOOKS)
