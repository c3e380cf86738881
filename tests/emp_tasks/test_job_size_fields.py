"""A job type's size fields (``duration_features``) are checked at submit: a negative or
fractional size is refused naming the field, nothing filed."""

from __future__ import annotations

from typing import Any

import pytest

from capability_router.errors import InvalidJob
from emp_tasks.producer import submit

pytestmark = pytest.mark.timeout(60)

#: (service, payload, the field named): each one was filed and ran before.
BAD_SIZES = [
    ("simulation", {"steps": -20}, "steps"),
    ("simulation", {"steps": 2.5}, "steps"),
    ("simulation", {"steps": "many"}, "steps"),
    ("simulation", {"steps": True}, "steps"),
    ("simulation", {"steps": 3, "width": -512}, "width"),
    ("simulation", {"frames": -1}, "frames"),
    ("text", {"tokens": -5}, "tokens"),
    ("text", {"tokens": 10.5}, "tokens"),
    ("comfyui", {"steps": -3}, "steps"),  # a flat payload: no workflow graph
]


def _dump(client: Any) -> dict[bytes, bytes]:
    return {key: client.dump(key) for key in client.keys("*")}


@pytest.mark.parametrize(("service", "payload", "field"), BAD_SIZES)
def test_a_negative_or_fractional_size_is_refused_at_submit(
        app: Any, client: Any, service: str, payload: dict[str, Any], field: str) -> None:
    """Tried: ``submit("simulation", {"steps": -20})`` and the like for every job type's
    size fields. Before, the size was taken as absent (the duration model skips what is
    not a positive number): the job was filed and ran (a simulation of 1 step). Now
    InvalidJob names the field and the value, and nothing was written to Redis."""
    submit("echo", {}, app=app)  # the pools and library exist: only the refusal is compared
    before = _dump(client)
    with pytest.raises(InvalidJob, match=rf"payload\.{field} must be a whole number"):
        submit(service, payload, app=app)
    assert _dump(client) == before


def test_whole_sizes_and_sizes_the_job_type_does_not_declare_are_accepted(
        app: Any) -> None:
    """A whole number (also as 20.0, JSON's way of writing some) and zero are accepted;
    a field no job type declares as a size (echo has none) is not checked."""
    for service, payload in (("simulation", {"steps": 20, "width": 512.0}),
                             ("simulation", {"steps": 0}), ("text", {"tokens": 250}),
                             ("echo", {"steps": -20}),
                             ("comfyui", {"workflow": {"1": {"class_type": "KSampler",
                                                             "inputs": {"steps": 20}}}})):
        assert submit(service, payload, app=app).id
