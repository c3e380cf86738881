"""The ``emp`` command's entry point: the command line, once its modules are imported.

Modules read their settings from the environment when imported, so a malformed one (say
``EMP_MAX_PAYLOAD_BYTES=1MB``) fails before click runs: this makes it one line naming the
setting and exit status 2, as click answers a bad option, instead of a traceback from
every command, ``emp --help`` included. A module of its own, outside the packages: a
module inside them imports its package, which may read settings, before it could catch.
``python -m emp_tasks.cli`` comes through here too (its first lines call ``main``).
"""

from __future__ import annotations

import sys

#: Commands whose process gevent must patch before any other import (``webapp.serve``).
GEVENT_COMMANDS = ("api",)


def command_of(argv: list[str]) -> str | None:
    """The subcommand ``argv`` (without the program) names, past the group's only option
    (``--redis-url``, which takes a value); None for none (``emp --help``)."""
    args = iter(argv)
    for arg in args:
        if arg == "--redis-url":
            next(args, None)
        elif not arg.startswith("-"):
            return arg
    return None


def main() -> None:
    if command_of(sys.argv[1:]) in GEVENT_COMMANDS:
        # Before anything imports ssl (redis-py, requests do, via the command line's own
        # imports): gevent patched later, in gunicorn's worker, warned once per worker
        # that ssl was imported unpatched. The forked workers inherit the patched modules.
        from gevent import monkey

        monkey.patch_all()
    try:
        from emp_tasks.cli import main as command_line
    except ValueError as exc:
        if type(exc).__name__ != "SettingError":  # capability_router.env's, not imported
            raise
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(2)
    command_line()
