"""The worker on kombu's Redis channel as 5.6 and 5.5 ship it, each made here from the
installed kombu by taking away what 5.7 added (the real releases: README, requirements).

Found with Celery 5.6.3 / kombu 5.6.2 and Celery 5.5.3 / kombu 5.5.4 installed: the
worker said ready and never took a job. The transport called kombu 5.7's re-auth step
(``_flush_brpop_reauth``) after every read, which 5.6 and 5.5 lack (the first read raised
and ended the worker); and it handed kombu's BRPOP of Celery's reply queue a timeout of
None, which 5.6 reads as ``brpop_timeout`` and 5.5 as "block for ever", so no claim was
ever sent after it."""

from __future__ import annotations

import time

import pytest

from conftest import wait_for
from emp_tasks.producer import submit

#: kombu's Redis channel as 5.6 has it: no re-auth step (5.7 added ``maybe_reauth`` and
#: ``_flush_brpop_reauth``), and 5.6.2's ``_brpop_read``, which calls none. On a kombu
#: older than 5.7 (a venv of one) the channel is left as it is.
KOMBU_56 = '''
from queue import Empty

from kombu.transport import redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads


def _brpop_read_56(self, **options):
    try:
        try:
            dest__item = self.client.parse_response(self.client.connection, "BRPOP",
                                                    **options)
        except self.connection_errors:
            self.client.connection.disconnect()
            raise
        if dest__item:
            dest, item = dest__item
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            self.connection._deliver(loads(bytes_to_str(item)), dest)
            return True
        raise Empty()
    finally:
        self._in_poll = None


if hasattr(redis.Channel, "_flush_brpop_reauth"):  # a 5.7 or later kombu installed
    del redis.Channel._flush_brpop_reauth
    redis.Channel.maybe_reauth = lambda self: None
    redis.Channel._brpop_read = _brpop_read_56
'''

#: And with 5.5's ``_brpop_start``, whose timeout None is BRPOP's 0, "block for ever".
KOMBU_55 = KOMBU_56 + '''
_brpop_start = redis.Channel._brpop_start


def _brpop_start_55(self, timeout=1):
    return _brpop_start(self, 0 if timeout is None else timeout)


redis.Channel._brpop_start = _brpop_start_55
'''


@pytest.mark.parametrize("kombu", ["5.6", "5.5"])
@pytest.mark.timeout(120)
def test_a_worker_on_an_older_kombu_runs_a_job(app, start_worker, jobs_env, kombu) -> None:
    """Tried: a worker on either channel, a job submitted once it logged "ready". Before
    the fix the job never ran (the result timed out after 15 s): on 5.6's channel the
    worker logged "Unrecoverable error: AttributeError(... '_flush_brpop_reauth')"; on
    5.5's it stayed up, blocked on the reply queue, and claimed nothing."""
    source = KOMBU_56 if kombu == "5.6" else KOMBU_55
    worker = start_worker("w1", wait=False, args=["-l", "info"],
                          **jobs_env(f"kombu_{kombu[2]}", source))
    wait_for(lambda: "ready." in worker.log_path.read_text(), timeout=60,
             message="the worker to say ready")
    started = time.monotonic()
    assert submit("echo", {"x": 1}, app=app).get(timeout=15)["echo"] == {"x": 1}
    assert time.monotonic() - started < 15
    log = worker.log_path.read_text()
    assert "Unrecoverable error" not in log and "Traceback" not in log
