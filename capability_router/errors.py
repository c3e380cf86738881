"""The project's one root exception and its family."""


class EmpError(Exception):
    """Root of every error this project raises on purpose."""


class InvalidJob(EmpError, ValueError):
    """A job or its requirements are malformed; nothing was written."""


class Unroutable(InvalidJob):
    """No pool of the pools file can run the job (its service, models or hardware); the
    job is well formed, the file's pools do not fit it. Nothing was written."""


class InvalidProfile(EmpError, ValueError):
    """A worker capability profile is malformed."""


class JobNotFound(EmpError, KeyError):
    """No job record with that id."""

    def __str__(self) -> str:
        return f"job {self.args[0]!r} not found"


class JobCancelled(EmpError):
    """Raised inside a task whose job was cancelled while it ran."""


class _RefusedByRecord(EmpError):
    """A step of a run the job record refused (the attempt was taken away, or the job
    ended); ``action`` names the step."""

    action = "step"

    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(job_id, status)
        self.job_id, self.status = job_id, status

    def __str__(self) -> str:
        return f"{self.action} of job {self.job_id!r} refused: the job is {self.status}"


class RetryRefused(_RefusedByRecord):
    """A retry the job record refused (the attempt was taken away, or the job ended)."""

    action = "retry"


class QueueGaveUp(EmpError):
    """The queue failed the job on its own: its attempts ran out with no run to end it
    (the workers holding it died, or rejected it, every time). ``str``: the reason."""


class ReplaceUnsupported(EmpError, NotImplementedError):
    """``Task.replace`` inside an EMP job with a group, chord or chain: the job is refiled
    as one task's run, and Celery would give this job's id to a task filed later by
    another job's run. Raised before anything is written."""


class ReplaceRefused(_RefusedByRecord):
    """A replace the job record refused (the attempt was taken away, or the job ended)."""

    action = "replace"


class LibraryError(EmpError):
    """The Redis Function library could not be loaded or is incompatible."""


class NotReplicated(EmpError):
    """An enqueue the master stored but no replica confirmed in time: not accepted.

    The job may still run (the master has it); a failover before the copy
    arrives would lose it, so the producer is told it was not accepted.
    """

    def __init__(self, job_id: str, wanted: int, acked: int) -> None:
        super().__init__(job_id, wanted, acked)
        self.job_id, self.wanted, self.acked = job_id, wanted, acked

    def __str__(self) -> str:
        return (f"job {self.job_id!r} not accepted: {self.acked} of {self.wanted} replica(s) "
                "confirmed it in time (is a replica of its shard down?)")


class PoolsFileError(EmpError, ValueError):
    """The pools file (``EMP_POOLS_FILE``) is unreadable or malformed (names the field)."""
