"""EMP job types on Celery: the app, the task base class and the producer API."""

from capability_router.errors import EmpError, InvalidJob, JobCancelled, JobNotFound
from emp_tasks.producer import cancel, get_job, job_events, submit

__all__ = ["EmpError", "InvalidJob", "JobCancelled", "JobNotFound", "cancel", "get_job",
           "job_events", "submit"]
