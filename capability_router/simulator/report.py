"""The comparison's outputs: one JSON line, a Markdown table, PNG charts.

Charts need matplotlib (the ``sim`` extra); without it the table and JSON
are still written and the charts are skipped with a note.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from capability_router.simulator.metrics import RunRecord

COLUMNS = [
    ("policy", "policy"), ("jobs", "jobs"), ("wait_p50_s", "wait p50 s"),
    ("wait_p95_s", "wait p95 s"), ("wait_p99_s", "wait p99 s"),
    ("under_10s", "< 10 s"), ("warm", "warm"), ("downloads", "downloads"),
    ("download_gb", "download GB"), ("gpu_hours", "GPU-h"), ("machine_hours", "machine-h"),
    ("cost", "cost"), ("completion", "completed"), ("routing_accuracy", "routing acc."),
]


def _cell(key: str, value: Any) -> str:
    # No value: a wait percentile of a run with no jobs is NaN (it printed "nan").
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if key in ("under_10s", "warm", "completion", "routing_accuracy"):
        return f"{100 * value:.1f}%"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:g}"
    return str(value)


def markdown_table(summaries: list[dict[str, Any]]) -> str:
    """The per-policy figures as a Markdown table."""
    head = "| " + " | ".join(label for _, label in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    rows = ["| " + " | ".join(_cell(k, s.get(k)) for k, _ in COLUMNS) + " |" for s in summaries]
    return "\n".join([head, rule, *rows])


def _json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as null: a run with no jobs has no percentiles,
    and a bare ``NaN`` is not JSON (readers of the line refused it)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def json_line(summaries: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """Everything in one JSON line (per policy, without the per-function counts); strict
    JSON (no NaN or Infinity: null where a figure has no value)."""
    return json.dumps(_json_safe({**meta, "policies": summaries}), separators=(",", ":"),
                      allow_nan=False)


def charts(records: list[RunRecord], out: Path) -> list[Path]:
    """Wait CDF per policy, queue depth and machines per pool over time; the files written."""
    try:
        import matplotlib
    except ImportError:
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for record in records:
        waits = sorted(max(w, 0.01) for w in record.waits())
        if waits:
            n = len(waits)
            ax.plot(waits, [(i + 1) / n for i in range(n)], label=record.policy)
    ax.set_xscale("log")
    ax.axvline(10, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("wait: arrival to run start, s (log)")
    ax.set_ylabel("share of jobs")
    ax.set_title("Wait CDF per policy")
    if ax.get_legend_handles_labels()[0]:  # a run without jobs draws no line
        ax.legend(loc="lower right")
    ax.grid(True, which="both", alpha=0.3)
    path = out / "sim-wait-cdf.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    for index, (name, label) in enumerate([("queue", "pending jobs"),
                                           ("machines", "live machines")]):
        fig, axes = plt.subplots(len(records), 1, figsize=(8, 2.2 * len(records) + 0.5),
                                 sharex=True, squeeze=False)
        for ax, record in zip(axes[:, 0], records, strict=False):
            pools = sorted({p for _, sample in record.samples for p in sample})
            hours = [t / 3600 for t, _ in record.samples]
            for pool in pools:
                ax.plot(hours, [sample.get(pool, (0, 0, 0))[0 if index == 0 else 1]
                                for _, sample in record.samples], label=pool)
            ax.set_title(record.policy, fontsize=9)
            ax.set_ylabel(label, fontsize=8)
            if pools:
                ax.legend(fontsize=7, loc="upper left")
            ax.grid(True, alpha=0.3)
        axes[-1, 0].set_xlabel("hour of the day (virtual)")
        fig.tight_layout()
        path = out / f"sim-{name}-per-pool.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
