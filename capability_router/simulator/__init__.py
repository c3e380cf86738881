"""Trace-driven simulator: the real Redis Functions, virtual time, virtual workers.

It replays a trace of jobs (``trace``) against a real Redis holding the
function library. Every job state change is the production function called
with an explicit virtual time (``now_ms``): enqueue, claim (warm-first
included), start, complete, residency reports; the router is the production
``Router`` reading the pools through a virtual clock. Only the machines are
simulated (``machines``): their model caches, load times and downloads, and
how many of them run (``fleet``). Matching is never re-implemented here.

Policies (``policies``) run one after the other on the same trace, each on
an emptied database; ``metrics`` and ``report`` turn their runs into a JSON
line, a Markdown table and charts.
"""

from capability_router.simulator.engine import SimResult, Simulation
from capability_router.simulator.policies import POLICIES, Policy
from capability_router.simulator.trace import TraceJob, load_trace, synthetic_day

__all__ = ["POLICIES", "Policy", "SimResult", "Simulation", "TraceJob", "load_trace",
           "synthetic_day"]
