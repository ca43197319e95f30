"""What CPU oversubscription costs: trainings side by side with an even share of the cores, or with all of them each.

    python bench/threads.py [--steps 6] [--warmup 2] [--max-documents 200]

Runs ``bench/throughput.py``'s ``tuner`` worker (MiniLM-L6 on NIPS batches of 16, the precision ``auto``
resolves to) in three layouts, one after the other, each with the machine to itself:

- ``alone``: one training with every core (``torch`` threads = cores);
- ``share``: two trainings at once with half the cores each, what ``tuner run --workers 2`` sets up;
- ``oversubscribed``: two trainings at once with every core each, what two ``tuner`` processes started
  by hand would do without ``TUNER_NUM_THREADS`` (torch's default is one thread per core).

It reports each training's tokens/s and the layout's total; ``oversubscription_cost`` is the share
layout's total over the oversubscribed one's.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import ROOT, machine, write_results

from tuner import hardware

THROUGHPUT = ROOT / "bench" / "throughput.py"


def _layout(processes: int, threads: int, args: argparse.Namespace) -> dict[str, Any]:
    """``processes`` throughput workers started together, ``threads`` torch threads each."""
    with tempfile.TemporaryDirectory(prefix="tuner-threads-") as folder:
        outputs = [Path(folder) / f"worker-{i}.json" for i in range(processes)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TUNER_NUM_THREADS": str(threads)}
        started = time.perf_counter()
        running = [subprocess.Popen([sys.executable, str(THROUGHPUT), "--worker", "tuner", "--worker-output", str(out),
                                     "--steps", str(args.steps), "--warmup", str(args.warmup), "--max-documents",
                                     str(args.max_documents)], env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for out in outputs]
        for process, out in zip(running, outputs, strict=True):
            stdout, stderr = process.communicate()
            if process.returncode != 0 or not out.is_file():
                sys.stderr.write(stdout[-4000:] + stderr[-8000:])
                sys.exit(f"a worker failed (exit {process.returncode}): {shlex.join(process.args)}")  # type: ignore[arg-type]
        wall = time.perf_counter() - started
        results = [json.loads(out.read_text()) for out in outputs]
    speeds = [r["tokens_per_s"] for r in results]
    return {"processes": processes, "threads_each": threads, "threads_seen": [r["threads"] for r in results],
            "tokens_per_s": speeds, "total_tokens_per_s": sum(speeds), "median_step_s": [
                sorted(r["step_s"])[len(r["step_s"]) // 2] for r in results], "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per training")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them (at least 1)")
    parser.add_argument("--max-documents", type=int, default=200, help="NIPS documents loaded per split")
    args = parser.parse_args()
    cores = hardware.cores()
    layouts = {"alone": (1, cores), "share": (2, max(1, cores // 2)), "oversubscribed": (2, cores)}
    started = time.perf_counter()
    results = {}
    for name, (processes, threads) in layouts.items():
        results[name] = _layout(processes, threads, args)
        speeds = " + ".join(f"{s:.0f}" for s in results[name]["tokens_per_s"])
        print(f"{name:<15} {processes} x {threads} threads: {speeds} = {results[name]['total_tokens_per_s']:.0f} "
              f"tokens/s, median step {max(results[name]['median_step_s']):.1f} s", flush=True)
    cost = results["share"]["total_tokens_per_s"] / results["oversubscribed"]["total_tokens_per_s"]
    slowdown = results["alone"]["tokens_per_s"][0] / min(results["oversubscribed"]["tokens_per_s"])
    print(f"oversubscription cost: the even share trains {cost:.2f}x as many tokens/s as two trainings with "
          f"{cores} threads each; each of those runs {slowdown:.1f}x slower than one training alone")
    write_results("threads.json", {
        "layouts": results, "oversubscription_cost": cost, "oversubscribed_slowdown_vs_alone": slowdown,
        "steps": args.steps, "warmup": args.warmup, "max_documents": args.max_documents,
        "total_wall_s": time.perf_counter() - started, "machine": machine(),
        "command": ("python bench/threads.py " + shlex.join(sys.argv[1:])).strip(),
    })


if __name__ == "__main__":
    main()
