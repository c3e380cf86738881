"""The ComfyUI progress tracker reads a custom node's odd step report without failing the job."""

from __future__ import annotations

import pytest

from machine.connectors.comfyui_progress import ProgressTracker

pytestmark = pytest.mark.fast

WORKFLOW = {"4": {"class_type": "CheckpointLoaderSimple"}, "3": {"class_type": "KSampler"}}


@pytest.mark.parametrize("value, maximum", [
    ("3", 20), (3, "20"), (float("nan"), 20), (3, float("inf")), ([3], 20), (True, 20)])
def test_a_progress_report_that_is_not_numbers_is_ignored(value, maximum) -> None:
    """Tried: a ``progress`` message whose ``value`` or ``max`` is a string, NaN,
    infinity, a list or a boolean, as a custom node's own ``send_sync`` may send. Before,
    int() raised out of the connector and the job failed as an unknown error. Now the
    report is ignored: the figure and message stay those of the last good report."""
    tracker = ProgressTracker(WORKFLOW)
    tracker.executing("4")
    tracker.progress("3", 5, 20)
    before = tracker.report()
    tracker.progress("3", value, maximum)
    assert tracker.report() == before
    assert before.message == "KSampler #3: step 5/20"
    tracker.progress("3", 10.0, 20)  # a float a custom node may send: read, rounded down
    assert tracker.report().message == "KSampler #3: step 10/20"
    assert tracker.report().percent > before.percent


def test_a_report_without_figures_counts_as_step_zero() -> None:
    """ComfyUI sends ``value`` and ``max``; without them the node runs, at step 0 of 0."""
    tracker = ProgressTracker(WORKFLOW)
    tracker.progress("4", None, None)
    assert tracker.report().message == "CheckpointLoaderSimple #4"
