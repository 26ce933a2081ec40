"""The sandbox's overhead per HumanEval item: all 164 canonical solutions run (a) through
the sandbox (one fresh isolated process per item, 1 and 2 workers) and (b) in-process with
exec() in this interpreter, measured in one run.

    python benchmarks/bench_eval_sandbox.py

Writes benchmarks/results/eval_sandbox.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from cogumi.evaluation import Sandbox, build_program, load_task
    from cogumi.provenance import provenance

    task = load_task("humaneval")
    programs = [build_program(it, it.fields["canonical_solution"]) for it in task.items]

    t = time.perf_counter()
    ok_inproc = 0
    for p in programs:
        glb: dict = {"__name__": "__main__"}
        exec(compile(p, "<humaneval>", "exec"), glb)  # trusted: the canonical solutions
        ok_inproc += 1
    inproc_s = time.perf_counter() - t

    sb = Sandbox()
    runs = {}
    for workers in (1, 2):
        t = time.perf_counter()
        res = sb.run_many(programs, workers=workers)
        wall = time.perf_counter() - t
        runs[f"workers={workers}"] = {
            "wall_s": wall, "passed": sum(r.passed for r in res),
            "per_item_ms": 1000 * wall / len(programs),
        }
    per_item_inproc = 1000 * inproc_s / len(programs)
    result = {
        **provenance(()),
        "benchmark": "sandbox overhead per HumanEval item",
        "items": len(programs),
        "isolation": sb.describe(),
        "in_process": {"wall_s": inproc_s, "passed": ok_inproc, "per_item_ms": per_item_inproc},
        "sandbox": runs,
        "overhead_per_item_ms_1_worker": runs["workers=1"]["per_item_ms"] - per_item_inproc,
    }
    out = ROOT / "benchmarks" / "results" / "eval_sandbox.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
