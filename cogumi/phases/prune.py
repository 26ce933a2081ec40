"""Phase 2A: SparseGPT pruning of the trained model (llm-compressor), then, where the profile
asks for it, sparse fine-tuning with the mask held.

1. The trained model: the base with 1C's LoRA adapter merged in (plain Linear weights); 1B's
   where the profile declares no [distill] and so has no 1C (`trained_phase`).
2. Calibration: curated training-split records as whole chat-formatted conversations.
3. SparseGPT (`llmcompressor.modifiers.pruning.sparsegpt.SparseGPTModifier`), unstructured at
   `prune.sparsity` or 2:4, every decoder Linear (the output head is left dense).
4. Sparse fine-tuning (`prune.finetune`): every weight the mask keeps is trained on curated
   training-split records, and on the benchmarks' training splits the profile names
   (`train_data`: the kinds of prompt the suite asks, with their reference answers), by
   default against the dense model's next-token distribution (knowledge distillation, as
   Neural Magic's Sparse Llama recipe trains after SparseGPT); the zeros are set back after
   every optimizer step, so the sparsity is the one shot's.
5. The zeros are measured on the weights, not taken from the recipe; the pruned model is
   saved as a plain Hugging Face folder (compressed-tensors 0.19 no longer writes sparse
   formats, so the zeros are stored densely: pruning alone does not shrink the file — the
   size table shows it).
6. Evaluation on the profile's suite; retention against the uncompressed trained model.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections import Counter

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
    training_split,
    write_retention,
)
from cogumi.compression.llmc import calibration_data, run_oneshot, sparsity_report, zero_masks
from cogumi.compression.sizes import size_table, write_sizes
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
    fit_keeping_zeros,
    mean_loss,
    plot_loss_curve,
    split_heldout,
)


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


def sparse_finetune(ctx: PhaseContext, loaded, dense, records: list[dict], heldout,
                    extra: tuple[list[dict], Counter]) -> dict:
    """`prune.finetune` on the pruned `loaded.model` in place, the mask held; `dense` is the
    model before pruning (the distillation teacher), `extra` the train_data records and
    what was excluded of them. Returns what 2A reports of it."""
    profile, ft = ctx.profile, ctx.profile.prune.finetune
    tok, tc = loaded.tokenizer, profile.training
    train_records, _ = training_split(ctx, records, ft.max_examples, "prune.finetune.max_examples")
    split_records, split_excluded = extra
    train_records += split_records
    train = encode_records(train_records, tok, loaded.add_bos, tc.max_seq_len)
    if not train.examples:
        raise PhaseInputError(f"{ctx.input_dir('0') / 'curated.jsonl'}: no usable training "
                              f"examples for prune.finetune (excluded: {dict(train.excluded)})")
    masks = zero_masks(loaded.model, profile.prune.ignore)
    key = checkpoint_key(profile.sha256, "2A finetune", *(r["id"] for r in train_records))
    ctx.console.print(f"2A: sparse fine-tuning ({ft.objective}) on {len(train.examples)} "
                      f"examples, {ft.epochs:g} epochs at lr {ft.learning_rate:g}, the mask held")
    history, resumed = fit_keeping_zeros(
        loaded.model, tok, train.examples, tc, profile.seed, ctx.work_dir / f"finetune-{key}",
        profile.hardware.device, masks, ft.epochs, ft.learning_rate,
        teacher=dense if ft.objective == "distill" else None)
    if resumed:
        ctx.notes.append("sparse fine-tuning resumed from a checkpoint")
    plot_loss_curve(history, ctx.out_dir / "finetune_loss_curve.png",
                    f"2A sparse fine-tuning ({ft.objective}) — {profile.name}")
    ctx.add_figure("finetune_loss_curve.png", "2A sparse fine-tuning: training loss per "
                   "optimizer step" + (" (KL to the dense model's next-token distribution)"
                                       if ft.objective == "distill" else ""))
    pad_id = tok.pad_token_id or 0
    return {"objective": ft.objective, "epochs": ft.epochs, "learning_rate": ft.learning_rate,
            "train_records": len(train_records), "train_data_records": len(split_records),
            "train_examples": len(train.examples),
            "excluded": dict(train.excluded + split_excluded), "mask_positions": sum(int(m.sum())
                                                                    for m in masks.values()),
            "heldout_loss_after": mean_loss(loaded.model, heldout, pad_id),
            "log_history": history}


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

    # Read before SparseGPT: a bad or overlapping train_data file fails before minutes of
    # pruning, not after them.
    extra = ([], Counter()) if cfg.finetune is None else train_split_records(
        ctx, cfg.finetune.train_data, "prune.finetune.train_data")
    # The dense model stays beside the pruned one as sparse fine-tuning's teacher.
    dense = (copy.deepcopy(loaded.model).eval()
             if cfg.finetune is not None and cfg.finetune.objective == "distill" else None)
    ctx.console.print(f"2A: SparseGPT {cfg.mask_structure} at {cfg.sparsity:.0%} on "
                      f"{cfg.calibration_records} calibration records")
    loaded.model, accounting = prune_model(
        loaded.model, loaded.tokenizer, loaded.add_bos, records, cfg,
        profile.training.heldout_fraction, ctx.seed, ctx.work_dir)
    loss_oneshot = loss_2a = mean_loss(loaded.model, heldout, pad_id)
    finetune = None
    if cfg.finetune is not None:
        finetune = sparse_finetune(ctx, loaded, dense, records, heldout, extra)
        del dense
        loss_2a = finetune["heldout_loss_after"]
        (out / "finetune.json").write_text(json.dumps(finetune, indent=2) + "\n")
    sparsity = sparsity_report(loaded.model, cfg.ignore)
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
                     f"{src} {loss_src:.4f} -> pruned {loss_oneshot:.4f}" + (
                         f" -> sparse fine-tuned {loss_2a:.4f} ({finetune['objective']}, "
                         f"{finetune['train_examples']} examples, "
                         f"{finetune['train_data_records']} of them from train_data, x "
                         f"{finetune['epochs']:g} epochs; finetune.json)" if finetune else ""))
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
    if finetune is not None:
        metrics["prune.heldout_loss_oneshot"] = loss_oneshot
    for name in EVAL_METRICS:
        metrics[f"before.{name}"] = reference.metrics.get(name, float("nan"))
    metrics.update(after)
    # Paired against its input, the model it pruned (1C's eval_after, or 1B's).
    metrics.update(judge_against_input(ctx, ctx.input_dir(src) / "eval_after", out / "eval",
                                       src))
    return metrics
