"""Phase 1A's training launched the way `hardware.processes` launches it (torchrun workers,
DDP in the transformers Trainer: cogumi.training.launch.train_lora_processes), on CUDA GPUs:
tokens/s and peak GPU memory per rank, for each process count asked for.

    python benchmarks/bench_train_ddp.py [--processes 1,2] [--shape llama-3.1-8b --layers 8]
        [--batch 4 --grad-accum 17 --seq 2048] [--warmup 1 --steps 3] [--out PATH]

The model is Llama-shaped with random bf16 weights (bench_train_backends.build: the real
layer shapes, --layers of them), trained with the llama-3.1-8b profile's LoRA and schedule
(rank 64, alpha 16, all seven projections, gradient checkpointing, batch 4 x grad_accum 17,
2048 tokens) on backend peft-lora in bf16 (the profile's unsloth and qlora-bnb need packages
the lent GPU machine does not have). Examples are random tokens, exactly --seq long, the
first half masked as the prompt, so every optimizer step holds batch x grad_accum x seq x
processes tokens. Each worker times its optimizer steps (forward, backward and optimizer
over all micro-batches, synchronised; not the checkpoint saves between steps); tokens/s
is tokens per step over rank 0's median timed step, after --warmup steps. Also recorded: the
Trainer's own train_runtime (every step, saves and logging included) and the whole launch's
wall time (process start and model loading included). Peak memory is
torch.cuda.max_memory_allocated in each rank.

Writes JSON to --out (default benchmarks/results/train_ddp.json), merging its sections (one
per process count, model and card) into what the file holds; with 1 and N processes on the
same card and model it adds the N-process scaling: tokens/s ratio and efficiency (ratio / N;
the issue's target is 1.8x on 2 GPUs).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cogumi.provenance import provenance  # noqa: E402 - needs ROOT on the path

SEED_PROFILE = "llama-3.1-8b"
_LIBRARIES = ("torch", "transformers", "peft", "accelerate", "pydantic")


def _examples(n: int, seq: int, vocab: int, seed: int):
    from cogumi.training.sft import IGNORE_INDEX, Example
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ids = [rng.randrange(4, vocab) for _ in range(seq)]
        out.append(Example(ids, [IGNORE_INDEX] * (seq // 2) + ids[seq // 2:]))
    return out


def run_one(processes: int, model_dir: Path, params: int, args) -> dict:
    from cogumi.profile import ModelConfig, load_profile
    from cogumi.training.launch import train_lora_processes

    steps = args.warmup + args.steps
    per_step = args.batch * args.grad_accum * processes
    tcfg = load_profile(SEED_PROFILE).training.model_copy(update={
        "backend": "peft-lora", "batch_size": args.batch, "grad_accum": args.grad_accum,
        "max_seq_len": args.seq, "epochs": 1.0, "max_examples": None})
    mcfg = ModelConfig(source="local", path=str(model_dir), dtype="bfloat16",
                       parameters=params)
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    examples = _examples(steps * per_step, args.seq, vocab, seed=0)
    work = Path(args.workdir) / f"run-{processes}"
    t0 = time.perf_counter()
    result = train_lora_processes(mcfg, tcfg, examples, 0, work / "checkpoints", args.device,
                                  processes, work / "job", ROOT)
    wall = time.perf_counter() - t0
    rank0 = result.ranks[0]["step_s"]
    if len(rank0) != steps:
        raise RuntimeError(f"expected {steps} optimizer steps, the workers timed {len(rank0)}")
    timed = rank0[args.warmup:]
    tokens_per_step = per_step * args.seq
    end = next(h for h in result.log_history if "train_runtime" in h)
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    return {
        "processes": processes,
        "tokens_per_step": tokens_per_step,
        "sequences_per_step": per_step,
        "optimizer_steps": steps,
        "tokens_per_s": tokens_per_step / statistics.median(timed),
        "tokens_per_s_per_process": tokens_per_step / statistics.median(timed) / processes,
        "step_s_timed": timed,
        "step_s_warmup": rank0[:args.warmup],
        "trainer_train_runtime_s": end["train_runtime"],
        "tokens_per_s_trainer_runtime": tokens_per_step * steps / end["train_runtime"],
        "launch_wall_s": wall,
        "peak_memory_allocated_gib_per_rank": [
            r["peak_memory_allocated_bytes"] / 2**30 if args.device == "cuda" else None
            for r in result.ranks],
        "loss_first_last": [losses[0], losses[-1]],
    }


def _device(name: str) -> dict:
    import torch
    if name == "cpu":
        return {"name": "cpu", "count": 0, "cuda": None}
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                          "--format=csv,noheader"], capture_output=True, text=True)
    return {"name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
            "cuda": torch.version.cuda, "nvidia_smi": smi.stdout.strip()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--processes", default="1", help="comma-separated process counts")
    ap.add_argument("--shape", default="llama-3.1-8b")
    ap.add_argument("--layers", type=int, default=8, help="decoder layers (the 8B has 32)")
    ap.add_argument("--batch", type=int, default=4, help="sequences per micro-batch (profile: 4)")
    ap.add_argument("--grad-accum", type=int, default=17, help="profile: 17")
    ap.add_argument("--seq", type=int, default=2048, help="tokens per sequence (profile: 2048)")
    ap.add_argument("--warmup", type=int, default=1, help="optimizer steps not timed")
    ap.add_argument("--steps", type=int, default=3, help="timed optimizer steps")
    ap.add_argument("--workdir", default="/tmp/cogumi-ddp-bench")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_ddp.json"))
    # A CPU smoke test of this script: --device cpu --shape tiny --layers 2 --seq 64 --out /tmp/x
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--build", action="store_true", help=argparse.SUPPRESS)  # the child
    args = ap.parse_args()

    model_dir = Path(args.workdir) / f"{args.shape}-{args.layers}layers"
    if args.build:
        from bench_train_backends import build
        build(args.shape, model_dir, args.device, layers=args.layers)
        return
    import torch
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_train_ddp.py measures CUDA GPUs; torch sees none here")
    if not (model_dir / "COMPLETE").exists():
        # In a child: build() sets torch's default dtype for its whole process.
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, *sys.argv[1:], "--build"], check=True)
        print(f"built {model_dir} in {time.perf_counter() - t0:.0f} s", flush=True)
    params = int((model_dir / "COMPLETE").read_text())
    device = _device(args.device)
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {}
    report["provenance_in"] = "runs"  # each run records its own command, commit, machine
    report["method"] = " ".join(__doc__.split("\n\n")[2].split())
    report.setdefault("runs", {})
    model_key = f"{args.shape} {args.layers} layers @ {device['name']}"
    for processes in (int(p) for p in args.processes.split(",")):
        entry = {**provenance(_LIBRARIES, device=device["name"] if device["count"] else None),
                 "device": device,
                 "shape": args.shape, "layers": args.layers, "params": params,
                 "backend": "peft-lora", "batch": args.batch, "grad_accum": args.grad_accum,
                 "seq_len": args.seq, "warmup_steps": args.warmup, "timed_steps": args.steps,
                 **run_one(processes, model_dir, params, args)}
        report["runs"][f"{processes} process(es), {model_key}"] = entry
        print(json.dumps({k: entry[k] for k in ("processes", "tokens_per_s",
                                                "peak_memory_allocated_gib_per_rank",
                                                "launch_wall_s")}), flush=True)
        single = report["runs"].get(f"1 process(es), {model_key}")
        if processes > 1 and single:
            ratio = entry["tokens_per_s"] / single["tokens_per_s"]
            report.setdefault("scaling", {})[f"{processes} vs 1, {model_key}"] = {
                "tokens_per_s_ratio": ratio, "efficiency": ratio / processes,
                "target_ratio": 1.8 if processes == 2 else None}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
