"""Phases 3A-3C: a domain modifier, a LoRA adapter on the shipped base, judged as users run it.

The profile declares each modifier ([[modifiers]]: name, phase, curated domains, benchmark,
LoRA settings); this one module builds whichever the phase id names.

1. Data: phase 0's curated records of the modifier's domains, plus the items of its
   benchmark's *training* split (`train_data`) with their reference answers as responses (a
   BFCL call, a HumanEval solution), plus teacher-written examples (`teacher_examples`: 1C's
   machinery, cogumi.distillation: the teacher answers the train split's prompts, or the
   curated math records' questions, never seeing a reference; kept when the verifier
   accepts). Every record is checked against every evaluation item of the suite (by id and
   text) and accounted for.
2. Training: peft LoRA (cogumi.training) at the modifier's rank, alpha, epochs and rate on
   2E's model/, the full-precision weights 2C exported; saved as `adapter/`.
3. Export: llama.cpp's convert_lora_to_gguf.py (the converter 2C uses) -> `adapter.gguf`.
4. Evaluation in llama.cpp on 2C's shipped model.gguf, alone (`eval_base/`) and with the
   adapter applied (`eval_modifier/`), on the whole suite: the [eval] tasks and every
   modifier's benchmark, so the damage outside the domain is measured on the same items
   and the router (4A) has every route's outcome on every domain's queries.
5. Cross-check: the same adapter in transformers on 2E's weights, on the modifier's own
   benchmark; item agreement with llama.cpp is reported (the base differs by 2C's
   quantization, which 2C measures itself).
6. The teacher ([teacher]) on the same items of the modifier's benchmark: the modifier's
   score as a share of the teacher's (`teacher_relative`); no teacher: the metric is NaN.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path

from cogumi.artifacts import sha256_file
from cogumi.compression.common import MB, MODEL_DIR, load_merged_phase_model
from cogumi.compression.gguf_export import convert_lora_to_gguf
from cogumi.evaluation import LlamaCppBackend, Task, evaluate
from cogumi.evaluation.paired import (
    SUITE,
    capability,
    compare_with_input,
    item_scores,
    paired_table,
)
from cogumi.evaluation.splits import SplitOverlapError, assert_disjoint, prompt_text
from cogumi.phases.common import (
    curated_records,
    eval_cache,
    eval_tasks,
    generation_backend,
    greedy_settings,
    profile_task,
    task_records,
    teacher_cache,
)
from cogumi.profile import ModifierConfig
from cogumi.runner import PhaseContext, PhaseInputError
from cogumi.training.sft import (
    checkpoint_key,
    encode_records,
    mean_loss,
    plot_loss_curve,
    split_heldout,
    train_lora,
)

#: LoRA Land (Zhao et al. 2024, Predibase): 310 rank-8 LoRA adapters on 4-bit Mistral-7B
#: beat their base by 34 points and GPT-4 by 10 points on average over 31 tasks.
LORA_LAND = ("LoRA Land (Predibase, 2024): rank-8 adapters on a 4-bit 7B base, +34 points over "
             "the base and +10 over GPT-4 on average over 31 tasks")
ADAPTER_OUTTYPE = "f16"
"""What convert_lora_to_gguf.py writes: F16, as llama.cpp's own adapters ship."""


def modifier_of(ctx: PhaseContext) -> ModifierConfig:
    mod = ctx.profile.modifier_for(ctx.phase.id)
    if mod is None:
        raise PhaseInputError(f"{ctx.profile.source_file}: no [[modifiers]] table has phase = "
                              f"{ctx.phase.id!r}; declare the modifier this phase builds")
    return mod


def suite_tasks(ctx: PhaseContext) -> list[Task]:
    """The [eval] tasks and every modifier's benchmark that [eval] does not name (each once,
    named after its key), in the order [eval] lists them, then the modifiers'."""
    tasks = eval_tasks(ctx)
    names = {t.name for t in tasks}
    cats = {"categories": ctx.profile.eval.bfcl_categories}
    for i, m in enumerate(ctx.profile.modifiers, start=1):
        if m.task in names:
            continue
        tasks.append(profile_task(ctx, m.task, m.task_data, f"modifiers[{i}].task_data",
                                  **(cats if m.task == "bfcl" else {})))
        names.add(m.task)
    return tasks


def score_of(task_name: str) -> str:
    """The suite's headline score of a task (cogumi.evaluation.paired.SUITE)."""
    for score, task in SUITE.items():
        if task == task_name:
            return score
    raise PhaseInputError(f"task {task_name!r} has no headline score in the suite")


# ----------------------------------------------------------------------------- records
def teacher_source(ctx: PhaseContext, mod: ModifierConfig, train_task: Task | None,
                   curated: list[dict]) -> Task:
    """The items whose prompts the teacher answers: the modifier's train split (code: the
    train-split functions; automation: BFCL's train calls), or, without one, phase 0's
    curated math records that state a final answer (reasoning), whose answers only the
    verifier reads. Never an evaluation split (modifier_records checks every record)."""
    if train_task is not None:
        return train_task
    if "math" in mod.domains:
        from cogumi.phases.self_consistency import math_training_task
        return math_training_task(curated, mod.teacher_examples, "runs/0/curated.jsonl")
    raise PhaseInputError(f"{ctx.profile.source_file}: modifiers ({mod.name}): "
                          f"teacher_examples = {mod.teacher_examples} needs train_data or the "
                          f"math domain: there is nothing the verifier could check")


def teacher_requests(source: Task, mod: ModifierConfig) -> list[dict]:
    """One request per item (the first `teacher_examples`): the prompt the evaluation would
    send (its system turn too: BFCL lists the functions there) and the verifier's inputs,
    kept apart from what the teacher is sent (cogumi.distillation: `check` never is)."""
    from cogumi.distillation import check_for_item

    out = []
    for item in [it for it in source.items if it.malformed is None][:mod.teacher_examples]:
        msgs = source.messages(item)
        user = next(m["content"] for m in msgs if m["role"] == "user")
        system = next((m["content"] for m in msgs if m["role"] == "system"), None)
        req = {"id": f"teacher-{mod.name}:{item.id}", "domain": mod.name, "prompt": user,
               "instruction": user, "check": check_for_item(source, item),
               "item_id": item.id, "prompt_text": prompt_text(item)}
        if system:
            req["system"] = system
        out.append(req)
    return out


def teacher_examples(ctx: PhaseContext, mod: ModifierConfig, train_task: Task | None,
                     curated: list[dict]) -> tuple[list[dict], dict]:
    """Teacher-written examples aimed at the domain, as 1C makes them: the [teacher] through
    cogumi.teacher, every answer cached by content (runs/<profile>/.teacher-cache, shared
    with 1C: a rerun sends nothing), budgeted at [teacher].price_usd_per_mtok, and kept only
    when the verifier accepts it. Returns (kept records, accounting); writes
    teacher_examples.jsonl, teacher_rejected.jsonl and teacher_usage.json."""
    from cogumi.artifacts import atomic_write_text

    out = ctx.out_dir
    kept: list[dict] = []
    usage: dict = {"requested": mod.teacher_examples, "requests": 0}
    rejected: list[dict] = []
    if mod.teacher_examples == 0:
        usage["why_none"] = f"modifiers ({mod.name}) teacher_examples = 0"
    elif ctx.profile.teacher is None:
        raise PhaseInputError(f"{ctx.profile.source_file}: modifiers ({mod.name}): "
                              f"teacher_examples = {mod.teacher_examples} needs a [teacher]")
    else:
        from cogumi.distillation import Budget, ExampleVerifier, generate_examples
        from cogumi.teacher import teacher_backend

        cfg = ctx.profile.teacher
        requests = teacher_requests(teacher_source(ctx, mod, train_task, curated), mod)
        budget = Budget(max_usd=mod.teacher_budget_usd, max_tokens=mod.teacher_budget_tokens)
        prices = tuple(cfg.price_usd_per_mtok)
        ctx.console.print(f"{ctx.phase.id} ({mod.name}): {len(requests)} prompts to the "
                          f"teacher {cfg.model}")
        # The verifier's inputs and the item's own prompt text stay here: the request the
        # teacher gets is its system and user turns only (to_generation_request).
        with teacher_backend(cfg, log_dir=ctx.work_dir) as backend:
            result = generate_examples(
                backend, requests, verifier=ExampleVerifier(), cache_dir=teacher_cache(ctx),
                budget=budget, prices=prices,
                defaults={"max_tokens": mod.teacher_max_tokens, "temperature": 0.0,
                          "seed": ctx.seed})
        by_id = {r["id"]: r for r in requests}
        for e in result.kept:
            # item_id / prompt_text: the disjointness check reads the item, not the answer.
            kept.append({**e, "item_id": by_id[e["id"]]["item_id"],
                         "prompt_text": by_id[e["id"]]["prompt_text"]})
        rejected = result.rejected + result.not_sent
        usage.update({**result.usage, "kept": len(result.kept),
                      "rejected": len(result.rejected), "reject_reasons": result.reasons(),
                      "budget": result.budget, "teacher": cfg.model,
                      "source": ("train_data" if train_task is not None
                                 else "curated math records")})
        if result.budget_stopped:
            raise PhaseInputError(
                f"{ctx.phase.id} the teacher budget (modifiers ({mod.name}) "
                f"teacher_budget_usd {mod.teacher_budget_usd}, teacher_budget_tokens "
                f"{mod.teacher_budget_tokens}) stopped {len(result.not_sent)} requests before "
                f"it was exceeded; answers so far are cached")
    atomic_write_text(out / "teacher_examples.jsonl", "".join(
        json.dumps(e, ensure_ascii=False) + "\n" for e in kept))
    atomic_write_text(out / "teacher_rejected.jsonl", "".join(
        json.dumps(e, ensure_ascii=False) + "\n" for e in rejected))
    atomic_write_text(out / "teacher_usage.json", json.dumps(usage, indent=2) + "\n")
    return kept, usage


def modifier_records(ctx: PhaseContext, mod: ModifierConfig, tasks: list[Task]
                     ) -> tuple[list[dict], dict]:
    """Every record the modifier trains on, and where each curated record went."""
    curated = curated_records(ctx)
    in_domain = [r for r in curated if r.get("domain") in mod.domains]
    accounting = {"curated.total": len(curated), "curated.in_domains": len(in_domain),
                  "curated.other_domains": len(curated) - len(in_domain)}
    records = list(in_domain)
    excluded: Counter = Counter()
    train_task = None
    if mod.train_data is not None:
        cats = {"categories": ctx.profile.eval.bfcl_categories} if mod.task == "bfcl" else {}
        train_task = profile_task(ctx, mod.task, mod.train_data,
                                  f"modifiers ({mod.name}) train_data", name=f"{mod.task}-train",
                                  on_error="record", **cats)
        extra, excluded = task_records(train_task, f"{mod.task}-train")
        accounting["train_data.items"] = len(train_task.items)
        accounting["train_data.records"] = len(extra)
        records += extra
    # Before the teacher is asked: its prompts are these records' items (or curated ones).
    _refuse_evaluation_items(records, tasks, mod)
    examples, usage = teacher_examples(ctx, mod, train_task, curated)
    accounting["teacher.requests"] = usage["requests"]
    accounting["teacher.sent"] = usage.get("sent", 0)
    accounting["teacher.cache_hits"] = usage.get("cache_hits", 0)
    accounting["teacher.examples"] = len(examples)
    accounting["teacher.rejected"] = usage.get("rejected", 0)
    accounting["teacher.cost_usd"] = usage.get("cost_usd", 0.0)
    accounting["teacher.why_none"] = usage.get("why_none", "")
    accounting["teacher.reject_reasons"] = usage.get("reject_reasons", {})
    records += examples
    _refuse_evaluation_items(examples, tasks, mod)
    if mod.max_records is not None and len(records) > mod.max_records:
        random.Random(ctx.seed).shuffle(records)
        accounting["dropped.max_records"] = len(records) - mod.max_records
        records = records[:mod.max_records]
    accounting["excluded"] = dict(excluded)
    accounting["records"] = len(records)
    return records, accounting


def _refuse_evaluation_items(records: list[dict], tasks: list[Task], mod: ModifierConfig
                             ) -> None:
    """Every suite task, the modifiers' benchmarks included (curated_records checked [eval]),
    by the item's id and prompt text."""
    try:
        assert_disjoint(((r.get("item_id", r["id"]), r.get("prompt_text") or r["instruction"])
                         for r in records), tasks, f"modifier {mod.name} training records")
    except SplitOverlapError as e:
        raise PhaseInputError(f"{e}; the modifier would train on the test") from None


# ------------------------------------------------------------------------------ evaluation


def evaluate_gguf(ctx: PhaseContext, model: Path, tasks: list[Task], out_dir: Path,
                  lora: Path | None = None):
    """The suite in llama.cpp on `model`, with the GGUF LoRA `lora` applied when given."""
    g = ctx.profile.gguf
    backend = LlamaCppBackend(model, n_ctx=g.n_ctx, n_threads=g.threads, lora_path=lora)
    report = evaluate(backend, tasks, greedy_settings(ctx), limit=ctx.profile.eval.limit,
                      cache_dir=eval_cache(ctx))
    report.write(out_dir)
    return report


def crosscheck(ctx: PhaseContext, loaded, task: Task, llamacpp_dir: Path) -> dict:
    """The adapter in transformers (on 2E's weights) against llama.cpp (on 2C's file), on
    the modifier's benchmark, item by item."""
    with generation_backend(ctx, loaded) as backend:
        report = evaluate(backend, [task], greedy_settings(ctx), limit=ctx.profile.eval.limit,
                          cache_dir=eval_cache(ctx))
    hf = item_scores_of(report.records)[task.name]
    cpp = item_scores(llamacpp_dir)[task.name]
    same = [i for i in hf if i in cpp]
    agree = sum(hf[i] == cpp[i] for i in same)
    score = score_of(task.name)
    return {"task": task.name, "items": len(same), "agreeing_items": agree,
            "item_agreement": agree / len(same) if same else math.nan,
            "transformers_score": report.metrics.get(score, math.nan),
            "llamacpp_score": sum(cpp[i] for i in same) / len(same) if same else math.nan,
            "disagreeing": [{"item_id": i, "transformers": hf[i], "llamacpp": cpp[i]}
                            for i in same if hf[i] != cpp[i]],
            "transformers_base": "2E model/ + adapter/ (peft, unmerged)",
            "llamacpp_base": "2C model.gguf + adapter.gguf"}


def item_scores_of(records: list[dict]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for r in records:
        v = r.get("verdicts") or [False]
        out.setdefault(r["task"], {})[r["item_id"]] = sum(map(bool, v)) / len(v)
    return out


def teacher_score(ctx: PhaseContext, task: Task, out_dir: Path) -> tuple[float, str]:
    """The profile's teacher on the same items of the modifier's benchmark, through
    cogumi.teacher (a served GGUF or an endpoint); (NaN, why) without one."""
    cfg = ctx.profile.teacher
    if cfg is None:
        return math.nan, "the profile names no [teacher]: teacher_relative is not measured"
    from cogumi.teacher import teacher_backend

    with teacher_backend(cfg, cache_dir=ctx.work_dir / "teacher-cache",
                         log_dir=ctx.work_dir) as backend:
        report = evaluate(backend, [task], greedy_settings(ctx), limit=ctx.profile.eval.limit)
    report.write(out_dir)
    return report.metrics.get(score_of(task.name), math.nan), f"teacher {cfg.model}"


def _teacher_table(accounting: dict, mod: ModifierConfig) -> str:
    if accounting["teacher.why_none"]:
        return f"None: {accounting['teacher.why_none']}."
    a = accounting
    reasons = ", ".join(f"{k} {n}" for k, n in a["teacher.reject_reasons"].items()) or "—"
    return "\n".join([
        "| prompts | sent | cache hits | kept (verifier accepted) | rejected | rejected by "
        "reason | cost (USD) |", "|---|---|---|---|---|---|---|",
        f"| {a['teacher.requests']} | {a['teacher.sent']} | {a['teacher.cache_hits']} | "
        f"{a['teacher.examples']} | {a['teacher.rejected']} | {reasons} | "
        f"{a['teacher.cost_usd']:.4f} |", "",
        f"The teacher answered the first {mod.teacher_examples} items' prompts "
        "(teacher_examples); it never saw a reference answer, which only the verifier read. "
        "Every answer: teacher_examples.jsonl (kept), teacher_rejected.jsonl (with the "
        "reason), teacher_usage.json (tokens, cost, budget)."])


# --------------------------------------------------------------------------------- run

def lora_parameters(peft_model) -> int:
    return sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)


def run(ctx: PhaseContext) -> dict:
    profile, tc = ctx.profile, ctx.profile.training
    mod = modifier_of(ctx)
    out = ctx.out_dir
    base_gguf = ctx.input_dir("2C") / "model.gguf"
    base_dir = ctx.input_dir("2E") / MODEL_DIR
    for needed in (base_gguf, base_dir / "config.json"):
        if not needed.exists():
            raise PhaseInputError(f"{needed}: missing (phase {ctx.phase.id} needs 2C's shipped "
                                  f"file and 2E's weights)")
    tasks = suite_tasks(ctx)
    own = next(t for t in tasks if t.name == mod.task)

    # 1. data
    records, accounting = modifier_records(ctx, mod, tasks)
    train_records, heldout_records = split_heldout(records, tc.heldout_fraction)
    ctx.console.print(f"{ctx.phase.id} ({mod.name}): loading 2E's model")
    loaded = load_merged_phase_model(ctx, "2E")
    tok = loaded.tokenizer
    max_len = mod.max_seq_len or tc.max_seq_len
    train = encode_records(train_records, tok, loaded.add_bos, max_len)
    heldout = encode_records(heldout_records, tok, loaded.add_bos, max_len)
    if not train.examples:
        raise PhaseInputError(f"modifier {mod.name}: no usable training examples from "
                              f"{accounting} (excluded: {dict(train.excluded)})")
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    loss_before = mean_loss(loaded.model, heldout.examples, pad_id)

    # 2. LoRA on 2E's weights (peft in the profile's dtype: 2E's weights are full precision)
    cfg = tc.model_copy(update={
        "backend": "peft-lora", "lora_rank": mod.lora_rank, "lora_alpha": mod.lora_alpha,
        "lora_dropout": mod.lora_dropout,
        "target_modules": mod.target_modules or tc.target_modules,
        "epochs": mod.epochs, "learning_rate": mod.learning_rate, "max_seq_len": max_len})
    key = checkpoint_key(profile.sha256, ctx.phase.id, *(r["id"] for r in train_records))
    ctx.console.print(f"{ctx.phase.id} ({mod.name}): LoRA r{mod.lora_rank} on "
                      f"{len(train.examples)} examples, {mod.epochs:g} epochs at lr "
                      f"{mod.learning_rate:g}")
    peft_model, log_history, resumed = train_lora(
        loaded.model, tok, train.examples, cfg, profile.seed,
        ctx.work_dir / f"checkpoints-{key}", profile.hardware.device)
    peft_model.eval()
    if resumed:
        ctx.notes.append("resumed from a checkpoint")
    loss_after = mean_loss(peft_model, heldout.examples, pad_id)
    peft_model.save_pretrained(out / "adapter")
    n_lora = lora_parameters(peft_model)
    plot_loss_curve(log_history, out / "loss_curve.png",
                    f"{ctx.phase.id} {mod.name} modifier LoRA r{mod.lora_rank} — {profile.name}")
    ctx.add_figure("loss_curve.png", f"{mod.name} modifier: training loss per optimizer step")
    steps = max((h.get("step", 0) for h in log_history), default=0)
    excluded = train.excluded + heldout.excluded
    (out / "train_log.json").write_text(json.dumps({
        "modifier": mod.model_dump(mode="json", by_alias=True), "accounting": accounting,
        "train_records": len(train_records), "heldout_records": len(heldout_records),
        "train_examples": len(train.examples), "heldout_examples": len(heldout.examples),
        "excluded": dict(excluded), "heldout_loss": {"before": loss_before, "after": loss_after},
        "lora_parameters": n_lora, "steps": steps, "log_history": log_history}, indent=2) + "\n")

    # 3. GGUF LoRA with llama.cpp's converter, against 2E's model/ (its config)
    adapter_gguf = out / "adapter.gguf"
    convert_lora_to_gguf(out / "adapter", base_dir, adapter_gguf, ADAPTER_OUTTYPE,
                         ctx.work_dir / "convert_lora.log")
    adapter_bytes = adapter_gguf.stat().st_size

    # 4. llama.cpp on the shipped file, alone and with the adapter
    ctx.console.print(f"{ctx.phase.id}: the suite in llama.cpp on 2C's model.gguf, alone and "
                      f"with adapter.gguf")
    evaluate_gguf(ctx, base_gguf, tasks, out / "eval_base")
    mod_report = evaluate_gguf(ctx, base_gguf, tasks, out / "eval_modifier", lora=adapter_gguf)
    for note in mod_report.limits():
        if note not in ctx.notes:
            ctx.notes.append(note)
    paired, rows = compare_with_input(out / "eval_base", out / "eval_modifier")
    own_score = score_of(own.name)
    own_row = next(r for r in rows if r["score"] == own_score)
    others = [r for r in rows if r["score"] != own_score]
    able, _ = capability(out / "eval_modifier")

    # 5. transformers cross-check; 6. the teacher
    loaded.model = peft_model
    check = crosscheck(ctx, loaded, own, out / "eval_modifier")
    (out / "crosscheck.json").write_text(json.dumps(check, indent=2) + "\n")
    t_score, t_what = teacher_score(ctx, own, out / "eval_teacher")
    relative = own_row["after"] / t_score if t_score and not math.isnan(t_score) else math.nan
    if math.isnan(t_score):
        ctx.notes.append(t_what)
    elif t_score == 0:
        ctx.notes.append(f"{t_what} scored 0 on {own.name}: its share is undefined")

    modifier_json = {
        "name": mod.name, "phase": ctx.phase.id, "domain": mod.name, "domains": mod.domains,
        "task": own.name, "score": own_score,
        "adapter_gguf_sha256": sha256_file(adapter_gguf), "adapter_bytes": adapter_bytes,
        "lora_rank": mod.lora_rank, "lora_alpha": float(mod.lora_alpha),
        "target_modules": list(cfg.target_modules), "lora_parameters": n_lora,
        "adapter_outtype": ADAPTER_OUTTYPE,
        "base_gguf_sha256": sha256_file(base_gguf), "base_model": "2E model/ (full precision)",
        "eval_tasks": [t.name for t in tasks]}
    (out / "modifier.json").write_text(json.dumps(modifier_json, indent=2) + "\n")

    size_mb = adapter_bytes / MB
    worst = min(others, key=lambda r: r["lower"]) if others else None
    ctx.write_report("\n".join([
        f"Modifier **{mod.name}** ({ctx.phase.id}): LoRA rank {mod.lora_rank}, alpha "
        f"{mod.lora_alpha:g} on {', '.join(cfg.target_modules)} of 2E's weights; judged on "
        f"**{own.name}** in llama.cpp with adapter.gguf applied to 2C's model.gguf.", "",
        "### Its own benchmark, against the shipped base", "",
        paired_table([own_row], "base"), "",
        f"Teacher: {t_what}; score {t_score:.3f}; modifier / teacher = {relative:.3f}."
        if not math.isnan(t_score) else f"Teacher: not measured ({t_what}).", "",
        "### Outside its domain (a routing mistake's cost)", "",
        paired_table(others, "base") if others else "no other task in the suite", "",
        (f"Worst: {worst['score']} {worst['point']:+.3f}, 95% interval lower bound "
         f"{worst['lower']:+.3f}." if worst else ""), "",
        "### Size", "",
        "| adapter.gguf | bytes | MB | LoRA parameters | bytes per rank | bytes per LoRA "
        "parameter |", "|---|---|---|---|---|---|",
        f"| {ADAPTER_OUTTYPE} | {adapter_bytes:,} | {size_mb:.4f} | {n_lora:,} | "
        f"{adapter_bytes / mod.lora_rank:,.0f} | {adapter_bytes / max(n_lora, 1):.3f} |", "",
        f"Anchor: {LORA_LAND}. A rank-8 F16 adapter on every projection of an 8B Llama is "
        f"8 x 2,621,440 x 2 bytes = 41.9 MB (the seed's 40-48 MB).", "",
        "### transformers cross-check (same adapter, 2E's full-precision weights)", "",
        f"{own.name}: transformers {check['transformers_score']:.3f}, llama.cpp "
        f"{check['llamacpp_score']:.3f}; {check['agreeing_items']} of {check['items']} items "
        f"agree ({check['item_agreement']:.3f}). The bases differ by 2C's quantization "
        f"({profile.gguf.ship_type}).", "",
        "### Training data", "",
        "| source | records |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in accounting.items()
          if not isinstance(v, dict) and not k.startswith("teacher.")],
        f"| train / held-out split | {len(train_records)} / {len(heldout_records)} |",
        f"| excluded when encoding | {dict(excluded) or 0} |", "",
        f"Held-out loss (answer tokens): {loss_before:.4f} before, {loss_after:.4f} after; "
        f"{steps} optimizer steps.", "",
        "### Teacher-written examples", "",
        _teacher_table(accounting, mod), ""]))
    if accounting.get("teacher.why_none"):
        ctx.notes.append(f"no teacher-written examples: {accounting['teacher.why_none']}")
    if excluded:
        ctx.notes.append("excluded from training: " + ", ".join(
            f"{n} {why}" for why, n in excluded.items()))

    uppers = [r["upper"] for r in others]
    metrics = {
        "task.score": own_row["after"], "task.base_score": own_row["before"],
        "task.lower95_above_chance": able[f"{own_score}.lower95_above_chance"],
        "gain": own_row["point"], "gain_lower": own_row["lower"], "gain_upper": own_row["upper"],
        "teacher_relative": relative, "teacher.score": t_score,
        "size_mb": size_mb, "adapter_bytes": adapter_bytes,
        "adapter_bytes_per_rank": adapter_bytes / mod.lora_rank,
        "lora.parameters": n_lora, "lora.rank": mod.lora_rank,
        "off_domain.worst_delta": min((r["point"] for r in others), default=math.nan),
        "off_domain.worst_delta_lower": min((r["lower"] for r in others), default=math.nan),
        "off_domain.worst_delta_upper": min(uppers, default=math.nan),
        "crosscheck.transformers_score": check["transformers_score"],
        "crosscheck.llamacpp_score": check["llamacpp_score"],
        "crosscheck.item_agreement": check["item_agreement"],
        "train.records": len(records), "train.examples": len(train.examples),
        "teacher_examples.kept": accounting["teacher.examples"],
        "teacher_examples.rejected": accounting["teacher.rejected"],
        "teacher_examples.sent": accounting["teacher.sent"],
        "teacher_examples.cache_hits": accounting["teacher.cache_hits"],
        "teacher_examples.cost_usd": accounting["teacher.cost_usd"],
        "train.excluded": sum(excluded.values()), "train.steps": steps,
        "train.heldout_loss_before": loss_before, "train.heldout_loss_after": loss_after,
    }
    metrics.update({f"modifier.{k}": v for k, v in mod_report.metrics.items()
                    if k in SUITE})
    metrics.update({k: v for k, v in paired.items() if k.startswith("vs_input.")})
    return metrics
