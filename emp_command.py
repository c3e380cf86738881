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


def main() -> None:
    try:
        from emp_tasks.cli import main as command_line
    except ValueError as exc:
        if type(exc).__name__ != "SettingError":  # capability_router.env's, not imported
            raise
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(2)
    command_line()
