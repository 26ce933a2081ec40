"""The TransformersBackend on a CUDA device: batched output equals one-at-a-time output
(greedy and seeded sampling), log-likelihoods agree between batch sizes, and batched
throughput against one-at-a-time, for a random tiny Llama (fp32) and a random ~0.5B Llama
(bf16). Run on a GPU machine:

    python benchmarks/bench_eval_gpu.py [--out PATH]

Writes benchmarks/results/eval_gpu.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "eval_gpu.json"))
    args = ap.parse_args()
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from cogumi.evaluation import GenerationRequest, LoglikelihoodRequest, TransformersBackend
    from cogumi.evaluation.testing import tiny_llama, tiny_tokenizer

    assert torch.cuda.is_available(), "needs a CUDA device"
    tok = tiny_tokenizer()
    result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "models": {}}
    torch.manual_seed(0)
    big = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
        num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    models = {"tiny-fp32": tiny_llama(tok).cuda(), "llama-0.4B-bf16": big.to(torch.bfloat16).cuda().eval()}
    for name, model in models.items():
        be = TransformersBackend(model, tok, batch_size=32)
        reqs = [GenerationRequest(messages=({"role": "user", "content": f"Problem {i}: " + "x" * (i % 7)},),
                                  max_new_tokens=64, temperature=0.0 if i % 2 else 0.8, seed=i)
                for i in range(64)]
        be.generate(reqs[:2])
        torch.cuda.synchronize()
        t = time.perf_counter()
        batched = be.generate(reqs)
        torch.cuda.synchronize()
        tb = time.perf_counter() - t
        t = time.perf_counter()
        single = [be.generate([r])[0] for r in reqs]
        torch.cuda.synchronize()
        ts = time.perf_counter() - t
        same = sum(a.text == b.text for a, b in zip(batched, single, strict=True))
        ll_reqs = [LoglikelihoodRequest(continuation=f" {c}", context=f"Question {i}. The answer is")
                   for i in range(16) for c in "ABCD"]
        ll_b = be.loglikelihood(ll_reqs)
        ll_1 = [be.loglikelihood([r])[0] for r in ll_reqs]
        max_ll_diff = max(abs(a.logprob - b.logprob) for a, b in zip(ll_b, ll_1, strict=True))
        nb = sum(o.completion_tokens for o in batched)
        ns = sum(o.completion_tokens for o in single)
        result["models"][name] = {
            "params": sum(p.numel() for p in model.parameters()),
            "identical_outputs_batched_vs_single": f"{same}/{len(reqs)}",
            "max_loglik_diff_batched_vs_single": max_ll_diff,
            "batched_tok_per_s": nb / tb, "single_tok_per_s": ns / ts,
            "speedup": (nb / tb) / (ns / ts),
        }
        print(name, json.dumps(result["models"][name]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
