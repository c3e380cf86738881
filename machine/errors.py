"""Errors of the machine runtime (under the project's root exception)."""

from __future__ import annotations

from capability_router.errors import EmpError


class MachineError(EmpError):
    """The machine runtime cannot start or run as configured."""


class PlanError(MachineError, ValueError):
    """A ``WORKERS`` plan is malformed or cannot be met; the message names the item."""


class UnknownProgram(MachineError, KeyError):
    """No supervised program (worker or service) has that name."""

    def __str__(self) -> str:
        return f"unknown service {self.args[0]!r}"
