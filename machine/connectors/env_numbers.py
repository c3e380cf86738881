"""The connector variables that hold numbers, checked where they are read from the environment.

A connector's ``from_settings`` converts its settings with ``float()``/``int()``, so a
malformed variable ended a worker's start with a bare ValueError that named no variable
("could not convert string to float: 'abc'"), and values no connector can work with (a
failure rate of 2, a 0 s ComfyUI timeout, which silently became the default) were taken.
Here each one is refused as a validation error naming its variable. The same rules
check the numbers a job's payload sets (``Rule.number``: the simulation connector's
overrides, the ``echo`` job's arguments).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from machine.connectors.base import ConnectorError, ErrorType


@dataclass(frozen=True)
class Rule:
    """What a number setting must be: whole or not, its lowest value (``low``, allowed
    unless ``above``) and its highest (None: no limit)."""

    whole: bool = False
    low: float | None = 0.0
    above: bool = False
    high: float | None = None

    def describe(self) -> str:
        kind = "a whole number" if self.whole else "a number"
        if self.low is None:
            return kind
        if self.above:
            return f"{kind} above {self.low:g}"
        if self.high is not None:
            return f"{kind} from {self.low:g} to {self.high:g}"
        return f"{kind} from {self.low:g}"

    def number(self, value: object) -> float | None:
        """``value`` (a JSON value, say a job payload's) as the number this rule takes,
        else None; a boolean is not a number here, though Python's ``int(True)`` is 1."""
        if isinstance(value, bool) or not self.accepts(str(value).strip()):
            return None
        return float(str(value).strip())

    def accepts(self, raw: str) -> bool:
        try:
            value = float(raw)
        except ValueError:
            return False
        if not math.isfinite(value) or (self.whole and not value.is_integer()):
            return False
        if self.low is not None and (value <= self.low if self.above else value < self.low):
            return False
        return self.high is None or value <= self.high


POSITIVE = Rule(above=True)
NOT_NEGATIVE = Rule()

#: Settings key -> rule, for every connector key that holds a number.
RULES: dict[str, Rule] = {
    # ComfyUI
    "timeout_seconds": POSITIVE, "startup_timeout_seconds": POSITIVE,
    "stop_wait_seconds": POSITIVE, "gpu_memory_gb": POSITIVE, "model_size_gb": POSITIVE,
    # simulation
    "duration_seconds": NOT_NEGATIVE, "steps": Rule(whole=True, low=1),
    "progress_interval_seconds": NOT_NEGATIVE, "failure_rate": Rule(high=1),
    "seed": Rule(whole=True, low=None), "ram_gb": NOT_NEGATIVE,
    "ram_load_seconds": NOT_NEGATIVE, "disk_load_seconds": NOT_NEGATIVE,
    "download_mb_per_second": POSITIVE,
}


def check_numbers(settings: Mapping[str, str], variables: Mapping[str, str]) -> None:
    """ConnectorError (validation) naming the first variable whose value its rule refuses.

    :param settings: settings key -> the raw value read from the environment.
    :param variables: settings key -> the variable it was read from.
    """
    for key, raw in settings.items():
        rule = RULES.get(key)
        if rule is not None and not rule.accepts(str(raw).strip()):
            raise ConnectorError(f"{variables[key]} must be {rule.describe()}, got {raw!r}",
                                 ErrorType.VALIDATION, {"variable": variables[key]})
