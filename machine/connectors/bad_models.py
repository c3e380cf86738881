"""A model the service lists but cannot load here: the error that says which.

A loader that fails on a file its own server lists (empty, truncated,
corrupt, gone) is a MODEL error, but of this worker's copy only: another
worker's copy may be good. The connector raises ModelUnusableHere naming the
models (every alias, per service) and stops reporting them; the worker then
re-registers its profile without them (emp_tasks.bad_models), so a retry of
a job that requires the model can only go to a worker that still has it.
"""

from __future__ import annotations

from typing import Any

from machine.connectors.base import ConnectorError, ErrorType


class ModelUnusableHere(ConnectorError):
    """A MODEL error naming the models that cannot be loaded on this worker.

    :param bad_models: ``{service: [model, ...]}``, aliases included.
    :param retry_elsewhere: the job's requirements name one of them, so once
        the worker stops advertising it a retry goes elsewhere: retryable.
    """

    def __init__(self, message: str, bad_models: dict[str, list[str]],
                 retry_elsewhere: bool = False, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, ErrorType.MODEL,
                         {**(details or {}), "bad_models": bad_models,
                          "retry_elsewhere": retry_elsewhere})
        self.bad_models = bad_models
        self.retry_elsewhere = retry_elsewhere

    @property
    def retryable(self) -> bool:
        return self.retry_elsewhere
