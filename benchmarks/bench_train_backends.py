"""Training throughput and peak GPU memory of the three 1A backends (peft-lora in bf16,
qlora-bnb, unsloth) on the same model, data and sequence length, with the seed's LoRA
(rank 64, alpha 16, all seven projections, gradient checkpointing) from the llama-3.1-8b
profile. Run on a CUDA machine:

    python benchmarks/bench_train_backends.py [--models llama-3.1-8b,llama-3.2-1b]
        [--backends peft-lora,qlora-bnb,unsloth] [--steps 8] [--warmup 3] [--out PATH]

Models are Llama-shaped with random bf16 weights (speed and memory do not depend on the
values), built once on the GPU, saved to --workdir and loaded by each backend's own loader
(`cogumi.training.backends.load_for_training`), so the 4-bit backends quantise on load as
they would the real checkpoint. Each backend runs in its own process: unsloth patches
transformers when imported and must not touch the others' numbers, and one backend failing
(out of memory, a missing package) leaves the others measured. A step is forward + backward
+ optimizer step on one micro-batch of --batch random-token sequences of --seq tokens, in
bf16 autocast, with the optimizer the Trainer would build for that backend. Warm-up steps
are excluded; tokens/s counts every token of the timed steps.

Writes JSON to --out (default benchmarks/results/train_backends.json), merging the models it
ran into what the file already holds, and rewriting it after every backend.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cogumi.provenance import command as command_line  # noqa: E402 - needs ROOT on the path
from cogumi.provenance import provenance  # noqa: E402

BACKEND_NAMES = ("peft-lora", "qlora-bnb", "unsloth")
SEED_PROFILE = "llama-3.1-8b"
_LLAMA3_ROPE = {"rope_type": "llama3", "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}
# Shapes from the published config.json files; vocab 128256 as in every Llama 3 model.
SHAPES = {
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                         max_position_embeddings=131072, rope_theta=500000.0,
                         rope_scaling={**_LLAMA3_ROPE, "factor": 8.0},
                         rms_norm_eps=1e-5, tie_word_embeddings=False),
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                         max_position_embeddings=131072, rope_theta=500000.0,
                         rope_scaling={**_LLAMA3_ROPE, "factor": 32.0},
                         rms_norm_eps=1e-5, tie_word_embeddings=True),
    # CPU smoke test of this script (peft-lora only): python ... --models tiny --device cpu
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                 max_position_embeddings=512, tie_word_embeddings=False),
}
BOS, EOS, PAD, EOT = 128000, 128001, 128004, 128009  # Llama 3's special-token ids


# --- building the random checkpoint ---------------------------------------------------------

def _tokenizer(vocab_size: int):
    """A word-level tokenizer with the model's full vocabulary and Llama 3's special-token ids:
    the loaders need one on disk; the benchmark feeds token ids directly."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    specials = {"<|begin_of_text|>": BOS, "<|end_of_text|>": EOS,
                "<|finetune_right_pad_id|>": PAD, "<|eot_id|>": EOT}
    if vocab_size <= EOT:
        specials = dict(zip(specials, range(4), strict=True))
    by_id = {i: name for name, i in specials.items()}
    vocab = {by_id.get(i, f"t{i}"): i for i in range(vocab_size)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t5"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|begin_of_text|>",
                                  eos_token="<|eot_id|>", pad_token="<|finetune_right_pad_id|>")
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}{{ m['role'] }}: "
                         "{{ m['content'] }}<|eot_id|>{% endfor %}")
    return tok


def build(shape: str, out_dir: Path, device: str, layers: int | None = None) -> None:
    """Random bf16 weights of `shape`, initialised on the device (seconds, not minutes on the
    CPU), saved as safetensors with a tokenizer. `layers`: fewer decoder layers of the same
    shape (a reduced model for bench_train_ddp.py)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    tok = _tokenizer(SHAPES[shape]["vocab_size"])
    dims = {**SHAPES[shape], **({"num_hidden_layers": layers} if layers else {})}
    cfg = LlamaConfig(**dims, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cfg.dtype = torch.bfloat16
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    model.save_pretrained(out_dir, max_shard_size="4GB")
    tok.save_pretrained(out_dir)
    (out_dir / "COMPLETE").write_text(str(sum(p.numel() for p in model.parameters())))


# --- one backend, in its own process --------------------------------------------------------

def _lora_report(model) -> dict:
    """What the backend actually built, read back from the model (not from our config)."""
    lora = model.peft_config["default"]
    # bitsandbytes' own layers only: peft's LoRA wrappers around them share the class name.
    linear4 = [m for m in model.modules() if type(m).__name__ == "Linear4bit"
               and type(m).__module__.startswith("bitsandbytes")]
    out = {"lora_r": lora.r, "lora_alpha": lora.lora_alpha,
           "lora_target_modules": sorted(lora.target_modules),
           "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
           "linear4bit_modules": len(linear4)}
    if linear4:
        w = linear4[0].weight
        out["quant_type"] = getattr(w, "quant_type", None)
        out["double_quant"] = bool(getattr(getattr(w, "quant_state", None), "nested", False))
        out["compute_dtype"] = str(getattr(linear4[0], "compute_dtype", None))
    return out


def worker(backend: str, model_dir: Path, params: int, batch: int, seq: int, warmup: int,
           steps: int, device: str) -> dict:
    t_start = time.perf_counter()
    from cogumi.profile import ModelConfig, load_profile
    from cogumi.training import backends
    if backend == "unsloth":
        import unsloth  # noqa: F401  # before transformers, so that all its patches apply
    import torch
    from transformers import Trainer, TrainingArguments

    cuda = device == "cuda"
    tcfg = load_profile(SEED_PROFILE).training.model_copy(
        update={"backend": backend, "batch_size": batch, "max_seq_len": seq})
    mcfg = ModelConfig(source="local", path=str(model_dir), dtype="bfloat16", parameters=params)
    loaded = backends.load_for_training(mcfg, tcfg, ROOT, device)
    t_loaded = time.perf_counter()
    weights_gib = torch.cuda.memory_allocated() / 2**30 if cuda else None
    model = backends.wrap_lora(loaded.model, tcfg, seed=0)
    model.train()
    # The optimizer the Trainer itself would build for this backend (train_lora's path).
    args = TrainingArguments(output_dir=str(model_dir / "trainer-args"), report_to=[],
                             learning_rate=tcfg.learning_rate, use_cpu=not cuda,
                             **backends.trainer_arguments(tcfg, device))
    optim_cls, optim_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    optimizer = optim_cls([p for p in model.parameters() if p.requires_grad], **optim_kwargs)
    vocab = model.config.vocab_size
    gen = torch.Generator(device=device).manual_seed(0)
    # A few distinct random batches, rotated: no step sees all-equal or cached input.
    batches = [torch.randint(0, vocab, (batch, seq), device=device, generator=gen)
               for _ in range(4)]
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    step_s, losses = [], []
    for i in range(warmup + steps):
        ids = batches[i % len(batches)]
        t0 = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=args.bf16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())  # .item() synchronises: the host clock is then valid
        step_s.append(time.perf_counter() - t0)
    timed = step_s[warmup:]
    if not all(math.isfinite(v) for v in losses):
        raise RuntimeError(f"non-finite loss: {losses}")
    return {
        "tokens_per_s": batch * seq * len(timed) / sum(timed),
        "step_s_median": statistics.median(timed),
        "step_s_min": min(timed), "step_s_max": max(timed),
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else None,
        "weights_mem_gib": weights_gib,
        "load_s": t_loaded - t_start,
        "optimizer": f"{optim_cls.__module__}.{optim_cls.__name__} {optim_kwargs}",
        "bf16_autocast": bool(args.bf16),
        "loss_first_last": [losses[0], losses[-1]],
        **_lora_report(model),
    }


# --- the parent: build, run each backend, summarise -----------------------------------------

_LIBRARIES = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "unsloth",
              "unsloth_zoo", "trl", "triton", "xformers", "flash-attn", "datasets")


def _device() -> dict:
    import torch
    if not torch.cuda.is_available():
        return {"name": "cpu", "cuda": None}
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                          "--format=csv,noheader"], capture_output=True, text=True)
    return {"name": torch.cuda.get_device_name(0), "cuda": torch.version.cuda,
            "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
            "nvidia_smi": smi.stdout.strip()}


def _run_child(argv: list[str], timeout: int) -> tuple[dict | None, str]:
    try:
        proc = subprocess.run([sys.executable, __file__, *argv], capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")[-3000:]
        return None, f"timed out after {timeout} s; stderr tail: " + (
            tail.decode(errors="replace") if isinstance(tail, bytes) else tail)
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
    log = proc.stdout[-2000:] + "\n--- stderr ---\n" + proc.stderr[-6000:]
    if proc.returncode != 0 and result is None:
        return None, f"exit {proc.returncode}; " + log
    return result, log


def summarise(model_result: dict) -> dict:
    """Ratios against plain peft + bitsandbytes QLoRA, and the seed's 1A run projected from
    each measured throughput."""
    from cogumi.profile import load_profile
    from cogumi.registry import get_phase
    p = load_profile(SEED_PROFILE)
    t = p.training
    steps = math.ceil(640_637 * t.epochs / (t.batch_size * t.grad_accum))
    seqs_per_step = t.batch_size * t.grad_accum
    price = p.hardware.price_per_hour_usd
    plan_tokens = p.plan["1A"].tokens
    measured = {b: r for b, r in model_result["backends"].items() if "tokens_per_s" in r}
    summary = {"seed": {"steps": steps, "sequences_per_step": seqs_per_step,
                        "seq_len": t.max_seq_len, "price_usd_per_h": price,
                        "seed_cost_usd": float(get_phase("1A").seed_cost_usd), "plan_tokens": plan_tokens}}
    if measured:
        fastest = max(measured, key=lambda b: measured[b]["tokens_per_s"])
        summary["fastest"] = fastest
        base = measured.get("qlora-bnb")
        if base:
            summary["speedup_vs_qlora_bnb"] = {
                b: r["tokens_per_s"] / base["tokens_per_s"] for b, r in measured.items()}
            summary["fastest_vs_qlora_bnb"] = summary["speedup_vs_qlora_bnb"][fastest]
        proj = {}
        for b, r in measured.items():
            tps = r["tokens_per_s"]
            # Upper bound: every one of the 68 sequences of a step a full 2048 tokens long.
            full_h = steps * seqs_per_step * t.max_seq_len / tps / 3600
            # The profile's plan: 640,637 x 3 examples at an assumed mean of 450 tokens,
            # at the throughput measured at 2048 tokens (shorter sequences run no slower).
            plan_h = plan_tokens / tps / 3600
            proj[b] = {"full_2048_hours": full_h, "full_2048_usd": full_h * price,
                       "plan_tokens_hours": plan_h, "plan_tokens_usd": plan_h * price}
        summary["seed_1A_projection"] = proj
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="llama-3.1-8b,llama-3.2-1b")
    ap.add_argument("--backends", default=",".join(BACKEND_NAMES))
    ap.add_argument("--batch", type=int, default=4, help="sequences per step (profile: 4)")
    ap.add_argument("--seq", type=int, default=2048, help="tokens per sequence (profile: 2048)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8, help="timed steps")
    ap.add_argument("--workdir", default="/tmp/cogumi-train-bench")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per backend process")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_backends.json"))
    # Internal: the child processes.
    ap.add_argument("--build", help=argparse.SUPPRESS)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--params", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.build:
        build(args.build, Path(args.model_dir), args.device)
        return
    if args.worker:
        try:
            result = worker(args.worker, Path(args.model_dir), args.params, args.batch,
                            args.seq, args.warmup, args.steps, args.device)
        except Exception as exc:  # reported in the JSON; the traceback goes to stderr
            import traceback
            traceback.print_exc()
            result = {"error": f"{type(exc).__name__}: {str(exc)[:1500]}"}
        print("RESULT " + json.dumps(result), flush=True)
        return

    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {}
    command = command_line()
    report.update({
        "command": command,
        "provenance_in": "models",
        "setup": report.get("setup", "GPU packages missing from the machine (bitsandbytes, "
                            "unsloth and its dependencies) installed with pip --no-deps"),
        "method": __doc__.split("\n\n")[2].replace("\n", " "),
    })
    report.setdefault("models", {})
    keys = []
    for shape in args.models.split(","):
        model_dir = Path(args.workdir) / shape
        if not (model_dir / "COMPLETE").exists():
            t0 = time.perf_counter()
            _, log = _run_child(["--build", shape, "--model-dir", str(model_dir),
                                 "--device", args.device], args.timeout)
            print(f"[{shape}] built in {time.perf_counter() - t0:.0f} s", flush=True)
            if not (model_dir / "COMPLETE").exists():
                print(log, flush=True)
                report["models"][shape] = {"error": "building the random model failed: " + log}
                continue
        params = int((model_dir / "COMPLETE").read_text())
        device = _device()
        # Each section records its own provenance: the file merges runs on different cards.
        entry = {**provenance(_LIBRARIES, device=device["name"]), "device": device,
                 "params": params,
                 "shape": SHAPES[shape], "batch": args.batch, "seq_len": args.seq,
                 "warmup_steps": args.warmup, "timed_steps": args.steps, "backends": {}}
        # One section per model and card: numbers from different cards are never mixed.
        key = f"{shape} @ {device['name']}"
        report["models"][key] = entry
        keys.append(key)
        for backend in args.backends.split(","):
            t0 = time.perf_counter()
            result, log = _run_child(
                ["--worker", backend, "--model-dir", str(model_dir), "--params", str(params),
                 "--batch", str(args.batch), "--seq", str(args.seq), "--warmup",
                 str(args.warmup), "--steps", str(args.steps), "--device", args.device],
                args.timeout)
            result = result or {"error": log}
            result["wall_s"] = time.perf_counter() - t0
            if "error" in result:
                result["log_tail"] = log[-4000:]
            entry["backends"][backend] = result
            entry["summary"] = summarise(entry)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=2) + "\n")
            shown = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in result.items()
                     if k in ("tokens_per_s", "peak_mem_gib", "step_s_median", "load_s", "wall_s",
                              "error")}
            print(f"[{key}] {backend}: {json.dumps(shown)[:600]}", flush=True)
    for key in keys:
        s = report["models"][key].get("summary", {})
        print(f"[{key}] fastest {s.get('fastest')}, vs qlora-bnb: "
              f"{json.dumps(s.get('speedup_vs_qlora_bnb'))}")
        for b, pr in s.get("seed_1A_projection", {}).items():
            print(f"  {b}: seed 1A at 68x2048 tokens/step {pr['full_2048_hours']:.0f} h "
                  f"${pr['full_2048_usd']:.0f}; at the plan's 8.65e8 tokens "
                  f"{pr['plan_tokens_hours']:.0f} h ${pr['plan_tokens_usd']:.0f} (seed: $220)")


if __name__ == "__main__":
    main()
