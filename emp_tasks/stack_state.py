"""Where a running ``emp up`` tells other shells and programs its addresses.

``$XDG_STATE_HOME/emp/stack.json`` (``~/.local/state/emp/stack.json`` when
XDG_STATE_HOME is unset) holds ``pid``, ``redis_url``, ``services`` and
``data_dir``. ``emp up`` writes it once its stack is ready and removes it when
it exits; a record whose pid is gone (``emp up`` was killed) is stale and is
never used. ``emp up``'s data folder defaults to ``up/`` beside it, outside
any source tree.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from capability_router.errors import EmpError


def state_dir() -> Path:
    """``$XDG_STATE_HOME/emp``, else ``~/.local/state/emp``."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "emp"


def state_path() -> Path:
    """The record of the running ``emp up``."""
    return state_dir() / "stack.json"


def default_data_dir() -> Path:
    """``emp up``'s Redis data and logs when ``--data-dir`` is not given."""
    return state_dir() / "up"


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` exists (owned by anyone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0


@dataclass
class StackState:
    """What ``emp up`` records: its pid, its Redis, its services' URLs and its data folder."""

    pid: int
    redis_url: str
    services: dict[str, str] = field(default_factory=dict)
    data_dir: str = ""

    @property
    def alive(self) -> bool:
        return pid_alive(self.pid)


def read() -> StackState | None:
    """The recorded stack, alive or stale; None without a record. EmpError if unreadable."""
    path = state_path()
    try:
        data = json.loads(path.read_text())
        return StackState(pid=int(data["pid"]), redis_url=str(data["redis_url"]),
                          services=dict(data.get("services") or {}),
                          data_dir=str(data.get("data_dir") or ""))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EmpError(f"unreadable {path}: {exc}") from None


def running() -> StackState | None:
    """The recorded stack if its ``emp up`` is still running."""
    try:
        state = read()
    except EmpError:
        return None
    return state if state is not None and state.alive else None


@contextmanager
def recorded(state: StackState) -> Iterator[bool]:
    """Record ``state`` for as long as the block runs; yields False (and records nothing)
    while another running ``emp up`` holds the record."""
    other = running()
    if other is not None and other.pid != state.pid:
        yield False
        return
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{state.pid}")
    temporary.write_text(json.dumps(asdict(state), indent=2) + "\n")
    os.replace(temporary, path)
    try:
        yield True
    finally:
        forget(state.pid)


def forget(pid: int) -> None:
    """Remove the record if it is ``pid``'s."""
    try:
        state = read()
    except EmpError:
        return
    if state is not None and state.pid == pid:
        state_path().unlink(missing_ok=True)
