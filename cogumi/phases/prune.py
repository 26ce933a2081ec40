"""Phase 2A: one-shot SparseGPT pruning of the trained model (llm-compressor).

1. The trained model: the base with 1C's LoRA adapter merged in (plain Linear weights); 1B's
   where the profile declares no [distill] and so has no 1C (`trained_phase`).
2. Calibration: curated training-split records as whole chat-formatted conversations.
3. SparseGPT (`llmcompressor.modifiers.pruning.sparsegpt.SparseGPTModifier`), unstructured at
   `prune.sparsity` or 2:4, every decoder Linear (the output head is left dense).
4. The zeros are measured on the weights, not taken from the recipe; the pruned model is
   saved as a plain Hugging Face folder (compressed-tensors 0.19 no longer writes sparse
   formats, so the zeros are stored densely: pruning alone does not shrink the file — the
   size table shows it).
5. Evaluation on the profile's suite; retention against the uncompressed trained model.
"""

from __future__ import annotations

import json
import shutil

from cogumi.compression.common import (
    EVAL_METRICS,
    MODEL_DIR,
    load_merged_phase_model,
    reference_for,
    retention_step,
    retention_table,
    save_hf_model,
    size_row,
    trained_phase,
    write_retention,
)
from cogumi.compression.llmc import calibration_data, run_oneshot, sparsity_report
from cogumi.compression.sizes import size_table, write_sizes
from cogumi.phases.common import curated_records, evaluate_model, judge_against_input
from cogumi.runner import PhaseContext
from cogumi.training.sft import encode_records, mean_loss, split_heldout


def prune_model(model, tokenizer, add_bos: bool, records: list[dict], cfg, heldout_fraction:
                float, seed: int, scratch):
    """SparseGPT on `model` in place; returns (model, calibration accounting)."""
    from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier

    data = calibration_data(records, tokenizer, add_bos, cfg.calibration_records,
                            cfg.max_seq_len, heldout_fraction, seed)
    recipe = SparseGPTModifier(
        sparsity=cfg.sparsity,
        mask_structure="0:0" if cfg.mask_structure == "unstructured" else cfg.mask_structure,
        targets=["Linear"], ignore=list(cfg.ignore), block_size=cfg.block_size,
        dampening_frac=cfg.dampening_frac)
    model = run_oneshot(model, tokenizer, data, recipe, cfg.max_seq_len, scratch)
    return model, data.accounting


def heldout_examples(ctx: PhaseContext, records: list[dict], tokenizer, add_bos: bool):
    """The curated held-out split (never calibrated or trained on), encoded like 1A's."""
    tc = ctx.profile.training
    _, heldout = split_heldout(records, tc.heldout_fraction)
    return encode_records(heldout, tokenizer, add_bos, tc.max_seq_len).examples


def run(ctx: PhaseContext) -> dict:
    profile, cfg = ctx.profile, ctx.profile.prune
    out = ctx.out_dir
    src = trained_phase(ctx)
    ctx.console.print(f"2A: loading the {src} model (base + {src} adapter, merged)")
    loaded = load_merged_phase_model(ctx, src)
    reference = reference_for(ctx, src)
    records = curated_records(ctx)
    heldout = heldout_examples(ctx, records, loaded.tokenizer, loaded.add_bos)
    pad_id = loaded.tokenizer.pad_token_id or 0
    loss_src = mean_loss(loaded.model, heldout, pad_id)

    # The uncompressed model's size, measured the same way as every later artifact.
    merged_dir = ctx.work_dir / f"{src}-merged"
    shutil.rmtree(merged_dir, ignore_errors=True)
    save_hf_model(loaded, merged_dir, phase=f"{src} (merged)")
    params = sum(p.numel() for p in {id(p): p for p in loaded.model.parameters()}.values())
    rows = [size_row(merged_dir, params, f"{src} merged ({profile.model.dtype}, dense)")
            | {"phase": src}]
    shutil.rmtree(merged_dir, ignore_errors=True)

    ctx.console.print(f"2A: SparseGPT {cfg.mask_structure} at {cfg.sparsity:.0%} on "
                      f"{cfg.calibration_records} calibration records")
    loaded.model, accounting = prune_model(
        loaded.model, loaded.tokenizer, loaded.add_bos, records, cfg,
        profile.training.heldout_fraction, ctx.seed, ctx.work_dir)
    sparsity = sparsity_report(loaded.model, cfg.ignore)
    loss_2a = mean_loss(loaded.model, heldout, pad_id)
    (out / "calibration.json").write_text(json.dumps(accounting, indent=2) + "\n")
    (out / "sparsity.json").write_text(json.dumps(sparsity, indent=2) + "\n")
    save_hf_model(loaded, out / MODEL_DIR, phase="2A", sparsity=sparsity["linear"],
                  mask_structure=cfg.mask_structure, ignore=list(cfg.ignore))
    rows.append(size_row(out / MODEL_DIR, params, "2A model/ (pruned, zeros stored densely)")
                | {"phase": "2A"})
    write_sizes(out, rows)

    ctx.console.print("2A: evaluating the pruned model")
    after = evaluate_model(ctx, loaded, out / "eval")
    step = retention_step("2A", after, reference.metrics, src, reference)
    write_retention(out, reference, [step])

    ctx.notes.append(f"calibration: {accounting['used']} curated training-split records "
                     f"(chat template applied, {accounting['truncated to max_seq_len']} "
                     f"truncated to {cfg.max_seq_len} tokens); accounting in calibration.json")
    ctx.notes.append(f"sparsity measured on the weights: {sparsity['linear']:.4f} of "
                     f"{sparsity['linear_parameters']:,} targeted Linear weights (worst layer "
                     f"{sparsity['min_layer']:.4f}); {sparsity['all_parameters']:.4f} of all "
                     f"{sparsity['parameters']:,} parameters (embeddings/head dense)")
    ctx.notes.append(f"held-out loss (answer tokens, {len(heldout)} curated held-out records): "
                     f"{src} {loss_src:.4f} -> pruned {loss_2a:.4f}")
    ctx.notes.append("retention: " + step["cumulative"]["definition"] + "; reference = the "
                     f"uncompressed {src} model ({reference.source})")
    ctx.write_report("\n".join([
        "### Retention (evaluation suite)", "", retention_table(reference, [step]), "",
        "### Sizes", "", size_table(rows), "",
        "Safetensors stores the zeros; the pruned file is as large as the dense one. "
        "compressed-tensors 0.19 dropped its sparse (bitmask) format, so no sparse "
        "checkpoint is written.", ""]))
    metrics = {
        "sparsity": sparsity["linear"],
        "sparsity.all_parameters": sparsity["all_parameters"],
        "sparsity.min_layer": sparsity["min_layer"],
        "retention": step["cumulative"]["value"],
        "retention.mean": step["cumulative"]["mean"],
        "size_mb": rows[-1]["mb"],
        "calibration.records": accounting["used"],
        "prune.heldout_loss_unpruned": loss_src,
        "prune.heldout_loss_after": loss_2a,
    }
    for name in EVAL_METRICS:
        metrics[f"before.{name}"] = reference.metrics.get(name, float("nan"))
    metrics.update(after)
    # Paired against its input, the model it pruned (1C's eval_after, or 1B's).
    metrics.update(judge_against_input(ctx, ctx.input_dir(src) / "eval_after", out / "eval",
                                       src))
    return metrics
