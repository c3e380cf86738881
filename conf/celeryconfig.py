"""Example Celery overrides, loaded when EMP_CELERY_CONFIG=conf.celeryconfig.

Every name here overrides the defaults of emp_tasks.app.celery_config(). The module is
imported from the working directory, then PYTHONPATH, as Celery imports its config.
"""

# Kill a job's process after 1 hour; ask it to stop at 55 minutes.
task_time_limit = 3600
task_soft_time_limit = 3300

# Keep Celery results for a day (job records follow EMP_RETENTION_SECONDS).
result_expires = 24 * 3600

# Job type modules the workers import (your own tasks; the built-in ones load anyway).
# imports = ["acme.jobs"]
