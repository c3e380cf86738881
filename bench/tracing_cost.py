"""What job tracing costs a submit: ``producer.submit`` p50/p99 before tracing, off, and on.

Three sides, each in its own process on one private Redis (no worker runs;
jobs stay pending):

- ``before``: the code of a git ref without tracing (``--before-ref``,
  default ``main``), exported with ``git archive`` to a temporary directory;
- ``off``: this tree, no OTLP endpoint (the default);
- ``on``: this tree, ``OTEL_EXPORTER_OTLP_ENDPOINT`` naming an OTLP sink in
  the same process (a thread answering 200), default batch settings; the
  span export runs in the SDK's background thread, so its CPU is counted.

The three processes run side by side and take turns: blocks of 100 timed
submits, in rotating order, so drift on a shared machine hits all alike;
each first makes one submit (imports, connections, the SDK's set-up when
on; reported apart as ``first_ms``) and 200 untimed ones. Quick: 10 blocks
per side; full: 60. Printed: p50/p99 per side and the ratios to
``before``; final line: JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import ROOT, emit_json, quick_args, start_redis, summary  # noqa: E402

WARMUP = 200
BLOCK = 100

#: One side's process (PYTHONPATH: the side's tree): after its first submit and the
#: warm-up, it times a block of submits per line read from stdin, printing their ms.
CHILD = r"""
import json, os, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

url, side, warmup = sys.argv[1], sys.argv[2], int(sys.argv[3])
if side == "on":
    class Sink(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        def log_message(self, *args):
            pass
    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{server.server_port}"
from emp_tasks.app import create_app
from emp_tasks.producer import submit
import emp_tasks

app = create_app(url)
started = time.perf_counter()
submit("echo", {"n": -1}, app=app)
first = (time.perf_counter() - started) * 1000
for n in range(warmup):
    submit("echo", {"n": n}, app=app)
traced = [m for m in sys.modules
          if m.startswith(("emp_tasks.tracing_sdk", "opentelemetry.sdk.trace"))]
print(json.dumps({"first_ms": first, "code": emp_tasks.__file__,
                  "tracing_loaded": bool(traced)}), flush=True)
for line in sys.stdin:
    samples = []
    for n in range(int(line)):
        started = time.perf_counter()
        submit("echo", {"n": n}, app=app)
        samples.append((time.perf_counter() - started) * 1000)
    print(json.dumps(samples), flush=True)
"""


def export_tree(ref: str, into: Path) -> Path:
    """The files of ``ref`` (a git ref of this repository) under ``into``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    # Compiled once here, as this tree is, so no side's first submit pays for compiling.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(into)], check=True)
    return into


class Side:
    """One side's process, started and warmed up; ``block(n)`` times n submits."""

    def __init__(self, tree: Path, url: str, name: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env.update(PYTHONPATH=str(tree), EMP_REDIS_URL=url, PYTHONDONTWRITEBYTECODE="1")
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, "-c", CHILD, url, name, str(WARMUP)], cwd=str(tree), env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        hello = json.loads(self._line())
        if not hello["code"].startswith(str(tree)):
            raise RuntimeError(f"{name} ran {hello['code']}, not the code in {tree}")
        if hello["tracing_loaded"] != (name == "on"):
            raise RuntimeError(f"{name}: tracing modules loaded = {hello['tracing_loaded']}")
        self.first_ms = float(hello["first_ms"])

    def _line(self) -> str:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} exited ({self.process.wait()})")
        return line

    def block(self, count: int) -> list[float]:
        self.process.stdin.write(f"{count}\n")
        self.process.stdin.flush()
        return json.loads(self._line())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(60)


def main() -> None:
    args = quick_args(__doc__, lambda p: p.add_argument(
        "--before-ref", default="main", help="git ref without tracing"))
    blocks = 10 if args.quick else 60
    url, stop = start_redis()
    samples: dict[str, list[float]] = {"before": [], "off": [], "on": []}
    sides: dict[str, Side] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="emp-bench-before-") as before_dir:
            trees = {"before": export_tree(args.before_ref, Path(before_dir)),
                     "off": ROOT, "on": ROOT}
            for name, tree in trees.items():
                sides[name] = Side(tree, url, name)
            order = list(sides)
            for i in range(blocks):
                for name in order[i % 3:] + order[:i % 3]:
                    samples[name] += sides[name].block(BLOCK)
            firsts = {name: round(side.first_ms, 1) for name, side in sides.items()}
            for side in sides.values():
                side.close()
    finally:
        stop()
    stats = {side: summary(values) for side, values in samples.items()}
    base = stats["before"]
    for side in ("before", "off", "on"):
        s = stats[side]
        print(f"submit {side:>6}: p50 {s['p50']:.3f} ms, p99 {s['p99']:.3f} ms "
              f"(p50 x{s['p50'] / base['p50']:.3f} of before); first submit "
              f"{firsts[side]:.1f} ms")
    emit_json({
        "benchmark": "tracing_cost", "quick": args.quick, "blocks": blocks, "block": BLOCK,
        "before_ref": args.before_ref, "submit_ms": stats, "first_submit_ms": firsts,
        "p50_ratio_off": round(stats["off"]["p50"] / base["p50"], 3),
        "p50_ratio_on": round(stats["on"]["p50"] / base["p50"], 3),
    })


if __name__ == "__main__":
    main()
