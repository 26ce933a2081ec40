"""Phase 2F: confidence calibration of the model as shipped (temperature scaling).

The shipped model is 2D's packed file: unpacked here with its checksums verified, and run by
llama.cpp. Its confidence in a multiple-choice answer is the softmax over the options'
answer log-likelihoods, computed by the evaluation suite exactly as for
`mmlu.accuracy_loglik`; the answer key labels the top option right or wrong (verifier
labels). Items are split by a hash of their id: T is fitted on one part (NLL), ECE is
measured on the other, before (T = 1) and after. The routing phases (4A-4C) read the
temperature from calibration.json.
"""

from __future__ import annotations

import json

import numpy as np

from cogumi.compression import calibration as C
from cogumi.compression.common import MB
from cogumi.compression.pack import unpack
from cogumi.compression.sizes import carried_rows, size_table, write_sizes
from cogumi.evaluation import GenerationSettings, LlamaCppBackend, evaluate
from cogumi.phases.common import profile_task
from cogumi.runner import PhaseContext, PhaseInputError
from cogumi.stats import bootstrap_statistic


def run(ctx: PhaseContext) -> dict:
    cfg = ctx.profile.calibration
    data = cfg.data or ctx.profile.eval.mmlu
    if data is None:
        raise PhaseInputError(f"{ctx.profile.source_file}: [calibration] data and [eval] mmlu "
                              f"are both unset; phase 2F needs a multiple-choice file")
    packed = ctx.input_dir("2D") / "model.gguf.zst"
    model = ctx.work_dir / "model.gguf"
    ctx.console.print(f"2F unpack {packed} (checksums verified)")
    unpack(packed, model)

    task = profile_task(ctx, "mmlu", data, "[calibration] data" if cfg.data else "[eval] mmlu")
    gcfg = ctx.profile.gguf
    backend = LlamaCppBackend(model, n_ctx=gcfg.n_ctx, n_threads=gcfg.threads)
    # Only the option log-likelihoods are used; one generated token keeps the run short.
    ctx.console.print(f"2F score {len(task.items)} items' options in llama.cpp")
    report = evaluate(backend, task, GenerationSettings(max_new_tokens=1, seed=ctx.seed))
    records = [r for r in report.records if r.get("loglik")]
    excluded = len(report.records) - len(records)
    if excluded:
        ctx.notes.append(f"{excluded} of {len(report.records)} items have no option "
                         f"log-likelihoods (malformed) and are not used")
    if len(records) < 4:
        raise PhaseInputError(f"{data}: only {len(records)} scorable items; too few to fit "
                              f"and test a temperature")

    width = max(len(r["loglik"]) for r in records)
    scores = np.full((len(records), width), -np.inf)  # padding: options an item lacks
    for i, r in enumerate(records):
        scores[i, :len(r["loglik"])] = r["loglik"]
    labels = np.array([int(r["reference"]) for r in records])
    split = np.array([C.split_of(r["item_id"], cfg.fit_fraction, ctx.seed) for r in records])
    fit, test = split == "fit", split == "test"
    if fit.sum() < 2 or test.sum() < 2:
        raise PhaseInputError(f"{data}: the split left {fit.sum()} fit and {test.sum()} test "
                              f"items; calibration.fit_fraction = {cfg.fit_fraction}")

    temperature = C.fit_temperature(scores[fit], labels[fit])
    lowest, highest = C.T_BOUNDS
    inside = 1.01 * lowest < temperature < 0.99 * highest
    if temperature > 0.99 * highest:
        ctx.notes.append(
            f"the fitted temperature reached its search bound ({highest:g}): the model's "
            f"option scores carry little signal on the fit split, so the NLL fit flattens the "
            f"confidence toward uniform; ECE falls because confidence falls to the (low) "
            f"accuracy, not because answers are ranked better")
    conf_b, corr = C.top_label(scores[test], labels[test], 1.0)
    conf_a, _ = C.top_label(scores[test], labels[test], temperature)
    bins_b = C.reliability(conf_b, corr, cfg.bins)
    bins_a = C.reliability(conf_a, corr, cfg.bins)
    ece_b, ece_a = C.ece(conf_b, corr, cfg.bins), C.ece(conf_a, corr, cfg.bins)
    # "Lowers ECE" is decided on resamples of the held-out items (T stays the one fitted on
    # the other split): the reduction's interval must lie above zero.
    reduction = bootstrap_statistic(
        len(corr), lambda idx: C.ece(conf_b[idx], corr[idx], cfg.bins)
        - C.ece(conf_a[idx], corr[idx], cfg.bins))
    result = {
        "method": "temperature scaling of multiple-choice option log-likelihoods "
                  "(softmax over options / T), T fitted by NLL on the fit split",
        "temperature": temperature,
        "data": data, "task_digest": task.digest, "model": "2D model.gguf.zst (unpacked)",
        "items": {"scored": len(records), "excluded": excluded, "fit": int(fit.sum()),
                  "test": int(test.sum())},
        "fit_fraction": cfg.fit_fraction, "bins": cfg.bins, "seed": ctx.seed,
        "test": {"accuracy": float(corr.mean()),
                 "ece_before": ece_b, "ece_after": ece_a,
                 "nll_before": C.nll(scores[test], labels[test], 1.0),
                 "nll_after": C.nll(scores[test], labels[test], temperature),
                 "mean_confidence_before": float(conf_b.mean()),
                 "mean_confidence_after": float(conf_a.mean()),
                 "ece_reduction": reduction.to_dict(),
                 "reliability_before": bins_b, "reliability_after": bins_a},
    }
    out = ctx.out_dir
    (out / "calibration.json").write_text(json.dumps(result, indent=2) + "\n")
    with open(out / "calibration_items.jsonl", "w") as f:
        for r, s, sc in zip(records, split, scores, strict=True):
            p1 = C.softmax(sc[None, :], 1.0)[0]
            pt = C.softmax(sc[None, :], temperature)[0]
            f.write(json.dumps({"item_id": r["item_id"], "split": str(s),
                                "reference": int(r["reference"]), "loglik": r["loglik"],
                                "confidence_before": float(p1.max()),
                                "confidence_after": float(pt.max()),
                                "correct": bool(int(p1.argmax()) == int(r["reference"]))})
                    + "\n")
    C.plot_reliability(bins_b, bins_a, ece_b, ece_a, temperature, out / "reliability.png",
                       f"{ctx.profile.name}: shipped GGUF, {int(test.sum())} held-out items "
                       f"of {data}")
    ctx.add_figure("reliability.png", f"Reliability diagram of the shipped model on "
                   f"{int(test.sum())} held-out items: accuracy per confidence bin (bars), mean "
                   f"confidence (red), before (T = 1) and after temperature scaling "
                   f"(T = {temperature:.3g}); ECE {ece_b:.4f} -> {ece_a:.4f}")

    rows = carried_rows(ctx, "2D")
    shipped_bytes = (ctx.input_dir("2D") / "model.gguf.zst").stat().st_size
    calib_bytes = (out / "calibration.json").stat().st_size
    params = rows[-1]["parameters"] if rows else float("nan")
    rows.append({"phase": "2F", "artifact": "base as shipped: model.gguf.zst + calibration.json",
                 "path": "", "bytes": shipped_bytes + calib_bytes,
                 "mb": (shipped_bytes + calib_bytes) / MB, "weight_bytes": shipped_bytes,
                 "parameters": params, "bits_per_parameter": shipped_bytes * 8 / params})
    write_sizes(out, rows)
    ctx.write_report(
        f"Temperature scaling on {data}: T = **{temperature:.4f}** fitted on {int(fit.sum())} "
        f"items, measured on {int(test.sum())} held-out items (accuracy "
        f"{corr.mean():.3f}, unchanged by T).\n\n"
        f"| held-out split | ECE ({cfg.bins} bins) | NLL | mean confidence |\n|---|---|---|---|\n"
        f"| before (T = 1) | {ece_b:.4f} | {result['test']['nll_before']:.4f} | "
        f"{conf_b.mean():.3f} |\n"
        f"| after (T = {temperature:.3g}) | {ece_a:.4f} | {result['test']['nll_after']:.4f} | "
        f"{conf_a.mean():.3f} |\n\n"
        f"ECE reduction {reduction.point:.4f}, 95% interval [{reduction.lower:.4f}, "
        f"{reduction.upper:.4f}] ({reduction.method}).\n\n"
        f"### Sizes, from the full-precision model to the base as shipped\n\n"
        f"{size_table(rows)}\n")
    model.unlink()
    return {"ece_before": ece_b, "ece_after": ece_a, "ece_reduction": ece_b - ece_a,
            "ece_reduction_lower": reduction.lower, "ece_reduction_upper": reduction.upper,
            "temperature": temperature,
            "temperature_within_search_range": float(inside),
            "nll_before": result["test"]["nll_before"],
            "nll_after": result["test"]["nll_after"], "calibration.test_items": int(test.sum()),
            "size_mb": (shipped_bytes + calib_bytes) / MB}
