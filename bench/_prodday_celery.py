"""Celery overrides for ``bench/production_day.py`` (named by ``EMP_CELERY_CONFIG``).

``emp worker`` has no pool option; Celery's ``worker_pool`` setting is read when
``-P`` is not given, so this module gives the bench's workers the thread pool:
a simulation job sleeps between its steps, and a thread per running job costs
far less than a process per running job.
"""

worker_pool = "threads"
