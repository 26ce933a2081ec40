"""Batched generation throughput against one-prompt-at-a-time generation, same backend,
same model, same prompts, measured in one run. Target (issue 3): >= 5x on this CPU with
the tiny model.

    python benchmarks/bench_eval_generation.py [--prompts 64] [--max-new 32] [--batch 16]

Writes benchmarks/results/eval_generation.json. Runs at torch's default thread count and
again with one thread: on small machines PyTorch's batch-1 matrix-vector path can be
dominated by thread wake-ups, which inflates the ratio; the one-thread run shows the ratio
without that effect.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load_model():
    fixture = ROOT / "fixtures" / "tiny-llama"
    if (fixture / "config.json").exists():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(fixture)
        return AutoModelForCausalLM.from_pretrained(fixture).eval(), tok, str(fixture)
    from cogumi.evaluation.testing import tiny_llama, tiny_tokenizer

    tok = tiny_tokenizer()
    return tiny_llama(tok), tok, "cogumi.evaluation.testing.tiny_llama (random init)"


def run(backend, requests, batched: bool) -> tuple[float, int]:
    t = time.perf_counter()
    if batched:
        outs = backend.generate(requests)
    else:
        outs = [backend.generate([r])[0] for r in requests]
    return time.perf_counter() - t, sum(o.completion_tokens for o in outs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-new", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "eval_generation.json"))
    args = ap.parse_args()

    import torch

    from cogumi.evaluation import GenerationRequest, TransformersBackend
    from cogumi.provenance import provenance

    model, tok, origin = load_model()
    backend = TransformersBackend(model, tok, batch_size=args.batch)
    reqs = [GenerationRequest(messages=({"role": "user", "content": f"Problem {i}: what is {i} + {i * 3}?"},),
                              max_new_tokens=args.max_new, temperature=0.0) for i in range(args.prompts)]
    default_threads = torch.get_num_threads()
    runs = {}
    for threads in (default_threads, 1):
        torch.set_num_threads(threads)
        backend.generate(reqs[:2])  # warm-up
        tb, nb = run(backend, reqs, batched=True)
        ts, ns = run(backend, reqs, batched=False)
        runs[f"threads={threads}"] = {
            "batched_s": tb, "batched_tokens": nb, "batched_tok_per_s": nb / tb,
            "sequential_s": ts, "sequential_tokens": ns, "sequential_tok_per_s": ns / ts,
            "speedup": (nb / tb) / (ns / ts),
        }
    torch.set_num_threads(default_threads)
    result = {
        **provenance(("torch", "transformers")),
        "benchmark": "batched vs one-at-a-time generation (TransformersBackend)",
        "model": origin,
        "params": sum(p.numel() for p in model.parameters()),
        "prompts": args.prompts, "max_new_tokens": args.max_new, "batch_size": args.batch,
        "runs": runs,
        "target_speedup": 5.0,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
