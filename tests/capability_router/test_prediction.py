"""The forecast and the scaler: decisions for given inputs, worked out by hand."""

from __future__ import annotations

import pytest

from capability_router.prediction.forecast import DAY_SECONDS, Forecaster, slot_of
from capability_router.prediction.scaler import PoolDemand, ScalingPolicy, desired_machines

HOUR = 3600


def test_recent_rate_follows_arrivals_and_fades() -> None:
    forecast = Forecaster(recent_seconds=600)
    for i in range(600):  # one a second for ten minutes
        forecast.observe(float(i), "sd15")
    rate = forecast.rate(600.0, "sd15")
    assert 0.55 < rate < 0.7  # 1/s seen through a 10-minute decay: 1 - e^-1 = 0.63
    assert forecast.rate(600.0 + 3 * 600, "sd15") < rate * 0.06  # faded after 3 tau
    assert forecast.rate(600.0, "never-seen") == 0.0


def test_profile_learns_the_hour_of_day_and_predicts_it_next_day() -> None:
    forecast = Forecaster(recent_seconds=600, profile_weight=1.0)
    busy = 14  # 14:00-15:00, 2 arrivals a second; quiet otherwise
    for t in range(busy * HOUR, (busy + 1) * HOUR, 1):
        forecast.observe(float(t), "flux")
        forecast.observe(float(t) + 0.5, "flux")
    forecast.observe(float(busy + 1) * HOUR + 1, "flux")  # closes the busy slot
    next_day = DAY_SECONDS + busy * HOUR + 60.0
    assert slot_of(next_day) == busy
    assert forecast.rate(next_day, "flux") == pytest.approx(2.0, rel=0.01)
    assert forecast.rate(DAY_SECONDS + 3 * HOUR, "flux") < 0.01  # a quiet hour


@pytest.mark.parametrize(("demand", "policy", "machines"), [
    # 0.5 jobs/s x 20 s = 10 workers busy; at 80 % utilization 12.5 -> 13 machines.
    (PoolDemand(0, 0.5, 20, live_machines=5), ScalingPolicy(max_machines=50), 13),
    # Plus 300 s of backlog to clear in 10 s: 30 more workers, 2 per machine -> 22.
    (PoolDemand(300, 0.5, 20, live_machines=5),
     ScalingPolicy(workers_per_machine=2, max_machines=50), 22),
    # The budget caps it.
    (PoolDemand(300, 0.5, 20, live_machines=5), ScalingPolicy(max_machines=8), 8),
    # Idle pool with 10 machines: one fewer per decision, never under min.
    (PoolDemand(0, 0, 20, live_machines=10), ScalingPolicy(scale_down_step=1), 9),
    (PoolDemand(0, 0, 20, live_machines=1), ScalingPolicy(min_machines=1), 1),
    # One 600 s job pending: 60 s of backlog per second of target, but one job uses one
    # worker, so 1 machine (it asked for 60 before the cap).
    (PoolDemand(600, 0, 600, live_machines=0, backlog_jobs=1), ScalingPolicy(), 1),
    # Jobs waiting longer than the target: release nothing even if the forecast is low.
    (PoolDemand(5, 0.0, 20, live_machines=10, oldest_wait_seconds=30), ScalingPolicy(), 10),
])
def test_desired_machines_for_given_inputs(demand, policy, machines) -> None:
    assert desired_machines(demand, policy) == machines


def test_bad_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="workers_per_machine"):
        desired_machines(PoolDemand(0, 1, 1, 1), ScalingPolicy(workers_per_machine=0))
    with pytest.raises(ValueError, match="target_utilization"):
        desired_machines(PoolDemand(0, 1, 1, 1), ScalingPolicy(target_utilization=0))
