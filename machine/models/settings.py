"""The model settings read from the environment, checked: ``emp worker`` reads them all at
start on a machine with a model cache, so a bad one stops the start with one line naming
it instead of failing every job that needs a model (``EMP_MODEL_CACHE_GB=0`` made each
one a permanent ``model`` error: larger than the budget).
"""

from __future__ import annotations

import os

from emp_tasks import defaults


def positive(name: str, default: float, kind: str) -> float | int:
    """``name`` as a number above 0 (an integer when ``default`` is one), ``default``
    when unset; SettingError naming the variable and ``kind`` (the bound in its words,
    "a positive number of GB") otherwise."""
    convert = int if isinstance(default, int) else float
    return defaults.env_at_least(name, default, 0, convert, above=True, what=kind)


def check_settings() -> None:
    """Read every model setting and make the cache's folders (a file written and removed
    there: the folder is usable); ValueError naming the first bad one."""
    import machine.models.download  # noqa: F401 - its settings are read at import
    from machine.connectors.base import ConnectorError
    from machine.models.cache import ModelCache
    from machine.models.manager import budget_bytes_from_env

    budget = budget_bytes_from_env()
    root = defaults.env("EMP_MODEL_CACHE_DIR")
    if not root:
        return
    try:
        probe = ModelCache(root, budget).root / ".locks" / f".probe.{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"EMP_MODEL_CACHE_DIR {root} cannot be used: "
                         f"{exc.strerror or exc}") from None
    except ConnectorError as exc:  # its folders could not be made
        raise ValueError(f"EMP_MODEL_CACHE_DIR {root} cannot be used: "
                         f"{exc.details.get('reason', exc.message)}") from None
