"""What grows in the monitor under the production day: a diagnosis harness, not a bench.

``python bench/trace_monitor.py DIR [--frames N] -- --quick`` runs
``bench/production_day.py`` (the arguments after ``--``) with only the
``emp monitor`` it starts under ``bench/memtrace/sitecustomize.py``: every
30 s a row of RSS and structure sizes (Flower's task store, task heap and
search index, the event hub's queues, the SSE streams' outboxes, live
objects) in ``DIR/sizes.jsonl`` and, with ``--frames`` above 0 (default 4),
a tracemalloc snapshot ``DIR/snap-<s>.pickle``. Tracing slows the monitor
(0.56 cores against 0.15-0.2 untraced, with dropped SSE streams), and taking
and dumping the snapshots grows its RSS by itself (a steady load with the
task store full: RSS 216 -> 282 MB while the traced Python memory stayed at
64-71 MB; untraced, the same load: 101 -> 102 MB). Read ``traced_mb`` and
the snapshots of a traced run; RSS and latencies of an untraced one
(``--frames 0``).

``python bench/trace_monitor.py --compare A B [--traceback] [--top N]``
prints what grew from snapshot A to snapshot B, by line or by traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import tracemalloc
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def compare(first: str, second: str, key: str, top: int) -> None:
    """Print the ``top`` biggest growths from snapshot ``first`` to ``second``."""
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__),
              tracemalloc.Filter(False, "<frozen importlib._bootstrap>")]
    old = tracemalloc.Snapshot.load(first).filter_traces(ignore)
    new = tracemalloc.Snapshot.load(second).filter_traces(ignore)
    total = [sum(s.size for s in snap.statistics("filename")) / 2**20 for snap in (old, new)]
    print(f"traced {total[0]:.1f} MB -> {total[1]:.1f} MB")
    for stat in new.compare_to(old, key)[:top]:
        print(f"{stat.size_diff / 2**20:+7.2f} MB ({stat.size / 2**20:6.1f} MB) "
              f"{stat.count_diff:+8d} blocks")
        lines = stat.traceback.format()
        for line in lines if key == "traceback" else lines[-2:]:
            print("      ", line.strip()[:150])


def run(directory: str, frames: int, bench_args: list[str]) -> None:
    """Run the production day with its monitor traced into ``directory``."""
    import bench.production_day as production_day

    Path(directory).mkdir(parents=True, exist_ok=True)
    start_service = production_day.start_service

    def traced(command: list[str], env: dict[str, str], log: Path) -> Any:
        if command[:1] == ["monitor"]:
            env = {**env, "EMP_MEMTRACE_DIR": str(Path(directory).resolve()),
                   "EMP_MEMTRACE_FRAMES": str(frames),
                   "PYTHONPATH": os.pathsep.join(
                       p for p in (str(HERE / "memtrace"), env.get("PYTHONPATH", "")) if p)}
        return start_service(command, env, log)

    production_day.start_service = traced
    sys.argv = ["production_day.py", *bench_args]
    production_day.main()


def main() -> None:
    argv = sys.argv[1:]
    bench_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", nargs="?", help="where rows and snapshots go")
    parser.add_argument("--frames", type=int, default=4,
                        help="tracemalloc frames (0: sizes only, no tracing)")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="two snapshots")
    parser.add_argument("--traceback", action="store_true", help="group by traceback")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    if args.compare:
        compare(*args.compare, "traceback" if args.traceback else "lineno", args.top)
    elif args.directory:
        run(args.directory, args.frames, bench_args)
    else:
        parser.error("give a directory to run, or --compare A B")


if __name__ == "__main__":
    main()
