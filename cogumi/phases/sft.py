"""Phase 1A: supervised LoRA fine-tuning of the base model on the curated data.

Measured before and after on the same evaluation tasks and the same held-out curated
records, so the report shows what this phase changed. With `hardware.processes` > 1 the
training runs in that many torchrun workers (cogumi.training.launch); this process still
does everything else: evaluation, the artifact, the manifest.
"""

from __future__ import annotations

import gc
import json
import random

from cogumi.artifacts import sha256_file
from cogumi.phases.common import (
    compare_with_published,
    curated_records,
    evaluate_model,
    judge_against_input,
    judge_against_reference,
    reference_eval,
)
from cogumi.runner import PhaseContext, PhaseInputError
from cogumi.training.backends import load_for_training
from cogumi.training.launch import LaunchError, check_processes, train_lora_processes
from cogumi.training.sft import (
    checkpoint_key,
    encode_records,
    mean_loss,
    plot_loss_curve,
    split_heldout,
    train_lora,
)


def run(ctx: PhaseContext) -> dict:
    profile, cfg = ctx.profile, ctx.profile.training
    processes = profile.hardware.processes
    if processes > 1:
        try:
            check_processes(processes, profile.hardware.device)  # before an hour of evaluation
        except LaunchError as exc:
            raise PhaseInputError(f"{profile.source_file}: {exc}") from None
    curated_path = ctx.input_dir("0") / "curated.jsonl"
    records = curated_records(ctx)
    train_records, heldout_records = split_heldout(records, cfg.heldout_fraction)
    if cfg.max_examples is not None and len(train_records) > cfg.max_examples:
        random.Random(profile.seed).shuffle(train_records)
        ctx.notes.append(f"reduced run: {cfg.max_examples} of {len(train_records)} training "
                         f"records (training.max_examples)")
        train_records = train_records[:cfg.max_examples]

    ctx.console.print(f"loading {profile.model.source} model {profile.model.path or profile.model.hub_id or profile.model.package or profile.model.parts}")
    loaded = load_for_training(profile.model, cfg, ctx.root, profile.hardware.device)
    tok = loaded.tokenizer
    train = encode_records(train_records, tok, loaded.add_bos, cfg.max_seq_len)
    heldout = encode_records(heldout_records, tok, loaded.add_bos, cfg.max_seq_len)
    if not train.examples:
        raise PhaseInputError(f"{curated_path}: no usable training examples "
                           f"(excluded: {dict(train.excluded)})")
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0

    ctx.console.print("measuring the base model (held-out loss and evaluation tasks)")
    loss_before = mean_loss(loaded.model, heldout.examples, pad_id)
    before = evaluate_model(ctx, loaded, ctx.out_dir / "eval_before")

    key = checkpoint_key(sha256_file(curated_path), profile.sha256)
    checkpoints = ctx.work_dir / f"checkpoints-{key}"
    ctx.console.print(f"training {cfg.backend} rank {cfg.lora_rank} on {len(train.examples)} "
                      f"examples for {cfg.epochs:g} epochs (checkpoints: {checkpoints})")
    if processes == 1:
        model, log_history, resumed = train_lora(loaded.model, tok, train.examples, cfg,
                                                 profile.seed, checkpoints,
                                                 profile.hardware.device)
    else:
        model, log_history, resumed = _train_in_processes(ctx, loaded, train.examples,
                                                          checkpoints, key)
    if resumed:
        ctx.notes.append(f"resumed from a checkpoint in {checkpoints}")
    model.save_pretrained(ctx.out_dir / "adapter")
    plot_loss_curve(log_history, ctx.out_dir / "loss_curve.png",
                    f"1A {cfg.backend} r{cfg.lora_rank} — {profile.name}")

    loaded.model = model
    loss_after = mean_loss(model, heldout.examples, pad_id)
    after = evaluate_model(ctx, loaded, ctx.out_dir / "eval_after")
    excluded = train.excluded + heldout.excluded
    (ctx.out_dir / "train_log.json").write_text(json.dumps({
        "log_history": log_history,
        "excluded": dict(excluded),
        "train_records": len(train_records),
        "heldout_records": len(heldout_records),
    }, indent=2))
    if excluded:
        ctx.notes.append("excluded from training: " + ", ".join(f"{n} {reason}"
                                                                for reason, n in excluded.items()))
    steps = max((h.get("step", 0) for h in log_history), default=0)
    metrics = {
        "sft.heldout_loss_before": loss_before,
        "sft.heldout_loss_after": loss_after,
        "sft.heldout_loss_improvement": loss_before - loss_after,
        "sft.train_examples": len(train.examples),
        "sft.heldout_examples": len(heldout.examples),
        "sft.excluded_examples": sum(excluded.values()),
        "sft.steps": steps,
    }
    metrics.update({f"before.{k}": v for k, v in before.items()})
    metrics.update(after)
    metrics.update(judge_against_input(ctx, ctx.out_dir / "eval_before",
                                       ctx.out_dir / "eval_after", "the base model"))
    # The seed's 1A scores: (wins + ties/2) / n against the profile's reference model on the
    # same items; its answers stay in this artifact for 1B (reference_eval/).
    has_reference = reference_eval(ctx, ctx.out_dir / "reference_eval")
    if has_reference:
        metrics.update(judge_against_reference(ctx, ctx.out_dir / "eval_after",
                                               ctx.out_dir / "reference_eval"))
    # 1A holds the one evaluation of the base model as its makers shipped it.
    compare_with_published(ctx, ctx.out_dir / "eval_before",
                           ctx.out_dir / "reference_eval" if has_reference else None)
    return metrics


def _train_in_processes(ctx: PhaseContext, loaded, examples, checkpoints, key: str):
    """train_lora in `hardware.processes` DDP workers; returns what train_lora returns, the
    model being this process's own base model with the workers' adapter loaded on it."""
    from peft import PeftModel

    profile, cfg, hardware = ctx.profile, ctx.profile.training, ctx.profile.hardware
    ctx.notes.append(
        f"trained in {hardware.processes} processes (torchrun, DDP in the transformers "
        f"Trainer): global batch {cfg.batch_size} x {cfg.grad_accum} x {hardware.processes} "
        f"= {cfg.batch_size * cfg.grad_accum * hardware.processes} sequences per step")
    # Each worker loads its own copy; this one would only hold memory (rank 0's GPU) meanwhile.
    loaded.model = None
    gc.collect()
    if hardware.device == "cuda":
        import torch
        torch.cuda.empty_cache()
    try:
        result = train_lora_processes(profile.model, cfg, examples, profile.seed, checkpoints,
                                      hardware.device, hardware.processes,
                                      ctx.work_dir / f"launch-{key}", ctx.root)
    except LaunchError as exc:
        raise PhaseInputError(str(exc)) from None
    peaks = [r["peak_memory_allocated_bytes"] for r in result.ranks]
    if all(p is not None for p in peaks):
        ctx.notes.append("peak GPU memory allocated per rank while training: "
                         + ", ".join(f"{p / 2**30:.2f} GiB" for p in peaks))
    base = load_for_training(profile.model, cfg, ctx.root, hardware.device)
    return PeftModel.from_pretrained(base.model, result.adapter_dir), result.log_history, \
        result.resumed
