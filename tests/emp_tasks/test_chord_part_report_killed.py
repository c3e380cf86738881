"""A chord part whose first report dies before the count is counted by the next report.

The canceller stores a cancelled part REVOKED and counts it at once; the worker that held
it may report it again later (``emp_tasks.cancellation.revoke_unstarted``). A reporter
killed between taking the part and counting it must leave the part to the next report,
or the chord's body waits for ever.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from celery import chord
from celery.exceptions import ChordError

from conftest import ROOT
from emp_tasks.producer import services
from emp_tasks.stored_request import stored_request

#: Reports part ``argv[2]`` REVOKED as the canceller does, and is killed (SIGKILL) at the
#: moment Celery's chord script would count it.
DIES_AT_THE_COUNT = '''
import os
import signal
import sys

from celery.backends.redis import RedisBackend

from emp_tasks.app import create_app
from emp_tasks.stored_request import stored_request

app = create_app(sys.argv[1])


def killed(self):
    os.kill(os.getpid(), signal.SIGKILL)


RedisBackend._chord_part_return_script = property(killed)
app.backend.mark_as_revoked(sys.argv[2], "cancelled",
                        request=stored_request(app, "default", sys.argv[2]))
'''


@pytest.mark.fast
def test_a_part_whose_report_was_killed_before_the_count_is_counted_by_the_next(
        app, redis_server) -> None:
    """Tried: a chord of two echo jobs (no worker); part 1 reported REVOKED by a process
    SIGKILLed just before Celery's chord script runs, then reported again (as its worker's
    revoke path reports it), then part 2 cancelled. Before the fix the first report had
    already taken the part's once-only marker, so the second was dropped as a repeat,
    part 1 was never counted and the body stayed PENDING for good. Now the body fails
    with ``ChordError``, both parts counted."""
    echo = services(app)["echo"]
    body = chord([echo.si(n=1), echo.si(n=2)], echo.si(n=3)).apply_async()
    first, second = body.parent.results
    dying = subprocess.run([sys.executable, "-c", DIES_AT_THE_COUNT, redis_server.url,
                            first.id], cwd=ROOT, capture_output=True, timeout=60)
    assert dying.returncode == -9, dying.stderr.decode()[-2000:]
    assert app.AsyncResult(first.id).state == "REVOKED"  # stored, not counted

    for part in (first, second):
        app.backend.mark_as_revoked(part.id, "cancelled",
                                    request=stored_request(app, "default", part.id))
    outcome = app.AsyncResult(body.id)
    assert outcome.state == "FAILURE", outcome.state
    assert isinstance(outcome.result, ChordError), outcome.result
