"""Greedy evaluation in transformers on this CPU: the model in float32 against bfloat16, same
backend, same items, one run: seconds, tokens per second, score, and how many items keep
their verdict and their exact text.

    python benchmarks/bench_eval_dtype.py [--profile qwen-coder-0.5b] [--task gsm8k] [--limit 8]

Why: the qwen-coder-0.5b profile evaluates its real student in transformers (float32, batches
of eval.batch_size) at every phase, and at 20 items per task that is most of a phase's time
on 2 cores (its 1A's base-model GSM8K took 507 s of generation for 20 items). bfloat16
halves the bytes each decode step reads; whether it changes what the model answers is the
other half of the question, measured here on the same items.

Writes benchmarks/results/eval_dtype_<profile>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cogumi.provenance import provenance  # noqa: E402 - needs ROOT on the path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="qwen-coder-0.5b")
    ap.add_argument("--task", default="gsm8k")
    ap.add_argument("--limit", type=int, default=8, help="first N items of the task")
    args = ap.parse_args()

    import torch

    from cogumi.evaluation import GenerationSettings, evaluate, load_task
    from cogumi.evaluation.backends.transformers_backend import TransformersBackend
    from cogumi.models import load_base_model
    from cogumi.profile import IdRangeTask, load_profile

    profile = load_profile(args.profile)
    value = dict(profile.eval.benchmarks()).get(args.task)
    if value is None:
        ap.error(f"--task {args.task}: not in {args.profile}'s [eval]")
    kwargs = {"categories": profile.eval.bfcl_categories} if args.task == "bfcl" else {}
    if isinstance(value, IdRangeTask):  # the profile's evaluation split, as its phases use it
        task = value.ids().select(load_task(args.task, None if value.source == "package"
                                            else str(ROOT / value.source), **kwargs))
    else:
        task = load_task(args.task, None if value == "package" else str(ROOT / value), **kwargs)
    settings = GenerationSettings(max_new_tokens=profile.eval.max_new_tokens, temperature=0.0,
                                  seed=0, samples=1, stop=tuple(profile.model.stop))
    loaded = load_base_model(profile.model, ROOT)
    runs, records = {}, {}
    for dtype in ("float32", "bfloat16"):
        model = loaded.model.to(getattr(torch, dtype)).eval()
        backend = TransformersBackend(model, loaded.tokenizer, batch_size=profile.eval.batch_size,
                                      add_bos=loaded.add_bos)
        t0 = time.perf_counter()
        report = evaluate(backend, [task], settings, limit=args.limit, loglikelihood=False)
        wall = time.perf_counter() - t0
        recs = report.task_records(task.name)
        tokens = sum(t for r in recs for t in r.get("completion_tokens", []) if t is not None)
        records[dtype] = {r["item_id"]: r for r in recs}
        runs[dtype] = {"wall_s": wall, "completion_tokens": tokens,
                       "completion_tokens_per_s": tokens / wall,
                       "score": sum(bool(r["verdicts"][0]) for r in recs) / len(recs),
                       "items": len(recs)}
        print(f"{dtype}: {wall:.0f} s, {tokens / wall:.1f} tokens/s, score "
              f"{runs[dtype]['score']:.3f} over {len(recs)} items", flush=True)
    a, b = records["float32"], records["bfloat16"]
    same_verdict = sum(a[i]["verdicts"][0] == b[i]["verdicts"][0] for i in a)
    same_text = sum(a[i]["generations"][0] == b[i]["generations"][0] for i in a)
    result = {
        **provenance(["torch", "transformers"]),
        "what": "greedy evaluation in transformers, the profile's base model in float32 and in "
                "bfloat16, same backend, batch size, items and settings",
        "profile": args.profile, "task": args.task, "limit": args.limit,
        "batch_size": profile.eval.batch_size, "max_new_tokens": profile.eval.max_new_tokens,
        "threads": torch.get_num_threads(),
        "runs": runs,
        "speedup_bfloat16": runs["float32"]["wall_s"] / runs["bfloat16"]["wall_s"],
        "items_same_verdict": same_verdict, "items_same_text": same_text, "items": len(a),
    }
    out = ROOT / "benchmarks" / "results" / f"eval_dtype_{args.profile}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"bfloat16 {result['speedup_bfloat16']:.2f}x; same verdict on {same_verdict}/{len(a)}, "
          f"same text on {same_text}/{len(a)}; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
