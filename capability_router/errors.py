"""The project's one root exception and its family."""


class EmpError(Exception):
    """Root of every error this project raises on purpose."""


class InvalidJob(EmpError, ValueError):
    """A job or its requirements are malformed; nothing was written."""


class InvalidProfile(EmpError, ValueError):
    """A worker capability profile is malformed."""


class JobNotFound(EmpError, KeyError):
    """No job record with that id."""

    def __str__(self) -> str:
        return f"job {self.args[0]!r} not found"


class JobCancelled(EmpError):
    """Raised inside a task whose job was cancelled while it ran."""


class RetryRefused(EmpError):
    """A retry the job record refused (the attempt was taken away, or the job ended)."""

    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(job_id, status)
        self.job_id, self.status = job_id, status

    def __str__(self) -> str:
        return f"retry of job {self.job_id!r} refused: the job is {self.status}"


class LibraryError(EmpError):
    """The Redis Function library could not be loaded or is incompatible."""
