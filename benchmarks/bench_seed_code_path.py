"""The llama-3.1-8b profile's code path on CUDA at reduced size, timed phase by phase, and a
projection of the seed's full run from it.

    python benchmarks/bench_seed_code_path.py [--layers 2,4] [--records-per-source 100]
        [--gen-tokens 128] [--phases 0,1A:qlora-bnb,1A:unsloth,1B,2A,2B] [--out PATH]
    python benchmarks/bench_seed_code_path.py --update --phases 1B   (re-measure one phase)
    python benchmarks/bench_seed_code_path.py --shape tiny --device cpu --phases 0,1A:peft-lora,1B,2A,2B
        (a CPU check of this script; its output is not a result)

What runs, each phase in its own process (unsloth patches transformers when imported, and
one phase failing leaves the others measured), through cogumi's own functions:
- 0: the seven sources by hub id (`cogumi.data.sources.load_hub_source`, i.e.
  `datasets.load_dataset(HUB_ID, split)`), read offline from `datasets`' cache, where
  fixtures/hub_cache.py wrote --records-per-source synthetic rows in each dataset's real
  columns (about 450 tokens per example: the profile's assumed mean for 1A).
- 1A: `backends.load_for_training` + `sft.train_lora` with the profile's [training] (rank 64,
  alpha 16, seven projections, batch 4 x grad_accum 17, 2048 tokens, gradient checkpointing)
  for one epoch over the curated records, per backend (qlora-bnb: peft + bitsandbytes NF4;
  unsloth: FastLanguageModel 4-bit). Optimizer steps are timed by a callback (synchronised);
  the first --warmup steps are excluded.
- 1B: 1B.1's data generation: `math_training_task` over the curated math records, greedy,
  through `TransformersBackend` and `evaluate` at the profile's eval batch size, with
  --gen-tokens new tokens per prompt (the profile allows 512; random weights never stop early).
  The projection reads the time spent in generation (`generate_seconds`); `seconds` adds
  the answers' verification, which does not grow with the layers.
- 2A: `prune.prune_model` (SparseGPT at the profile's 65 %, 512 calibration records).
- 2B: `quantize.quantize_model` (AWQ + W4A16 at the profile's 256 calibration records).
The model is Llama-3.1-8B-shaped (bench_train_backends.SHAPES: hidden 4096, 32 heads, 8 KV
heads, intermediate 14336, vocab 128256) with random bf16 weights and --layers decoder layers.

Projection to the seed's run. Each phase's time is measured at two layer counts L1 < L2 and
fitted as t(L) = a + b L (a: what does not repeat per layer: embeddings, the 128K-wide head,
loading; b: one decoder layer), then read at L = 32. Then:
- 1A: seed examples 640,637 (IMPLEMENTATION_CHECKLIST.md phase 0) x the profile's epochs /
  (batch x grad_accum) optimizer steps, times the 32-layer step time;
- 1B: the seed's 664 prompts (500 MATH + 164 CODE) in batches of the profile's eval batch
  size at the profile's max_new_tokens, the decode time scaled linearly in new tokens: once
  greedy (1B.1) and twice with the profile's k samples (the diagnostic and 1B.3's
  re-benchmark); plus 1B.2, the profile's epochs over those 664 examples at 1A's step time;
- 2A, 2B: the 32-layer time of the same calibration run (the profile's record counts).
Dollars are hours x the profile's price for the phase's plan hardware (`Profile.price_of`),
next to the seed's own figure (`cogumi.registry`). The projection assumes the synthetic
examples' length (about 450 tokens) for the real data's, and the plan hardware's speed for
the card measured here (the JSON names both).

Writes JSON (default benchmarks/results/seed_code_path_h200.json): provenance, every phase's
measurements per layer count, and `projection.<phase>.hours` that the profile's [plan] reads.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from cogumi.provenance import provenance  # noqa: E402 - needs ROOT on the path

SEED_PROFILE = "llama-3.1-8b"
SEED_EXAMPLES = 640_637
"""Phase 0's output in the seed (IMPLEMENTATION_CHECKLIST.md: "640,637 English examples")."""
SEED_1B_PROMPTS = 664
"""Seed 1B.1: "664 examples (500 MATH + 164 CODE)"."""
FULL_LAYERS = 32
_LIBRARIES = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "unsloth",
              "unsloth_zoo", "trl", "datasets", "llmcompressor", "compressed-tensors",
              "triton", "pydantic", "math-verify")
DEFAULT_PHASES = "0,1A:qlora-bnb,1A:unsloth,1B,2A,2B"


def _sync(device: str) -> None:
    if device == "cuda":
        import torch
        torch.cuda.synchronize()


def _reset_peak(device: str) -> None:
    if device == "cuda":
        import torch
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak(device: str) -> dict:
    if device != "cuda":
        return {}
    import torch
    return {"peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30}


def _model_cfg(model_dir: Path, params: int):
    from cogumi.profile import ModelConfig
    return ModelConfig(source="local", path=str(model_dir), dtype="bfloat16", parameters=params)


def _records(work: Path) -> list[dict]:
    return [json.loads(line) for line in (work / "records.jsonl").read_text().splitlines()]


# --- the phases, one per child process --------------------------------------------------------

def phase_0(args, work: Path) -> dict:
    """Write the seven sources into datasets' cache, then load them by hub id."""
    os.environ["HF_DATASETS_CACHE"] = str(work / "hf-datasets")
    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    from cogumi.data.sources import Record, load_hub_source
    from cogumi.profile import load_profile
    from fixtures.hub_cache import write_seed_sources
    write_seed_sources(work / "hf-datasets", args.records_per_source, seed=0,
                       prompt_words=args.prompt_words, response_words=args.response_words)
    profile = load_profile(SEED_PROFILE)
    t0 = time.perf_counter()
    kept, quarantined, per_source = [], 0, {}
    for source in profile.data.sources:
        items = list(load_hub_source(source.name, source.schema_, source.hub_id, source.split))
        per_source[source.hub_id] = len(items)
        for item in items:
            if isinstance(item, Record):
                kept.append(item.to_dict())
            else:
                quarantined += 1
    seconds = time.perf_counter() - t0
    (work / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    domains: dict[str, int] = {}
    for r in kept:
        domains[r["domain"]] = domains.get(r["domain"], 0) + 1
    return {"load_s": seconds, "rows_per_source": per_source, "records": len(kept),
            "quarantined": quarantined, "domains": domains,
            "what": "load_hub_source over the profile's seven sources, from datasets' offline "
                    "cache (normalise included; dedup, language and quality filters not run)"}


def _build(args, work: Path, layers: int) -> tuple[Path, int]:
    from bench_train_backends import build
    out = work / f"model-{layers}"
    if not (out / "COMPLETE").exists():
        build(args.shape, out, args.device, layers=layers)
        import torch
        if args.device == "cuda":
            torch.cuda.empty_cache()
    return out, int((out / "COMPLETE").read_text())


def phase_build(args, work: Path) -> dict:
    out = {}
    for layers in args.layers:
        t0 = time.perf_counter()
        _, params = _build(args, work, layers)
        out[str(layers)] = {"params": params, "build_s": time.perf_counter() - t0}
    return out


def phase_1a(args, work: Path, backend: str) -> dict:
    if backend == "unsloth":
        import unsloth  # noqa: F401 - before transformers, so all its patches apply
    from transformers import TrainerCallback

    from cogumi.profile import load_profile
    from cogumi.training.backends import load_for_training
    from cogumi.training.sft import encode_records, split_heldout, train_lora

    profile = load_profile(SEED_PROFILE)
    tcfg = profile.training.model_copy(update={"backend": backend, "epochs": 1.0})
    if args.shape == "tiny":
        tcfg = tcfg.model_copy(update={"lora_rank": 8, "max_seq_len": 512})
    out = {}
    for layers in args.layers:
        model_dir, params = _build(args, work, layers)
        mcfg = _model_cfg(model_dir, params)
        _reset_peak(args.device)
        t0 = time.perf_counter()
        loaded = load_for_training(mcfg, tcfg, ROOT, args.device)
        load_s = time.perf_counter() - t0
        train, _ = split_heldout(_records(work), tcfg.heldout_fraction)
        data = encode_records(train, loaded.tokenizer, loaded.add_bos, tcfg.max_seq_len)
        examples = data.examples
        tokens = sum(len(e.input_ids) for e in examples)
        steps_s: list[float] = []

        class StepClock(TrainerCallback):
            times = steps_s  # this layer count's list, bound now (the class is per loop turn)

            def on_step_begin(self, a, state, control, **kw):
                _sync(args.device)
                self.t = time.perf_counter()

            def on_step_end(self, a, state, control, **kw):
                _sync(args.device)
                self.times.append(time.perf_counter() - self.t)

        t1 = time.perf_counter()
        model, log, _ = train_lora(loaded.model, loaded.tokenizer, examples, tcfg, 0,
                                   work / f"ckpt-{backend}-{layers}", args.device,
                                   callbacks=[StepClock()])
        train_s = time.perf_counter() - t1
        timed = steps_s[args.warmup:] or steps_s
        per_step = tcfg.batch_size * tcfg.grad_accum
        tokens_per_step = tokens / len(examples) * per_step
        step_s = statistics.median(timed)
        losses = [h["loss"] for h in log if "loss" in h]
        out[str(layers)] = {
            "params": params, "examples": len(examples), "tokens": tokens,
            "mean_tokens_per_example": tokens / len(examples),
            "optimizer_steps": len(steps_s), "step_s": steps_s, "step_s_median_timed": step_s,
            "tokens_per_s": tokens_per_step / step_s, "load_s": load_s, "train_s": train_s,
            "loss_first_last": [losses[0], losses[-1]] if losses else None,
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            **_peak(args.device)}
        del model, loaded
        _free(args.device)
    return {"backend": backend, "lora_rank": tcfg.lora_rank, "batch": tcfg.batch_size,
            "grad_accum": tcfg.grad_accum, "max_seq_len": tcfg.max_seq_len,
            "epochs_run": 1, "warmup_steps_excluded": args.warmup, "layers": out}


def _free(device: str) -> None:
    import gc
    gc.collect()
    if device == "cuda":
        import torch
        torch.cuda.empty_cache()


def phase_1b(args, work: Path) -> dict:
    from cogumi.evaluation import GenerationSettings, evaluate
    from cogumi.evaluation.backends.transformers_backend import TransformersBackend
    from cogumi.models import load_base_model
    from cogumi.phases.self_consistency import math_training_task
    from cogumi.profile import load_profile

    profile = load_profile(SEED_PROFILE)
    sc = profile.self_consistency
    out = {}
    for layers in args.layers:
        model_dir, params = _build(args, work, layers)
        loaded = load_base_model(_model_cfg(model_dir, params), ROOT, args.device)
        task = math_training_task(_records(work), sc.math_prompts, "bench records")
        backend = TransformersBackend(loaded.model, loaded.tokenizer,
                                      batch_size=profile.eval.batch_size, add_bos=loaded.add_bos)
        new_tokens, generate_s = [0], [0.0]
        generate = backend.generate

        def counting(requests, generate=generate, generate_s=generate_s,
                     new_tokens=new_tokens):  # this layer count's, bound now
            # Decoding alone is what grows with the layers; the answers' verification
            # (math-verify on random text) does not, and it varies with what the random
            # weights write: with it on the clock the 2-layer run took 7.9 s against 2.5 s
            # at 4 layers, warm-up batch or not (device run of ae0a55d).
            _sync(args.device)
            t = time.perf_counter()
            outputs = generate(requests)
            _sync(args.device)
            generate_s[0] += time.perf_counter() - t
            new_tokens[0] += sum(o.completion_tokens for o in outputs)
            return outputs

        backend.generate = counting
        settings = GenerationSettings(max_new_tokens=args.gen_tokens, temperature=0.0, seed=0,
                                      samples=1)
        # Warm-up (kernels, cuBLAS handles and their per-shape heuristics, allocator) outside
        # the clock: the whole task once, so every batch's prompt length has been seen. Less
        # left warm-up in the 2-layer figure, which runs first: two prompts of 4 tokens gave
        # 13.4 s against 3.2 s at 4 layers, one whole batch 7.0 s against 2.1 s (generation
        # alone, device run of 0392ad4).
        evaluate(backend, [task], settings)
        new_tokens[0], generate_s[0] = 0, 0.0
        _reset_peak(args.device)
        _sync(args.device)
        t0 = time.perf_counter()
        report = evaluate(backend, [task], settings)
        _sync(args.device)
        seconds = time.perf_counter() - t0
        batches = math.ceil(len(task.items) / profile.eval.batch_size)
        out[str(layers)] = {"params": params, "prompts": len(task.items), "batches": batches,
                            "new_tokens": new_tokens[0], "seconds": seconds,
                            "generate_seconds": generate_s[0],
                            "seconds_per_batch": generate_s[0] / batches,
                            "new_tokens_per_s": new_tokens[0] / generate_s[0],
                            "verified": report.metrics.get("math_train.accuracy"),
                            **_peak(args.device)}
        del loaded, backend
        _free(args.device)
    return {"max_new_tokens": args.gen_tokens, "batch_size": profile.eval.batch_size,
            "layers": out}


def phase_compress(args, work: Path, which: str) -> dict:
    from cogumi.models import load_base_model
    from cogumi.profile import load_profile

    profile = load_profile(SEED_PROFILE)
    heldout = profile.training.heldout_fraction
    out = {}
    for layers in args.layers:
        model_dir, params = _build(args, work, layers)
        loaded = load_base_model(_model_cfg(model_dir, params), ROOT, args.device)
        records = _records(work)
        scratch = work / f"scratch-{which}-{layers}"
        # Imported outside the clock (seconds of module loading, once per process).
        import llmcompressor.modifiers.pruning.sparsegpt  # noqa: F401
        import llmcompressor.modifiers.quantization  # noqa: F401
        import llmcompressor.modifiers.transform.awq  # noqa: F401
        _reset_peak(args.device)
        _sync(args.device)
        t0 = time.perf_counter()
        if which == "2A":
            from cogumi.compression.llmc import sparsity_report
            from cogumi.phases.prune import prune_model
            cfg = profile.prune
            model, accounting = prune_model(loaded.model, loaded.tokenizer, loaded.add_bos,
                                            records, cfg, heldout, 0, scratch)
            _sync(args.device)
            seconds = time.perf_counter() - t0
            measured = {"sparsity_linear": sparsity_report(model, list(cfg.ignore))["linear"]}
        else:
            from cogumi.phases.quantize import quantize_model
            cfg = profile.quantize
            if args.shape == "tiny":  # its 64-wide layers do not divide W4A16's groups
                cfg = cfg.model_copy(update={"indivisible": "keep-full-precision"})
            model, ignore, _, accounting = quantize_model(
                loaded.model, loaded.tokenizer, loaded.add_bos, records, cfg, heldout, 0,
                scratch, "bench")
            _sync(args.device)
            seconds = time.perf_counter() - t0
            measured = {"method": cfg.method, "ignore": ignore}
        out[str(layers)] = {"params": params, "seconds": seconds, "calibration": accounting,
                            **measured, **_peak(args.device)}
        del loaded, model
        _free(args.device)
    return {"layers": out}


def child(args) -> None:
    work = Path(args.workdir)
    name = args.child
    if name == "0":
        result = phase_0(args, work)
    elif name == "build":
        result = phase_build(args, work)
    elif name.startswith("1A:"):
        result = phase_1a(args, work, name.split(":", 1)[1])
    elif name == "1B":
        result = phase_1b(args, work)
    else:
        result = phase_compress(args, work, name)
    (work / f"result-{name.replace(':', '_')}.json").write_text(json.dumps(result, indent=1))


# --- projection ---------------------------------------------------------------------------

def fit_at(points: dict[int, float], layers: int) -> dict:
    """t(L) = a + b L through the two measured layer counts, read at `layers`."""
    (l1, t1), (l2, t2) = sorted(points.items())[:2]
    b = (t2 - t1) / (l2 - l1)
    a = t1 - b * l1
    return {"per_layer": b, "fixed": a, "at": a + b * layers, "layers": [l1, l2],
            "grows_with_layers": b > 0}


def project(results: dict, profile) -> dict:
    from cogumi.registry import get_phase
    out = {}

    def priced(phase: str, hours: float, rule: str, extra: dict) -> dict:
        fits = [v for k, v in extra.items() if isinstance(v, dict) and "grows_with_layers" in v]
        if not all(f["grows_with_layers"] for f in fits):
            # A time that does not grow with the layer count is not a per-layer cost (a
            # warm-up left in the first measurement): no projection rather than a wrong one.
            return {"hours": None, "usd": None, "seed_usd": get_phase(phase).seed_cost_usd,
                    "not_projected": "the measured time did not grow with the layer count "
                                     "(the first layer count's run still held warm-up)",
                    "rule": rule, **extra}
        hardware = profile.plan[phase].hardware
        price = profile.price_of(hardware)
        return {"hours": hours, "usd": hours * price, "price_per_hour_usd": price,
                "priced_as": hardware, "price_from": profile.source_file,
                "seed_usd": get_phase(phase).seed_cost_usd, "rule": rule, **extra}

    t = profile.training
    train = {k: v for k, v in results.items() if k.startswith("1A:") and "layers" in v}
    for name in sorted(train, key=lambda n: n != f"1A:{t.backend}"):  # the profile's first
        layers = {int(k): v["step_s_median_timed"] for k, v in train[name]["layers"].items()}
        if len(layers) < 2:
            continue
        step = fit_at(layers, FULL_LAYERS)
        steps = math.ceil(SEED_EXAMPLES * t.epochs / (t.batch_size * t.grad_accum))
        key = "1A" if "1A" not in out else f"1A ({name[3:]})"
        out[key] = priced("1A", steps * step["at"] / 3600,
                          f"{SEED_EXAMPLES} examples x {t.epochs:g} epochs / "
                          f"({t.batch_size} x {t.grad_accum}) = {steps} optimizer steps x the "
                          f"step time fitted a + b L at L = {FULL_LAYERS}",
                          {"backend": name[3:], "optimizer_steps": steps,
                           "step_s_at_32_layers": step["at"], "step_fit": step})
    if "layers" in results.get("1B", {}):
        r = results["1B"]
        per_batch = fit_at({int(k): v["seconds_per_batch"] for k, v in r["layers"].items()},
                           FULL_LAYERS)
        scale = profile.eval.max_new_tokens / r["max_new_tokens"]
        batch_s = per_batch["at"] * scale
        sc = profile.self_consistency
        greedy_batches = math.ceil(SEED_1B_PROMPTS / r["batch_size"])
        # The diagnostic before 1B.1 and the re-benchmark (1B.3) each sample k answers per
        # prompt: k x 664 sequences at the same per-batch cost (random weights never stop
        # early, so a sampled batch decodes as long as a greedy one).
        sampled_batches = math.ceil(SEED_1B_PROMPTS * sc.samples / r["batch_size"])
        parts = {"1B.1 generation": greedy_batches * batch_s / 3600,
                 "diagnostic + 1B.3 re-benchmark": 2 * sampled_batches * batch_s / 3600}
        rule = (f"1B.1: {SEED_1B_PROMPTS} greedy prompts in {greedy_batches} batches of "
                f"{r['batch_size']}; diagnostic and 1B.3: {sc.samples} samples each, "
                f"{sampled_batches} batches twice; a batch's time fitted a + b L at "
                f"L = {FULL_LAYERS}, scaled x{scale:g} from {r['max_new_tokens']} to "
                f"{profile.eval.max_new_tokens} new tokens")
        extra = {"seconds_per_batch_at_32_layers": per_batch["at"], "fit": per_batch}
        step = out.get("1A", {}).get("step_s_at_32_layers")
        if step is not None:
            # 1B.2 trains with 1A's recipe (rank, batch, sequence length), so 1A's measured
            # step time is its step time; every one of the 664 examples is counted as kept
            # (an upper bound: 1B keeps only what the verifier accepts).
            t = profile.training
            steps = math.ceil(SEED_1B_PROMPTS * sc.epochs / (t.batch_size * t.grad_accum))
            parts["1B.2 training"] = steps * step / 3600
            rule += (f"; 1B.2: {SEED_1B_PROMPTS} examples x {sc.epochs:g} epochs = {steps} "
                     f"optimizer steps at 1A's 32-layer step time")
            extra["step_fit"] = out["1A"]["step_fit"]
        else:
            rule += "; 1B.2 training not projected (no 1A measurement)"
        out["1B"] = priced("1B", sum(parts.values()), rule,
                           {**extra, "parts_hours": parts,
                            "seed_parts": "1B.1 2-3 h $2-3, 1B.2 3-4 h $6-8, 1B.3 2-3 h $4-6 "
                                          "(IMPLEMENTATION_CHECKLIST.md)"})
    for phase in ("2A", "2B"):
        if "layers" not in results.get(phase, {}):
            continue
        fit = fit_at({int(k): v["seconds"] for k, v in results[phase]["layers"].items()},
                     FULL_LAYERS)
        records = (profile.prune if phase == "2A" else profile.quantize).calibration_records
        out[phase] = priced(phase, fit["at"] / 3600,
                            f"the one-shot run's time ({records} calibration records, the "
                            f"profile's) fitted a + b L at L = {FULL_LAYERS}",
                            {"seconds_at_32_layers": fit["at"], "fit": fit})
    return out


# --- the parent ----------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="llama-3.1-8b")
    parser.add_argument("--layers", default="2,4")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--phases", default=DEFAULT_PHASES)
    parser.add_argument("--records-per-source", type=int, default=100)
    parser.add_argument("--prompt-words", type=int, default=60)
    parser.add_argument("--response-words", type=int, default=380)
    parser.add_argument("--gen-tokens", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=240, help="seconds per phase")
    parser.add_argument("--workdir", default="/tmp/bench_seed_code_path")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/seed_code_path_h200.json"))
    parser.add_argument("--update", action="store_true",
                        help="re-measure only --phases and replace their entries in --out, "
                             "keeping the other phases' measurements (each entry records the "
                             "run that measured it)")
    parser.add_argument("--reproject", metavar="JSON",
                        help="recompute the projection of a result file from its measurements")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.layers = [int(x) for x in args.layers.split(",")]
    if args.child:
        return child(args)
    if args.reproject:
        from cogumi.profile import load_profile
        path = Path(args.reproject)
        result = json.loads(path.read_text())
        result["projection"] = project(result["phases"], load_profile(SEED_PROFILE))
        result["projection_command"] = provenance()["command"]
        path.write_text(json.dumps(result, indent=1) + "\n")
        return _print_projection(result)
    if len(args.layers) != 2:
        parser.error("--layers takes two layer counts (the projection fits a line through them)")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    from cogumi.profile import load_profile
    profile = load_profile(SEED_PROFILE)
    import torch
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else None
    run = provenance(_LIBRARIES, device=device)
    out = Path(args.out)
    named = args.phases.split(",")
    if args.update:
        # Phase 0 and the model build always run (the others read their files), but in an
        # update only the phases named in --phases replace what the file holds.
        if not out.exists():
            parser.error(f"--update: {out} does not exist (run without --update first)")
        result = json.loads(out.read_text())
        # Every setting the file records must be this run's: an update at another shape,
        # layer count or record count would mix two measurements in one projection.
        ours = {"shape": args.shape, "layers_measured": args.layers,
                "records_per_source": args.records_per_source, "workload": _workload(args)}
        differ = [f"{key} {result[key]} (here {ours[key]})" for key in ours
                  if key in result and result[key] != ours[key]]
        if differ:
            parser.error(f"--update: {out} was measured with " + ", ".join(differ))
        result.setdefault("updates", []).append({**run, "phases": named})
    else:
        result = {**run, "method": __doc__.split("\n\n", 2)[2].split("\nWrites JSON")[0],
                  "shape": args.shape, "layers_measured": args.layers,
                  "records_per_source": args.records_per_source,
                  "workload": _workload(args), "phases": {}}
    if args.shape == "tiny":
        result["note"] = "CPU check of the script at a tiny shape: not a measurement"
    base = [sys.executable, str(Path(__file__).resolve()), "--shape", args.shape,
            "--layers", ",".join(map(str, args.layers)), "--device", args.device,
            "--records-per-source", str(args.records_per_source),
            "--prompt-words", str(args.prompt_words),
            "--response-words", str(args.response_words), "--gen-tokens", str(args.gen_tokens),
            "--warmup", str(args.warmup), "--workdir", str(work)]
    for name in ["0", "build"] + [p for p in named if p != "0"]:
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(base + ["--child", name], capture_output=True, text=True,
                                  timeout=args.timeout)
            failed = proc.returncode != 0
            tail = (proc.stderr or proc.stdout)[-3000:]
        except subprocess.TimeoutExpired as exc:
            failed, tail = True, f"timed out after {args.timeout} s: " + str(exc.stderr)[-2000:]
        part = work / f"result-{name.replace(':', '_')}.json"
        entry = {"error": tail} if failed or not part.exists() else json.loads(part.read_text())
        entry["wall_s"] = time.perf_counter() - t0
        print(f"{name}: {'FAILED' if 'error' in entry else 'ok'} in {entry['wall_s']:.0f} s",
              flush=True)
        if "error" in entry:
            print(tail[-1500:], flush=True)
        if args.update and name not in named:
            if "error" in entry:  # a prerequisite failed: what follows cannot be measured
                parser.exit(1, f"--update: prerequisite {name} failed; {out} left as it was\n")
            continue
        if args.update:
            entry["measured_by"] = {k: run[k] for k in ("command", "git_commit", "recorded_at")}
        result["phases"][name] = entry
        result["projection"] = project(result["phases"], profile)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")  # after every phase: a kill keeps it
    _print_projection(result)


def _workload(args) -> dict:
    """The per-record sizes and the warm-up the timings depend on."""
    return {"prompt_words": args.prompt_words, "response_words": args.response_words,
            "gen_tokens": args.gen_tokens, "warmup": args.warmup}


def _print_projection(result: dict) -> None:
    for phase, p in result["projection"].items():
        if p["hours"] is None:
            print(f"{phase}: not projected ({p['not_projected']}); seed ${p['seed_usd']}")
        else:
            print(f"{phase}: {p['hours']:.2f} h, ${p['usd']:,.2f} at ${p['price_per_hour_usd']}/h "
                  f"({p['priced_as']}); seed ${p['seed_usd']}")


if __name__ == "__main__":
    main()
