"""Run a program that dies with its parent: ``python -m machine.lifeline <spec.json>``.

The spec file holds ``{"command": [...], "env": {...}}``. supervisord starts
each program through this launcher and ``emp machine`` starts supervisord
through it. The launcher asks Linux to SIGKILL the process when its parent
dies (``PR_SET_PDEATHSIG``, kept across ``exec``), then execs the command with
the extra environment. So a machine killed outright (SIGKILL, OOM killer)
takes its supervisord and every worker and service with it, instead of
leaving orphans that keep claiming jobs; its jobs come back through the
reaper or lease expiry. Celery's pool processes already exit when their
worker's main process dies. Elsewhere than Linux this is a plain exec.

A spec file, not arguments, because supervisord's config format mangles
values holding `` ;``, `` #`` or ``%`` and the environment line cannot quote
every value; JSON carries any command and environment as they are.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from pathlib import Path
from typing import NoReturn

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Have the kernel send ``sig`` to this process when its parent exits; False if unsupported.

    Exits at once if the parent is already gone (it died before the request).
    """
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        return False
    if os.getppid() != parent:
        os._exit(1)
    return True


def write_spec(path: Path, command: list[str], env: dict[str, str] | None = None) -> list[str]:
    """Write a spec file (mode 600); returns the argv that runs it through this launcher."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"command": command, "env": env or {}}, indent=2))
    path.chmod(0o600)
    return [sys.executable, "-m", "machine.lifeline", str(path)]


def main(argv: list[str]) -> NoReturn:
    """Read the spec, arrange to die with the parent, exec the command."""
    if len(argv) != 1:
        sys.exit("usage: python -m machine.lifeline <spec.json>")
    spec = json.loads(Path(argv[0]).read_text())
    command, env = list(spec["command"]), {**os.environ, **spec.get("env", {})}
    die_with_parent()
    os.execvpe(command[0], command, env)


if __name__ == "__main__":
    main(sys.argv[1:])
