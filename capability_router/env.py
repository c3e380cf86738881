"""Settings from the environment: empty counts as unset, a malformed number is named.

Here rather than in ``emp_tasks.defaults`` (which re-exports these) because modules of
this package read their settings when imported, and importing ``emp_tasks`` from them
would be circular.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar


def env(name: str, default: str | None = None, *,
        environ: Mapping[str, str] | None = None) -> str | None:
    """Read ``name`` from the environment (``environ``: a mapping standing for it, such as
    the one a child process will get); empty counts as unset."""
    value = (os.environ if environ is None else environ).get(name)
    return value if value else default


_N = TypeVar("_N", int, float)


class SettingError(ValueError):
    """A setting in the environment that cannot be read; the message names it. Raised
    also while modules are imported (they read their settings then), which is why the
    ``emp`` command catches it around its own import (``emp_command``)."""


def env_number(name: str, default: float, convert: Callable[[Any], _N], kind: str, *,
               environ: Mapping[str, str] | None = None) -> _N:
    """``name`` converted by ``convert``, ``default`` when unset or empty; a malformed value
    raises SettingError (a ValueError) naming the variable (``kind``: "an integer", "a number").
    ``environ`` as for ``env``."""
    text = env(name, environ=environ)
    if text is None:
        return convert(default)
    try:
        return convert(text)
    except ValueError:  # int()'s and float()'s own messages do not name the variable
        raise SettingError(f"{name} must be {kind}, got {text!r}") from None


def env_int(name: str, default: int) -> int:
    """``name`` as an integer, ``default`` when unset; a malformed value raises ValueError
    naming the variable."""
    return env_number(name, default, int, "an integer")


def env_float(name: str, default: float) -> float:
    """``name`` as a number, ``default`` when unset; a malformed value raises ValueError
    naming the variable."""
    return env_number(name, default, float, "a number")


def env_at_least(name: str, default: float, low: float, convert: Callable[[Any], _N] = float,
                 *, above: bool = False, what: str | None = None,
                 environ: Mapping[str, str] | None = None) -> _N:
    """``name`` as a finite number of at least ``low`` (above it with ``above``), ``default``
    when unset; anything else raises SettingError naming the variable. For counts and
    durations a service only misbehaves on later (a 0 s lease, 0 processes). ``what``
    words the bound in the error ("a positive number of GB"); by default "at least 1"
    or "above 0". ``environ`` as for ``env``."""
    value = env_number(name, default, convert, "an integer" if convert is int else "a number",
                       environ=environ)
    return check_at_least(name, value, low, above=above, what=what,
                          got=repr(env(name, environ=environ)))


def check_at_least(name: str, value: _N, low: float, *, above: bool = False,
                   what: str | None = None, got: str | None = None) -> _N:
    """``value`` of setting ``name`` when it is a finite number of at least ``low`` (above
    it with ``above``), else SettingError naming the setting and ``got`` (the value as
    given; ``value`` itself by default). ``env_at_least``'s check, for a value that may
    have come from elsewhere (an option, a constructor)."""
    if value != value or value in (math.inf, -math.inf) or value < low or (
            above and value == low):
        bound = what or f"{'above' if above else 'at least'} {low:g}"
        raise SettingError(f"{name} must be {bound}, got {repr(value) if got is None else got}")
    return value


#: Words an on/off setting takes (any case, spaces around); empty or unset is its default.
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


#: The words an on/off setting takes, as its errors list them.
FLAG_WORDS = f"one of {', '.join(TRUE_WORDS)} (on) or {', '.join(FALSE_WORDS)} (off)"


def flag_error(name: str, text: str) -> SettingError:
    """The error for ``name`` set to ``text``, which is neither a true nor a false word."""
    return SettingError(f"{name} must be {FLAG_WORDS}, got {text!r}")


def env_flag(name: str, default: bool = False) -> bool:
    """``name`` as on/off, ``default`` when unset or empty. Any other word raises
    SettingError naming the variable and the words: a misspelt ``ture`` used to mean off
    without a word, and the operator learnt it from what the service then did."""
    return flag_value(name, env(name), default)


def flag_value(name: str, text: str | None, default: bool = False) -> bool:
    """``env_flag`` for a value read from elsewhere (a mapping standing for the
    environment): ``text`` is the value of setting ``name``."""
    text = (text or "").strip()
    if not text:
        return default
    if text.lower() in TRUE_WORDS:
        return True
    if text.lower() in FALSE_WORDS:
        return False
    raise flag_error(name, text)
