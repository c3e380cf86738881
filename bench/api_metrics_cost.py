"""What the API's metrics hooks cost per request, and what a scrape costs.

A bare Flask app with one routed view (``/api/jobs/<job_id>``), served by
Flask's test client in this process, with and without ``webapp.api.metrics``
attached, in prometheus_client's multiprocess mode as under gunicorn (each
count and observation written to a memory-mapped file). Sides alternate in
rounds so drift on a shared machine falls on both. Reported: µs per request
of each side (median of the rounds), the difference, and ms per scrape of
the resulting registry. Quick: 5 rounds of 2,000 requests; full: 10 of 10,000.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flask import Flask  # noqa: E402

from bench._common import emit_json, quick_args  # noqa: E402
from webapp.api import metrics  # noqa: E402


def build(with_metrics: bool) -> Flask:
    app = Flask(__name__)

    @app.get("/api/jobs/<job_id>")
    def job(job_id: str) -> str:
        return job_id

    if with_metrics:
        metrics.init_app(app)
    return app


def per_request_us(app: Flask, requests: int) -> float:
    client = app.test_client()
    began = time.perf_counter()
    for n in range(requests):
        client.get(f"/api/jobs/job-{n % 50}")
    return (time.perf_counter() - began) / requests * 1e6


def main() -> None:
    args = quick_args(__doc__)
    rounds, requests = (5, 2000) if args.quick else (10, 10000)
    with metrics.multiprocess_dir():
        bare, measured = build(False), build(True)
        per_request_us(bare, 200), per_request_us(measured, 200)  # warm-up
        without, with_ = [], []
        for _ in range(rounds):
            without.append(per_request_us(bare, requests))
            with_.append(per_request_us(measured, requests))
        scrape = measured.extensions["emp_metrics"]
        began = time.perf_counter()
        for _ in range(20):
            scrape.exposition()
        scrape_ms = (time.perf_counter() - began) / 20 * 1000
    a, b = statistics.median(without), statistics.median(with_)
    print(f"requests per side per round: {requests}, rounds: {rounds}")
    print(f"without metrics: {a:.1f} µs/request")
    print(f"with metrics:    {b:.1f} µs/request")
    print(f"hooks' cost:     {b - a:.1f} µs/request ({(b - a) / a:+.0%})")
    print(f"scrape:          {scrape_ms:.2f} ms")
    emit_json({"bench": "api_metrics_cost", "quick": args.quick, "rounds": rounds,
               "requests_per_round": requests, "without_us": round(a, 1),
               "with_us": round(b, 1), "cost_us": round(b - a, 1),
               "scrape_ms": round(scrape_ms, 2)})


if __name__ == "__main__":
    main()
