"""Phase 2C: GGUF export and K-quants, verified in llama.cpp itself.

1. Export 2E's full-precision merged model (`model/`) to an F32/F16/BF16 GGUF with llama.cpp's
   own converter (2B's W4A16 weights are not the input: llama.cpp makes K-quants from
   full-precision weights; 2B's sign-off is still required, so its 4-bit gate stands).
2. Quantize to the ship type (seed: Q5_K_M) -> model.gguf, and to the comparison types
   (Q4_K_M, Q6_K, Q8_0) -> gguf/, with llama.cpp's quantizer.
3. Read every file's tensor types back and record any fallback (row widths that are not a
   multiple of 256 cannot be K-quants; llama.cpp then uses another type).
4. Per file, in llama.cpp: tokenization identical to the HF tokenizer on evaluation prompts
   and hard texts; and teacher-forced agreement: each prompt followed by the HF model's
   greedy continuation, the same token ids fed to both, and at every position whether the
   two top next tokens agree and KL(HF || GGUF) over the full vocabulary.
5. The shipped file on the evaluation suite (llama.cpp backend): retention against 2E (per
   step) and against the uncompressed trained model (cumulative).
"""

from __future__ import annotations

import json
from pathlib import Path

from cogumi.compression import gguf_export as G
from cogumi.compression.common import (
    MB,
    MODEL_DIR,
    MODEL_INFO,
    count_parameters,
    load_hf_model,
    reference_for,
    retention_step,
    retention_table,
    size_row,
    steps_of,
    write_retention,
)
from cogumi.compression.sizes import carried_rows, size_table, write_sizes
from cogumi.evaluation import (
    LlamaCppBackend,
    TransformersBackend,
    evaluate,
)
from cogumi.models import model_location
from cogumi.phases.common import eval_tasks, greedy_settings, judge_against_input
from cogumi.runner import PhaseContext, PhaseInputError

SHIPPED = "model.gguf"
#: Texts whose tokenization is easy to get wrong: whitespace runs, digits, unicode, code.
HARD_TEXTS = (
    "Hello world! How are you?",
    "  two leading spaces, a\ttab,\n\nthree\n\n\nnewlines and trailing  ",
    "3.14159 12345678 1,000,000 -42 2^10 = 1024",
    "naïve café, Zürich, São Paulo, Ελληνικά, русский, 日本語, 中文, 한국어",
    "emoji 😀👍🏽 and symbols ©®™ ≤ ≥ ≠ ∑ √",
    "def f(x):\n    return {'a': [x ** 2 for x in range(10)]}\n",
    "I've, you're, they'll, he'd, it's, we'Ve, 'RE",
    "<b>HTML</b> &amp; `code` **markdown** [link](http://x.y/z?q=1#f)",
)


def _prompts(ctx: PhaseContext, tokenizer, n: int) -> list[tuple[dict, ...]]:
    """The first items of each evaluation task, as chat messages, round-robin up to n."""
    per_task = [[tuple(task.messages(it)) for it in task.items if it.malformed is None]
                for task in eval_tasks(ctx)]
    out: list[tuple[dict, ...]] = []
    for i in range(max(len(p) for p in per_task)):
        for p in per_task:
            if i < len(p) and len(out) < n:
                out.append(p[i])
    return out


def evaluate_shipped(ctx: PhaseContext, path: Path):
    """The shipped file on the evaluation suite in llama.cpp: greedy, with the profile's stop
    strings as every other phase's evaluation has them (a base model without them runs on
    into the next question, and its answer is scored from the wrong text)."""
    cfg, ev = ctx.profile.gguf, ctx.profile.eval
    backend = LlamaCppBackend(path, n_ctx=cfg.n_ctx, n_threads=cfg.threads)
    return evaluate(backend, eval_tasks(ctx), greedy_settings(ctx), limit=ev.limit)


def run(ctx: PhaseContext) -> dict:
    cfg = ctx.profile.gguf
    src = ctx.input_dir("2E") / MODEL_DIR
    if not (src / "config.json").exists():
        raise PhaseInputError(f"{src}: no config.json; phase 2E's artifact has no HF model "
                              f"folder to export")
    out = ctx.out_dir
    folder = out / "gguf"
    folder.mkdir(parents=True)
    logs = ctx.work_dir / "logs"
    logs.mkdir(exist_ok=True)

    # 1. Export.
    base = folder / f"model-{cfg.base_type}.gguf"
    ctx.console.print(f"2C.1 export {src} -> {base.name} (llama.cpp converter)")
    vocab_gguf = None
    if ctx.profile.model.from_gguf:
        # The HF tokenizer transformers builds from a GGUF is not the original (see
        # _convert_child.py): ship the source GGUF's own tokenizer, with the model's BOS policy.
        where, extra = model_location(ctx.profile.model, ctx.root)
        vocab_gguf = Path(where) / extra["gguf_file"]
        info = json.loads((src / MODEL_INFO).read_text())
        ctx.notes.append(f"tokenizer copied from the source GGUF {vocab_gguf.name} (the "
                         f"tokenizer.json transformers builds from it lacks Gemma's token "
                         f"types); add_bos_token = {info['add_bos']} from {MODEL_INFO}")
    decision = G.convert_to_gguf(src, base, cfg.base_type, logs / "convert.log", vocab_gguf,
                                 info["add_bos"] if vocab_gguf else None)
    if decision["source"] == "cogumi.bpe_pretokenizers":
        ctx.notes.append(f"pre-tokenizer: llama.cpp's converter did not recognise this BPE "
                         f"vocabulary; set tokenizer.ggml.pre = {decision['pre_tokenizer']!r} "
                         f"({decision['reason']}); verified below by tokenizing in both")

    # 2. Quantize.
    files: dict[str, Path] = {cfg.base_type: base}
    for qtype in dict.fromkeys([cfg.ship_type, *cfg.compare_types]):
        dst = out / SHIPPED if qtype == cfg.ship_type else folder / f"model-{qtype}.gguf"
        ctx.console.print(f"2C.2 quantize -> {qtype} ({dst.name})")
        G.quantize(base, dst, qtype, cfg.threads, logs / f"quantize-{qtype}.log")
        files[qtype] = dst

    # 3. What each file really holds.
    types = {}
    for qtype, path in files.items():
        report = G.tensor_types(path, qtype if qtype in G.QUANT_TYPES else None)
        log = logs / f"quantize-{qtype}.log"
        report["llama_cpp_fallback_warnings"] = (G.fallback_warnings(log.read_text())
                                                 if log.exists() else [])
        types[qtype] = report
    shipped_types = types[cfg.ship_type]
    if shipped_types["fallback_tensors"]:
        ctx.notes.append("K-quant fallback in the shipped file: " + G.describe_types(shipped_types))

    # 4. Verify every file in llama.cpp against the HF tokenizer and model.
    loaded = load_hf_model(src, ctx.profile.hardware.device)
    tok = loaded.tokenizer
    prompts = _prompts(ctx, tok, max(cfg.tokenizer_texts, cfg.greedy_prompts))
    hf_backend = TransformersBackend(loaded.model, tok, batch_size=ctx.profile.eval.batch_size,
                                     add_bos=loaded.add_bos)
    texts = [hf_backend.render(m) for m in prompts[:cfg.tokenizer_texts]] + list(HARD_TEXTS)
    sequences = [G.hf_greedy_sequence(loaded.model, hf_backend.encode(hf_backend.render(m)),
                                      cfg.greedy_tokens, tok.pad_token_id)
                 for m in prompts[:cfg.greedy_prompts]]
    ctx.console.print(f"2C.4 verify: {len(texts)} texts tokenized; {len(sequences)} prompts + "
                      f"≤ {cfg.greedy_tokens} HF greedy tokens ({sum(map(len, sequences))} "
                      f"positions) teacher-forced, per file")
    checks = {}
    for qtype, path in files.items():
        agreement = G.teacher_forced_agreement(
            loaded.model, sequences, path, n_ctx=cfg.n_ctx, threads=cfg.threads,
            quantized=qtype in G.QUANT_TYPES, log_path=logs / f"teacher-forced-{qtype}.log")
        if "error" in agreement:
            ctx.notes.append(f"{qtype}: {agreement['error']}")
        backend = LlamaCppBackend(path, n_ctx=cfg.n_ctx, n_threads=cfg.threads)
        checks[qtype] = {
            "tokenizer": G.tokenizer_agreement(path, tok, texts),
            "teacher_forced": agreement,
            "chat_template_in_gguf": backend.template == tok.chat_template,
            "add_bos_in_gguf": backend.add_bos,
        }
        if vocab_gguf is not None:
            checks[qtype]["tokenizer_vs_source_gguf"] = G.tokenizer_agreement_gguf(
                path, vocab_gguf, texts)
        backend.close()
        del backend
    if not checks[cfg.ship_type]["chat_template_in_gguf"]:
        ctx.notes.append("the shipped GGUF's tokenizer.chat_template differs from the HF "
                         "tokenizer's: llama.cpp users would prompt it differently")

    # 5. The shipped file on the evaluation suite.
    ctx.console.print(f"2C.5 evaluate {SHIPPED} in llama.cpp")
    ev = ctx.profile.eval
    report = evaluate_shipped(ctx, out / SHIPPED)
    report.write(out / "eval_after")
    if ev.limit is not None:
        ctx.notes.append(f"reduced evaluation sample: at most {ev.limit} items per task "
                         f"(eval.limit)")
    after = dict(report.metrics)
    reference = reference_for(ctx, "2E")
    steps = steps_of(ctx, "2E")
    previous = json.loads((ctx.input_dir("2E") / "metrics.json").read_text())
    steps.append(retention_step("2C", after, previous, "2E", reference))
    write_retention(out, reference, steps)

    # Sizes, per artifact.
    params = count_parameters(loaded.model)
    rows = carried_rows(ctx, "2E")
    if not rows:
        rows.append(size_row(src, params, "2E model/ (full precision, pruned + recovered, "
                                          "merged)") | {"phase": "2E"})
    rows.append(size_row(ctx.input_dir("2B") / MODEL_DIR, params,
                         "2B model/ (W4A16 compressed-tensors)") | {"phase": "2B"})
    for qtype, path in files.items():
        label = (f"{SHIPPED} ({qtype}, shipped)" if path.name == SHIPPED
                 else f"gguf/{path.name}")
        rows.append(size_row(path, params, label) | {"phase": "2C"})
    write_sizes(out, rows)

    gguf_report = {"source": str(src), "base_type": cfg.base_type, "ship_type": cfg.ship_type,
                   "pre_tokenizer": decision, "sequences": len(sequences),
                   "continuation_tokens": cfg.greedy_tokens,
                   "kl_direction": "KL(HF || GGUF), nats, full-vocabulary softmax",
                   "files": {
                       q: {"path": str(p.relative_to(out)), "bytes": p.stat().st_size,
                           "types": types[q], **checks[q]} for q, p in files.items()}}
    (out / "gguf_report.json").write_text(json.dumps(gguf_report, indent=2, default=str) + "\n")
    ctx.write_report(_report_md(gguf_report, rows, reference, steps, params))

    ship = checks[cfg.ship_type]
    base_check = checks[cfg.base_type]["teacher_forced"]
    metrics = {k: after[k] for k in after}
    metrics.update({
        "size_mb": (out / SHIPPED).stat().st_size / MB,
        "gguf.tokenizer_agreement": ship["tokenizer"]["agreement"],
        "gguf.top1_agreement": ship["teacher_forced"]["top1_agreement"],
        "gguf.mean_kl": ship["teacher_forced"]["mean_kl"],
        "gguf.max_kl": ship["teacher_forced"]["max_kl"],
        "gguf.base.top1_agreement": base_check["top1_agreement"],
        "gguf.base.mean_kl": base_check["mean_kl"],
        "gguf.base.max_kl": base_check["max_kl"],
        "gguf.intended_share": shipped_types["intended_share"],
        "gguf.fallback_tensors": shipped_types["fallback_tensors"],
        "gguf.bits_per_parameter": (out / SHIPPED).stat().st_size * 8 / params,
        "retention": steps[-1]["cumulative"]["value"],
        "retention_vs_2e": steps[-1]["per_step"]["value"],
    })
    if vocab_gguf is not None:
        metrics["gguf.tokenizer_agreement_source_gguf"] = \
            ship["tokenizer_vs_source_gguf"]["agreement"]
    for qtype, c in checks.items():
        metrics[f"gguf.{qtype}.tokenizer_agreement"] = c["tokenizer"]["agreement"]
        metrics[f"gguf.{qtype}.top1_agreement"] = c["teacher_forced"]["top1_agreement"]
        metrics[f"gguf.{qtype}.mean_kl"] = c["teacher_forced"]["mean_kl"]
        metrics[f"gguf.{qtype}.max_kl"] = c["teacher_forced"]["max_kl"]
        metrics[f"gguf.{qtype}.intended_share"] = types[qtype]["intended_share"]
    # The shipped file against the full-precision model it was exported from.
    metrics.update(judge_against_input(ctx, ctx.input_dir("2E") / "eval", out / "eval_after",
                                       "2E in transformers"))
    return metrics


def _tokenizer_line(rep: dict) -> str:
    d = rep["pre_tokenizer"]
    if d.get("pre_tokenizer") is None:
        return f"{d['source']} ({d.get('reason', '')})"
    return f"pre-tokenizer `{d['pre_tokenizer']}` from the {d['source']}"


def _report_md(rep: dict, rows: list[dict], reference, steps: list[dict], params: int) -> str:
    lines = [f"Exported `{rep['source']}` ({params:,} parameters) with llama.cpp's converter "
             f"to {rep['base_type']}, quantized with llama.cpp's quantizer; shipped: "
             f"**{rep['ship_type']}** as `model.gguf`. Tokenizer: {_tokenizer_line(rep)}.",
             "", "### GGUF files, verified in llama.cpp", "",
             f"Teacher-forced: {rep['sequences']} prompts, each followed by the HF model's "
             f"greedy continuation of at most {rep['continuation_tokens']} tokens; the same "
             f"token ids are fed to transformers and to llama.cpp, and at every position "
             f"(prompt and continuation) the next-token distributions are compared: top-1 "
             f"agreement is the share of positions whose argmaxes agree, KL is KL(HF ‖ GGUF) "
             f"in nats, softmax over the full vocabulary (llama.cpp's perplexity tool's "
             f"direction). Every file decoded in batches of 512; quantized files with "
             f"llama.cpp's default F16 KV cache, the {rep['base_type']} file with an F32 "
             f"one.", "",
             "| file | type | MB | in intended types | fallback tensors | tokenizer agreement "
             "| top-1 agreement (positions) | mean KL | median KL | max KL |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for q, f in rep["files"].items():
        t, a = f["types"], f["teacher_forced"]
        share = "n/a (unquantized)" if t["intended_types"] is None else f"{t['intended_share']:.1%}"
        agree = ("**crashed** (see notes)" if "error" in a else
                 f"{a['top1_agreement']:.4f} ({a['positions'] - a['top1_disagreements']}/"
                 f"{a['positions']})")
        lines.append(f"| `{f['path']}` | {q} | {f['bytes'] / MB:.3f} | {share} | "
                     f"{t['fallback_tensors']} | {f['tokenizer']['agreement']:.3f} "
                     f"({f['tokenizer']['identical']}/{f['tokenizer']['texts']}) | {agree} | "
                     f"{a['mean_kl']:.3g} | {a['median_kl']:.3g} | {a['max_kl']:.3g} |")
    lines += ["", "Tensor types by file (count):", ""]
    lines += [f"- {q}: " + ", ".join(f"{k} × {v}" for k, v in f["types"]["count_by_type"].items())
              + (f" — {G.describe_types(f['types'])}" if f["types"]["fallback_tensors"] else "")
              for q, f in rep["files"].items()]
    lines += ["", "### Retention (evaluation suite; the shipped GGUF run by llama.cpp)", "",
              retention_table(reference, steps), "", "### Sizes", "", size_table(rows)]
    return "\n".join(lines) + "\n"
