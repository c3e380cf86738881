"""The policies compared on one trace: what is switched on, nothing else differs.

* ``uniform``: today's fleet. One namespace ("default"), every machine in
  it, capability matching only: no routing, warm-first off.
* ``pools``: the same machines split by hardware into the pools of the
  pools file; the router files each job; warm-first off.
* ``pools+warm``: ``pools`` with warm-first claims (``affinity`` on, the
  load-time delays of ``load_ms_*``).
* ``pools+warm+predictive``: ``pools+warm``, plus idle workers preload the
  models the forecast says their pool will need, and each pool's machines
  follow ``desired_machines`` (with a start-up delay) instead of the fixed
  split, never above the fixed split's peak per pool.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Policy:
    """One policy's switches."""

    name: str
    #: Pools (router on); False: one "default" namespace.
    pools: bool
    #: Warm-first claims (emp_claim's ``affinity`` config).
    affinity: bool
    #: Forecast-driven preloading on idle workers.
    preload: bool = False
    #: Machines per pool from the elastic scaler instead of the fixed split.
    elastic: bool = False


POLICIES = {
    "uniform": Policy("uniform", pools=False, affinity=False),
    "pools": Policy("pools", pools=True, affinity=False),
    "pools+warm": Policy("pools+warm", pools=True, affinity=True),
    "pools+warm+predictive": Policy("pools+warm+predictive", pools=True, affinity=True,
                                    preload=True, elastic=True),
}


def policy(name: str) -> Policy:
    """The policy called ``name``; ValueError lists the known ones."""
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r} (known: {', '.join(POLICIES)})") from None
