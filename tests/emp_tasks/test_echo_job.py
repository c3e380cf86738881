"""The ``echo`` job type's own arguments: what it refuses, naming the field."""

from __future__ import annotations

import pytest

from emp_tasks.jobs.echo import echo


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("sleep", "abc", "sleep must be a number from 0 to 604800, got 'abc'"),
    ("sleep", 1e300, "sleep must be a number from 0 to 604800, got 1e+300"),
    ("sleep", -1, "sleep must be a number from 0 to 604800, got -1"),
    ("sleep", True, "sleep must be a number from 0 to 604800, got True"),
    ("fail_times", "x", "fail_times must be a whole number from 0, got 'x'"),
    ("fail_times", 1.5, "fail_times must be a whole number from 0, got 1.5"),
    ("fail_times", None, "fail_times must be a whole number from 0, got None"),
])
def test_an_argument_it_cannot_use_fails_the_job_naming_it(field: str, value: object,
                                                           expected: str) -> None:
    """Tried: each bad value. Before, "abc" failed the job with ``float()``'s error
    naming no field, 1e300 s slept for good and -1 ran at once; now a ValueError (not
    retried: only EchoFailure is) that names the field, before any sleep."""
    with pytest.raises(ValueError) as caught:
        echo.run(**{field: value, "note": "hi"})
    assert str(caught.value) == expected


def test_a_good_call_echoes_its_payload() -> None:
    out = echo.run(sleep="0.01", fail_times=0, note="hi")
    assert out["echo"] == {"note": "hi"} and out["retries"] == 0
