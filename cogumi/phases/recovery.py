"""Phase 2E: recovery fine-tuning of the pruned model, merged before export.

1. The 2A model; its zeros are the pruning mask (every targeted Linear, exactly-zero weights).
2. A short LoRA pass (peft, the profile's [training] LoRA settings, [recovery] schedule) on
   curated training-split records and the benchmarks' training splits the profile names
   (`train_data`, as 2A's); the base weights are frozen, so the mask holds while
   training. Its loss is the records' answers (objective "sft") or, with "distill", the
   unpruned model's (1C's, or 1B's without [distill]) next-token distribution on those
   answers (KL): the pruned model is taught what the model it came from would say, not what
   the records say.
3. Merge (`merge_and_unload`): the LoRA delta B·A is dense, so the merged weights are dense
   again — measured and reported — and the mask is re-applied (those weights set back to
   zero). Held-out loss is measured at each point: pruned, LoRA, merged dense, re-masked.
4. Evaluation of the re-masked model; retention against 2A (the gate: recovery must not lose
   what pruning kept) and against the uncompressed trained model (cumulative).
"""

from __future__ import annotations

import json

from cogumi.compression.common import (
    EVAL_METRICS,
    MODEL_DIR,
    count_parameters,
    load_merged_phase_model,
    reference_for,
    retention_step,
    retention_table,
    save_hf_model,
    size_row,
    steps_of,
    trained_phase,
    training_split,
    write_retention,
)
from cogumi.compression.llmc import apply_masks, sparsity_report, zero_masks
from cogumi.compression.sizes import carried_rows, size_table, write_sizes
from cogumi.phases.common import (
    curated_records,
    evaluate_model,
    judge_against_input,
    train_split_records,
)
from cogumi.runner import PhaseContext, PhaseInputError
from cogumi.training.sft import (
    checkpoint_key,
    encode_records,
    mean_loss,
    plot_loss_curve,
    train_lora,
)


def recover(model, tokenizer, train_examples, heldout_examples, training_cfg, recovery_cfg,
            ignore: list[str], seed: int, checkpoint_dir, device: str, teacher=None):
    """LoRA on the pruned `model`, merged, mask re-applied. Returns (model, report dict)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    masks = zero_masks(model, ignore)
    pruned = sparsity_report(model, ignore)
    if not pruned["linear"] > 0:
        raise PhaseInputError("the input model has no zero weights in its Linear layers: "
                              "there is no pruning mask to preserve (was 2A's model pruned?)")
    loss = {"pruned": mean_loss(model, heldout_examples, pad_id)}
    # peft-lora whatever the profile's 1A backend: the adapter is merged into these
    # full-precision weights, which a 4-bit training base could not give back exactly.
    cfg = training_cfg.model_copy(update={
        "backend": "peft-lora", "epochs": recovery_cfg.epochs,
        "learning_rate": recovery_cfg.learning_rate})
    peft_model, log_history, resumed = train_lora(model, tokenizer, train_examples, cfg, seed,
                                                  checkpoint_dir, device, teacher=teacher)
    loss["lora"] = mean_loss(peft_model, heldout_examples, pad_id)
    merged = peft_model.merge_and_unload()
    dense = sparsity_report(merged, ignore)
    loss["merged_dense"] = mean_loss(merged, heldout_examples, pad_id)
    refilled = apply_masks(merged, masks)
    after = sparsity_report(merged, ignore)
    loss["masked"] = mean_loss(merged, heldout_examples, pad_id)
    merged.eval()
    return merged, {
        "sparsity": {"pruned": pruned["linear"], "merged_dense": dense["linear"],
                     "masked": after["linear"], "weights_reset_to_zero": refilled,
                     "per_layer_masked": after["per_layer"]},
        "heldout_loss": loss, "log_history": log_history, "resumed": resumed,
        "mask_positions": sum(int(m.sum()) for m in masks.values()),
    }


def run(ctx: PhaseContext) -> dict:
    profile, rc, tc = ctx.profile, ctx.profile.recovery, ctx.profile.training
    out = ctx.out_dir
    ctx.console.print("2E: loading the pruned 2A model")
    loaded = load_merged_phase_model(ctx, "2A")
    ignore = json.loads((ctx.input_dir("2A") / MODEL_DIR / "cogumi_model.json")
                        .read_text()).get("ignore", list(profile.prune.ignore))

    train_records, heldout_records = training_split(ctx, curated_records(ctx), rc.max_examples,
                                                    "recovery.max_examples")
    split_records, split_excluded = train_split_records(ctx, rc.train_data,
                                                        "recovery.train_data")
    train_records += split_records
    tok = loaded.tokenizer
    train = encode_records(train_records, tok, loaded.add_bos, tc.max_seq_len)
    heldout = encode_records(heldout_records, tok, loaded.add_bos, tc.max_seq_len)
    if not train.examples:
        raise PhaseInputError(f"{ctx.input_dir('0') / 'curated.jsonl'}: no usable training "
                              f"examples (excluded: {dict(train.excluded)})")

    key = checkpoint_key(profile.sha256, *(r["id"] for r in train_records))
    teacher = None
    if rc.objective == "distill":
        # The model 2A pruned: 1C's, or 1B's where the profile declares no [distill].
        src = trained_phase(ctx)
        ctx.console.print(f"2E: loading the unpruned {src} model as the distillation teacher")
        teacher = load_merged_phase_model(ctx, src).model
    ctx.console.print(f"2E: LoRA r{tc.lora_rank} recovery ({rc.objective}) on "
                      f"{len(train.examples)} examples, {rc.epochs:g} epochs at lr "
                      f"{rc.learning_rate:g}")
    loaded.model, rep = recover(loaded.model, tok, train.examples, heldout.examples, tc, rc,
                                ignore, profile.seed, ctx.work_dir / f"checkpoints-{key}",
                                profile.hardware.device, teacher=teacher)
    del teacher
    if rep["resumed"]:
        ctx.notes.append("resumed from a checkpoint")
    plot_loss_curve(rep["log_history"], out / "loss_curve.png",
                    f"2E recovery LoRA r{tc.lora_rank} ({rc.objective}) — {profile.name}")
    ctx.add_figure("loss_curve.png", "2E recovery LoRA: training loss per optimizer step"
                   + (" (KL to the unpruned model's next-token distribution)"
                      if rc.objective == "distill" else ""))
    excluded = train.excluded + heldout.excluded + split_excluded
    (out / "recovery.json").write_text(json.dumps({
        "objective": rc.objective, "sparsity": rep["sparsity"], "heldout_loss": rep["heldout_loss"],
        "mask_positions": rep["mask_positions"], "train_records": len(train_records),
        "train_data_records": len(split_records),
        "train_examples": len(train.examples), "heldout_records": len(heldout_records),
        "heldout_examples": len(heldout.examples), "excluded": dict(excluded),
        "log_history": rep["log_history"]}, indent=2) + "\n")
    save_hf_model(loaded, out / MODEL_DIR, phase="2E", sparsity=rep["sparsity"]["masked"],
                  ignore=ignore)
    rows = carried_rows(ctx, "2A")
    rows.append(size_row(out / MODEL_DIR, count_parameters(loaded.model),
                         "2E model/ (pruned + recovered, mask re-applied)") | {"phase": "2E"})
    write_sizes(out, rows)

    ctx.console.print("2E: evaluating the recovered model")
    after = evaluate_model(ctx, loaded, out / "eval")
    reference = reference_for(ctx, "2A")
    previous = json.loads((ctx.input_dir("2A") / "metrics.json").read_text())
    step = retention_step("2E", after, previous, "2A", reference)
    steps = steps_of(ctx, "2A") + [step]
    write_retention(out, reference, steps)

    sp, loss = rep["sparsity"], rep["heldout_loss"]
    ctx.notes.append(f"merging the LoRA delta made the Linear weights dense (sparsity "
                     f"{sp['pruned']:.4f} -> {sp['merged_dense']:.4f}); the 2A mask was "
                     f"re-applied ({sp['weights_reset_to_zero']:,} weights set back to zero), "
                     f"sparsity after: {sp['masked']:.4f}")
    ctx.notes.append("held-out loss (answer tokens, curated held-out split): "
                     + ", ".join(f"{k} {v:.4f}" for k, v in loss.items()))
    if excluded:
        ctx.notes.append("excluded from training: " + ", ".join(
            f"{n} {reason}" for reason, n in excluded.items()))
    ctx.notes.append("retention: " + step["per_step"]["definition"] + "; retention_vs_2a "
                     "against 2A's evaluation, retention against the uncompressed "
                     f"{reference.phase} model")
    ctx.write_report("\n".join([
        "### Retention (evaluation suite)", "", retention_table(reference, steps), "",
        "### Held-out loss through recovery", "",
        f"| {reference.phase} (unpruned) | pruned (2A) | LoRA (unmerged) | merged (dense) | "
        "merged, mask re-applied |", "|---|---|---|---|---|",
        f"| {previous['prune.heldout_loss_unpruned']:.4f} | {loss['pruned']:.4f} | "
        f"{loss['lora']:.4f} | {loss['merged_dense']:.4f} | {loss['masked']:.4f} |", "",
        "Recovery trains on the curated distribution the held-out split comes from, so its "
        "loss can fall below the unpruned model's; the evaluation suite above is what the gates read.", "",
        "### Sizes", "", size_table(rows), ""]))
    metrics = {
        "recovery.heldout_loss_unpruned": previous["prune.heldout_loss_unpruned"],
        "retention_vs_2a": step["per_step"]["value"],
        "retention": step["cumulative"]["value"],
        "sparsity": sp["masked"],
        "sparsity.after_merge_before_mask": sp["merged_dense"],
        "recovery.heldout_loss_2a": loss["pruned"],
        "recovery.heldout_loss_after": loss["masked"],
        "recovery.heldout_loss_improvement": loss["pruned"] - loss["masked"],
        "recovery.train_examples": len(train.examples),
        "size_mb": rows[-1]["mb"],
    }
    for name in EVAL_METRICS:
        metrics[f"before.{name}"] = previous.get(name, float("nan"))
    metrics.update(after)
    metrics.update(judge_against_input(ctx, ctx.input_dir("2A") / "eval", out / "eval", "2A"))
    return metrics
