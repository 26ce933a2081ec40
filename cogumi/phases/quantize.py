"""Phase 2B: W4A16 quantisation of the recovered model with llm-compressor.

1. The 2E model (pruned, recovered, mask re-applied; full precision).
2. Every targeted Linear must have an input width divisible by the group size (128): else a
   clear error naming the tensor, or — only if the profile says
   `quantize.indivisible = "keep-full-precision"` — that layer is left unquantised and the
   fallback is recorded in the notes and quantization.json.
3. AWQ (activation-aware scales, then round-to-nearest int4) or GPTQ (Hessian error
   compensation), scheme W4A16: int4 symmetric weights, one scale per 128 inputs, 16-bit
   activations. Saved as compressed-tensors ("pack-quantized"), which transformers (with the
   compressed-tensors package) and vLLM load.
4. The saved folder is read back: which Linear weights are really stored packed (from the
   safetensors keys, not the recipe); then loaded with transformers and evaluated — the
   score is the quantised model's, not the model in memory before saving.
"""

from __future__ import annotations

import json

from cogumi.compression.common import (
    EVAL_METRICS,
    MODEL_DIR,
    count_parameters,
    load_hf_model,
    load_merged_phase_model,
    reference_for,
    retention_step,
    retention_table,
    save_tokenizer_and_info,
    size_row,
    steps_of,
    write_retention,
)
from cogumi.compression.llmc import (
    W4A16_GROUP_SIZE,
    IndivisibleWidth,
    calibration_data,
    check_group_widths,
    run_oneshot,
    sparsity_report,
    target_linears,
)
from cogumi.compression.sizes import carried_rows, size_table, write_sizes
from cogumi.phases.common import curated_records, evaluate_model, judge_against_input
from cogumi.runner import PhaseContext
from cogumi.thresholds import MB, tensor_payload_bytes

SCHEME = "W4A16"


def plan_ignore(model, cfg, origin: str) -> tuple[list[str], list[dict]]:
    """The modules to leave unquantised: the profile's ignore list, plus — only under the
    stated fallback — Linears whose input width the group size does not divide."""
    bad = check_group_widths(model, list(cfg.ignore), W4A16_GROUP_SIZE)
    if not bad:
        return list(cfg.ignore), []
    if cfg.indivisible == "error":
        name, shape = bad[0]
        more = f" (and {len(bad) - 1} more: {', '.join(n for n, _ in bad[1:4])}...)" \
            if len(bad) > 1 else ""
        raise IndivisibleWidth(
            f"{origin}: tensor {name} has shape {list(shape)}: its input width {shape[1]} is "
            f"not a multiple of the {SCHEME} group size {W4A16_GROUP_SIZE}{more}; set "
            f"quantize.indivisible = \"keep-full-precision\" to leave such layers unquantised "
            f"(recorded in the manifest)")
    fallback = [{"tensor": n, "shape": list(s), "kept": "full precision",
                 "why": f"input width {s[1]} % {W4A16_GROUP_SIZE} != 0"} for n, s in bad]
    return list(cfg.ignore) + [n[:-len(".weight")] for n, _ in bad], fallback


def quantize_model(model, tokenizer, add_bos: bool, records: list[dict], cfg,
                   heldout_fraction: float, seed: int, scratch, origin: str):
    """AWQ or GPTQ W4A16 on `model` in place. Returns (model, ignore, fallback, accounting)."""
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier

    ignore, fallback = plan_ignore(model, cfg, origin)
    data = calibration_data(records, tokenizer, add_bos, cfg.calibration_records,
                            cfg.max_seq_len, heldout_fraction, seed)
    if cfg.method == "awq":
        # AWQ is a transform (it only rescales channels); the quantisation that follows it
        # is llm-compressor's round-to-nearest QuantizationModifier.
        recipe = [AWQModifier(),
                  QuantizationModifier(scheme=SCHEME, targets=["Linear"], ignore=ignore)]
    else:
        recipe = GPTQModifier(scheme=SCHEME, targets=["Linear"], ignore=ignore)
    model = run_oneshot(model, tokenizer, data, recipe, cfg.max_seq_len, scratch)
    return model, ignore, fallback, data.accounting


def stored_formats(model_dir, linear_names: list[str]) -> dict[str, str]:
    """For each Linear, how its weight is stored in the saved safetensors: 'packed int4'
    (compressed-tensors' weight_packed + weight_scale) or 'full precision' (plain weight)."""
    from safetensors import safe_open

    keys: set[str] = set()
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            keys.update(st.keys())
    out = {}
    for name in linear_names:
        if f"{name}.weight_packed" in keys and f"{name}.weight_scale" in keys:
            out[name] = "packed int4"
        elif f"{name}.weight" in keys:
            out[name] = "full precision"
        else:
            out[name] = "missing"
    return out


def run(ctx: PhaseContext) -> dict:
    profile, cfg = ctx.profile, ctx.profile.quantize
    out = ctx.out_dir
    ctx.console.print("2B: loading the recovered 2E model")
    loaded = load_merged_phase_model(ctx, "2E")
    params = count_parameters(loaded.model)
    linears = {n: m.weight.numel() for n, m in target_linears(loaded.model, []).items()
               if not n.endswith("lm_head")}

    ctx.console.print(f"2B: {cfg.method.upper()} {SCHEME} on {cfg.calibration_records} "
                      f"calibration records")
    loaded.model, ignore, fallback, accounting = quantize_model(
        loaded.model, loaded.tokenizer, loaded.add_bos, curated_records(ctx), cfg,
        profile.training.heldout_fraction, ctx.seed, ctx.work_dir, loaded.origin)
    model_dir = out / MODEL_DIR
    # llm-compressor's save_pretrained wrapper writes the compressed-tensors format.
    loaded.model.save_pretrained(model_dir, save_compressed=True)
    save_tokenizer_and_info(loaded, model_dir, phase="2B", method=cfg.method, scheme=SCHEME,
                            group_size=W4A16_GROUP_SIZE, ignore=ignore, fallback=fallback)

    formats = stored_formats(model_dir, list(linears))
    packed = sum(n for name, n in linears.items() if formats[name] == "packed int4")
    share = packed / sum(linears.values())
    (out / "quantization.json").write_text(json.dumps({
        "method": cfg.method, "scheme": SCHEME, "group_size": W4A16_GROUP_SIZE,
        "ignore": ignore, "fallback": fallback, "calibration": accounting,
        "stored": formats, "linear_share_packed": share}, indent=2) + "\n")
    for fb in fallback:
        ctx.notes.append(f"FALLBACK: {fb['tensor']} {fb['shape']} kept in full precision "
                         f"({fb['why']}; quantize.indivisible = \"keep-full-precision\")")

    ctx.console.print("2B: loading the saved compressed-tensors model and evaluating it")
    sparsity = sparsity_report(load_hf_model(model_dir, "cpu", dequantize=True).model, ignore)
    quantized = load_hf_model(model_dir, profile.hardware.device)
    after = evaluate_model(ctx, quantized, out / "eval")
    rows = carried_rows(ctx, "2E")
    rows.append(size_row(model_dir, params, f"2B model/ ({cfg.method.upper()} {SCHEME}, "
                                            "compressed-tensors)") | {"phase": "2B"})
    write_sizes(out, rows)
    reference = reference_for(ctx, "2E")
    previous = json.loads((ctx.input_dir("2E") / "metrics.json").read_text())
    step = retention_step("2B", after, previous, "2E", reference)
    steps = steps_of(ctx, "2E") + [step]
    write_retention(out, reference, steps)

    ctx.notes.append(f"calibration: {accounting['used']} curated training-split records "
                     f"({accounting['truncated to max_seq_len']} truncated to "
                     f"{cfg.max_seq_len} tokens)")
    ctx.notes.append(f"stored packed int4: {share:.4f} of the decoder Linear weights "
                     f"(read from the safetensors keys); embeddings"
                     f"{' and ' + ', '.join(cfg.ignore) if cfg.ignore else ''} stay in "
                     f"{profile.model.dtype}")
    ctx.notes.append(f"sparsity after quantisation (dequantised weights): "
                     f"{sparsity['linear']:.4f}" + (" — GPTQ's error compensation fills "
                                                    "pruned weights back in" if cfg.method ==
                                                    "gptq" else " — AWQ scales and rounds "
                                                    "each weight, so zeros stay zero"))
    ctx.notes.append("evaluated: the saved folder loaded back with transformers "
                     "(compressed-tensors decompresses the int4 weights on CPU)")
    ctx.write_report("\n".join([
        "### Retention (evaluation suite)", "", retention_table(reference, steps), "",
        "### Sizes", "", size_table(rows), ""]))
    metrics = {
        "retention": step["cumulative"]["value"],
        "retention.step": step["per_step"]["value"],
        "retention.mean": step["cumulative"]["mean"],
        "size_mb": rows[-1]["mb"],
        "weights.tensor_mb": tensor_payload_bytes(model_dir) / MB,
        "bits_per_parameter": rows[-1]["bits_per_parameter"],
        "quantized.linear_share": share,
        "sparsity": sparsity["linear"],
    }
    for name in EVAL_METRICS:
        metrics[f"before.{name}"] = previous.get(name, float("nan"))
    metrics.update(after)
    metrics.update(judge_against_input(ctx, ctx.input_dir("2E") / "eval", out / "eval", "2E"))
    return metrics
