"""What several phases share: measuring a model on the profile's evaluation tasks."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from cogumi.data.sources import SchemaError
from cogumi.evaluation import (
    BenchmarkPackageMissing,
    EvalReport,
    GenerationSettings,
    Task,
    TransformersBackend,
    evaluate,
    load_task,
)
from cogumi.evaluation.answers import LETTERS
from cogumi.evaluation.splits import IdRange, SplitOverlapError, assert_disjoint, prompt_text
from cogumi.models import LoadedModel, load_base_model
from cogumi.profile import HubTask, IdRangeTask
from cogumi.runner import PhaseContext, PhaseInputError


def evaluation_model(ctx: PhaseContext, model):
    """`model` as the profile evaluates it: itself, or a copy cast to [eval] dtype (the
    weights being trained or compared for exactness are never cast in place)."""
    import copy

    import torch

    wanted = ctx.profile.eval.dtype
    if wanted is None or getattr(model, "dtype", None) == getattr(torch, wanted):
        return model
    return copy.deepcopy(model).to(getattr(torch, wanted)).eval()


@contextmanager
def generation_backend(ctx: PhaseContext, loaded: LoadedModel) -> Iterator[TransformersBackend]:
    """The profile's generation backend over a loaded model, in [eval] dtype, with a
    progress bar."""
    with ctx.progress() as progress:
        yield TransformersBackend(evaluation_model(ctx, loaded.model), loaded.tokenizer,
                                  batch_size=ctx.profile.eval.batch_size,
                                  add_bos=loaded.add_bos, progress=progress)


def load_with_trainable_adapter(ctx: PhaseContext, phase_id: str) -> LoadedModel:
    """The profile's base model with `phase_id`'s LoRA adapter, trainable: for a phase that
    trains that adapter further (1B on 1A's, 1C on 1B's)."""
    from peft import PeftModel

    loaded = load_base_model(ctx.profile.model, ctx.root, ctx.profile.hardware.device)
    loaded.model = PeftModel.from_pretrained(loaded.model, ctx.input_dir(phase_id) / "adapter",
                                             is_trainable=True)
    return loaded


def train_adapter_further(ctx: PhaseContext, loaded: LoadedModel, records: list[dict], *,
                          epochs: float, learning_rate: float, step: str, what: str,
                          plot_title: str):
    """Train `loaded`'s trainable adapter on `records` (1B: its verified answers, 1C: the
    teacher's), resuming a checkpoint keyed by the profile and the record ids; saves
    `adapter/` and the loss curve. Returns the encoding (its `excluded` counts go in notes)."""
    from cogumi.training.sft import checkpoint_key, encode_records, fit, plot_loss_curve

    profile = ctx.profile
    encoded = encode_records(records, loaded.tokenizer, loaded.add_bos, profile.training.max_seq_len)
    key = checkpoint_key(profile.sha256, *(r["id"] for r in records))
    ctx.console.print(f"{step} training on {len(encoded.examples)} {what}, {epochs:g} epochs "
                      f"at lr {learning_rate:g}")
    log_history, resumed = fit(loaded.model, loaded.tokenizer, encoded.examples, profile.training,
                               ctx.seed, ctx.work_dir / f"checkpoints-{key}",
                               profile.hardware.device, epochs=epochs, learning_rate=learning_rate)
    if resumed:
        ctx.notes.append("resumed from a checkpoint")
    loaded.model.save_pretrained(ctx.out_dir / "adapter")
    plot_loss_curve(log_history, ctx.out_dir / "loss_curve.png", plot_title)
    return encoded


def teacher_cache(ctx: PhaseContext) -> Path:
    """One cache of teacher answers per profile, keyed by content (model digest and request):
    shared by reruns, by code changes (which do not change what the teacher said) and by the
    phases that ask the teacher (1A and 1B for the reference answers, 1C, 3A-3C)."""
    return ctx.runs_dir / ".teacher-cache"


def curated_records(ctx: PhaseContext) -> list[dict]:
    """Phase 0's kept records (every phase that reads curated data declares input "0"),
    refused if any is an evaluation item: they are trained and calibrated on."""
    path = ctx.input_dir("0") / "curated.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line]
    refuse_evaluation_items(ctx, ((r["id"], r["instruction"]) for r in records), str(path))
    return records


def refuse_evaluation_items(ctx: PhaseContext, items: Iterable[tuple[str, str]],
                            what: str) -> None:
    """Training, distillation and calibration data never overlap an evaluation split:
    items (id, prompt text) that are items of the profile's suite, by id or by normalised
    text, stop the phase naming them (cogumi.evaluation.splits.assert_disjoint)."""
    try:
        assert_disjoint(items, eval_tasks(ctx), what)
    except SplitOverlapError as e:
        raise PhaseInputError(f"{e}; the phase would train on the test") from None


def reference_response(task: Task, item) -> str | None:
    """The answer a training item's reference gives, written as the evaluation expects it
    (so training on it teaches the format the verifier reads); None when it has none."""
    f = item.fields
    if task.kind == "tool_call":
        calls = []
        for call in item.reference:
            (name, params), = call.items()
            # The first accepted value of each argument; "" among BFCL's values marks an
            # optional argument that may be left out: left out when it comes first.
            args = [f"{k}={v[0]!r}" for k, v in params.items() if v and v[0] != ""]
            calls.append(f"{name}({', '.join(args)})")
        return f"[{', '.join(calls)}]"
    if task.kind == "code":
        solution = f.get("canonical_solution")
        return f"```python\n{f['prompt']}{solution}```" if solution else None
    if task.kind == "math":
        worked = f.get("solution") or f.get("answer") or ""
        return f"{worked.strip()}\nThe answer is {item.reference}"
    if task.kind == "mmlu":
        return f"The answer is {LETTERS[item.reference]}"
    return None


def task_records(task: Task, label: str) -> tuple[list[dict], Counter]:
    """Training items of a benchmark's train split as curated-style records: the prompt the
    evaluation sends (system turn included: BFCL lists the functions there) and the item's
    reference answer."""
    out, excluded = [], Counter()
    for item in task.items:
        if item.malformed is not None:
            excluded["malformed train_data line"] += 1
            continue
        response = reference_response(task, item)
        if not response:
            excluded["train_data item without a reference answer"] += 1
            continue
        msgs = task.messages(item)
        record = {"id": f"{label}:{item.id}", "domain": label, "instruction": msgs[-1]["content"],
                  "response": response, "source": "train_data", "item_id": item.id,
                  "prompt_text": prompt_text(item)}
        if len(msgs) == 2 and msgs[0]["role"] == "system":
            record["system"] = msgs[0]["content"]
        elif len(msgs) != 1:
            excluded["train_data item with more than one turn"] += 1
            continue
        out.append(record)
    return out, excluded


def train_split_records(ctx: PhaseContext, splits, key: str) -> tuple[list[dict], Counter]:
    """A compression phase's `train_data` (`key`: where the profile declares it) as training
    records (task_records: the prompt the evaluation sends, the item's reference answer),
    refused if any is an evaluation item."""
    records, excluded = [], Counter()
    for i, split in enumerate(splits):
        task = profile_task(ctx, split.task, split.source, f"{key}[{i}]",
                            name=f"{split.task}-train", on_error="record")
        refuse_evaluation_items(ctx, ((it.id, prompt_text(it)) for it in task.items), key)
        got, skipped = task_records(task, f"{split.task}-train")
        records += got
        excluded += skipped
    return records, excluded


def eval_cache(ctx: PhaseContext) -> Path:
    """One evaluation cache per profile, shared by its phases: a result is reused only for
    the same weights, tokenizer, task bytes and generation settings (see evaluate()), and
    the same cogumi code: a rebuild after a code change evaluates again."""
    return ctx.runs_dir / ".eval-cache" / (ctx.code_sha256[:16] or "unbound")


def profile_task(ctx: PhaseContext, benchmark: str, value: str | HubTask | IdRangeTask,
                 where: str, **kwargs):
    """One task as a profile names it (`where`: the key): a file (relative to the data
    root), "package" (the file its package ships), a hub dataset (read in its table's
    schema, else the benchmark's) or an id range of a file or package (its items whose id
    falls in the range). Named after `benchmark` unless `name` is given; a missing
    package or a hub dataset without its schema's columns is a one-line PhaseInputError."""
    try:
        if isinstance(value, HubTask):
            return load_task(value.schema_ or benchmark, hub=value.dataset(),
                             name=kwargs.pop("name", benchmark), **kwargs)
        if isinstance(value, IdRangeTask):  # part of a file by id, declared in the profile
            task = load_task(benchmark, None if value.source == "package"
                             else ctx.resolve(value.source), **kwargs)
            part = value.ids().select(task)
            unknown = [i for i in value.exclude_ids
                       if i not in IdRange(value.salt, *value.id_range)
                       or i not in {it.id for it in task.items}]
            if unknown:
                raise PhaseInputError(f"{ctx.profile.source_file}: {where}: exclude_ids "
                                      f"{unknown} are not items of the range")
            if not part.items:
                raise PhaseInputError(f"{ctx.profile.source_file}: {where}: no item of "
                                      f"{len(task.items)} falls in {value.ids()}")
            return part
        return load_task(benchmark, None if value == "package" else ctx.resolve(value),
                         **kwargs)
    except (BenchmarkPackageMissing, SchemaError) as e:
        raise PhaseInputError(f"{ctx.profile.source_file}: {where}: {e}") from None


def eval_tasks(ctx: PhaseContext) -> list:
    """The profile's evaluation tasks ([eval] math, mmlu, code, gsm8k, humaneval, gpqa,
    bfcl), each named after its key; "package" reads the file its package ships, a table
    the hub dataset it names."""
    cfg = ctx.profile.eval
    tasks = [dataclasses.replace(
                 profile_task(ctx, key, value, f"[eval] {key}",
                              **({"categories": cfg.bfcl_categories} if key == "bfcl" else {})),
                 max_new_tokens=cfg.max_new_tokens_by_task.get(key))
             for key, value in cfg.benchmarks()]
    if not tasks:
        raise PhaseInputError(f"{ctx.profile.source_file}: [eval] names no task files")
    return tasks


def greedy_settings(ctx: PhaseContext) -> GenerationSettings:
    """How the profile evaluates: greedy, [eval] max_new_tokens, the model's stop strings."""
    return GenerationSettings(max_new_tokens=ctx.profile.eval.max_new_tokens, temperature=0.0,
                              seed=ctx.seed, samples=1, stop=tuple(ctx.profile.model.stop))


def evaluate_model(ctx: PhaseContext, loaded: LoadedModel, out_dir: Path) -> dict:
    """Greedy evaluation on the profile's tasks; per-item records are written to out_dir."""
    cfg = ctx.profile.eval
    tasks = eval_tasks(ctx)
    if cfg.limit is not None:
        note = f"reduced evaluation sample: at most {cfg.limit} items per task (eval.limit)"
        if note not in ctx.notes:
            ctx.notes.append(note)
    with generation_backend(ctx, loaded) as backend:
        report = evaluate(backend, tasks, greedy_settings(ctx), limit=cfg.limit,
                          cache_dir=eval_cache(ctx))
    report.write(out_dir)
    for note in report.limits():
        if note not in ctx.notes:
            ctx.notes.append(note)
    return dict(report.metrics)


def lm_eval_cross_check(ctx: PhaseContext, loaded: LoadedModel, report_dir: Path,
                        out_file: Path) -> dict:
    """lm-eval on the same checkpoint and the same files as the evaluation in `report_dir`:
    items that disagree (prompt, log-likelihoods, chosen option, generation), MATH items
    the two extractors score differently, and whether each score is within one standard
    error of ours (cogumi.evaluation.lm_eval_bridge). Code has no lm-eval form: our sandbox
    scores it."""
    from cogumi.evaluation.lm_eval_bridge import cross_check, run_lm_eval

    cfg = ctx.profile.eval
    tasks = [t for t in eval_tasks(ctx) if t.kind in ("math", "mmlu")]
    if not tasks:
        return {}
    model = evaluation_model(ctx, loaded.model)  # the weights our evaluation ran on
    if hasattr(model, "get_base_model"):  # a PeftModel: its LoRA layers stay in the forward
        model = model.get_base_model()
    ctx.console.print("cross-check: the same files and checkpoint through lm_eval.simple_evaluate")
    results = run_lm_eval(model, loaded.tokenizer, tasks, ctx.work_dir / "lm_eval",
                          max_new_tokens=cfg.max_new_tokens, limit=cfg.limit,
                          batch_size=cfg.batch_size, add_bos=loaded.add_bos,
                          stop=tuple(ctx.profile.model.stop))
    check = cross_check(EvalReport.load(report_dir), results)
    out_file.write_text(json.dumps(check, indent=2))
    per_task = check["tasks"]
    metrics = {}
    for name, entry in per_task.items():
        metrics[f"lm_eval.{name}.score"] = entry["lm_eval"]
        metrics[f"lm_eval.{name}.stderr"] = entry["lm_eval_stderr"]
        metrics[f"lm_eval.{name}.item_disagreements"] = entry["item_disagreements"]
    metrics["lm_eval.item_disagreements"] = check["item_disagreements"]
    metrics["lm_eval.math_extraction_differences"] = check["extraction_differences"]["count"]
    metrics["lm_eval.scores_within_one_stderr"] = (
        sum(e["within_one_stderr"] for e in per_task.values()) / len(per_task)
    ) if per_task else float("nan")
    ctx.notes.append("lm-eval cross-check (lm_eval_crosscheck.json): " + "; ".join(
        f"{name}: ours {e['ours']:.3f} vs lm-eval {e['lm_eval']:.3f} ± {e['lm_eval_stderr']:.3f}"
        f" ({e['item_disagreements']} items disagree)" for name, e in per_task.items())
        + f"; {check['extraction_differences']['count']} MATH items scored differently by "
        f"lm-eval's filter ({check['math_scoring']['lm_eval']}) and ours on the same generation")
    return metrics


def judge_against_input(ctx: PhaseContext, before_dir: Path, after_dir: Path,
                        against: str) -> dict:
    """The metrics every model-changing phase reports the same way, with their report tables:
    the paired change of each suite score against its input on the same items
    (``vs_input.*``; gate: not significantly worse) and whether each score is above chance
    (``*.lower95_above_chance``; capability gates)."""
    from cogumi.evaluation.paired import (
        capability,
        capability_table,
        compare_with_input,
        paired_table,
    )

    paired, rows = compare_with_input(before_dir, after_dir)
    able, able_rows = capability(after_dir)
    ctx.add_report_section(
        f"### Against its input ({against}), item by item\n\n{paired_table(rows, against)}"
        f"\n\n### Above chance?\n\n{capability_table(able_rows)}")
    return {**paired, **able}


def reference_settings(ctx: PhaseContext) -> GenerationSettings:
    """How the reference model (the profile's [teacher]) answers the suite: greedy, one
    answer, the suite's token limit, as 1C scores it (the student's stop strings belong to
    the student's template; the teacher's server ends its own turns)."""
    return GenerationSettings(max_new_tokens=ctx.profile.eval.max_new_tokens, temperature=0.0,
                              seed=ctx.seed, samples=1)


def _reusable(report_dir: Path, tasks, settings: GenerationSettings, limit: int | None,
              model_digest: str) -> str | None:
    """Why an earlier phase's reference evaluation cannot stand for this one (None: it can):
    the same teacher, task files (by digest), item counts and settings, or it is asked again."""
    if not (report_dir / "eval.json").is_file() or not (report_dir / "items.jsonl").is_file():
        return f"{report_dir} holds no evaluation"
    old = EvalReport.load(report_dir)
    if old.backend.get("model_digest") != model_digest:
        return "another teacher answered it"
    want = {t.name: (t.digest, len(t.items) if limit is None else min(limit, len(t.items)),
                     t.meta.get("prompt_version"), t.max_new_tokens) for t in tasks}
    have = {t["name"]: (t["digest"], t["n_items"], t.get("prompt_version"),
                        t.get("max_new_tokens")) for t in old.tasks}
    if want != have:
        return "its tasks, items, prompts or token budgets differ"
    as_stored = json.loads(json.dumps(settings.to_dict()))  # tuples are lists in eval.json
    if {k: v for k, v in old.settings.items() if k not in ("limit", "loglikelihood")} \
            != as_stored or old.settings.get("limit") != limit:
        return "its generation settings differ"
    return None


def reference_eval(ctx: PhaseContext, out_dir: Path, reuse: Path | None = None) -> bool:
    """The profile's reference model (its [teacher]) on the phase's own evaluation items:
    the same tasks, files and limit, greedy, the same verifiers, asked only through the
    OpenAI-compatible backend (cogumi.teacher.teacher_backend) and never shown a reference
    answer (the suite's prompts hold none). Per-item records go to out_dir. `reuse`: an
    input phase's reference evaluation, copied when it answered the same items with the same
    teacher and settings (phases talk through artifacts), else the teacher is asked again,
    through the content cache. Returns False, with a note, when the profile has no teacher:
    the metrics against the reference are then missing, and their gates with them."""
    import shutil

    from cogumi.teacher import teacher_backend, teacher_model_digest

    teacher = ctx.profile.teacher
    if teacher is None:
        ctx.notes.append("no [teacher] in this profile: the preference score and ties against "
                         "the reference model (*.preference_vs_reference, "
                         "*.ties_vs_reference) are not measured, and their gates are missing")
        return False
    cfg = ctx.profile.eval
    tasks = eval_tasks(ctx)
    settings = reference_settings(ctx)
    if reuse is not None:
        why = _reusable(reuse, tasks, settings, cfg.limit,
                        teacher_model_digest(teacher, ctx.root))
        if why is None:
            if out_dir.exists():
                shutil.rmtree(out_dir)
            shutil.copytree(reuse, out_dir)
            ctx.notes.append(f"reference model ({teacher.model}): its answers on the same items "
                             f"reused from {reuse.parent.name}/{reuse.name}")
            return True
        ctx.notes.append(f"reference model ({teacher.model}): asked again, not reused from "
                         f"{reuse.parent.name}/{reuse.name} ({why})")
    from cogumi.evaluation.backends.openai_backend import EndpointFailed
    from cogumi.teacher import TeacherUnavailable

    ctx.console.print(f"reference model {teacher.model}: answering the evaluation suite")
    try:
        with teacher_backend(teacher, cache_dir=teacher_cache(ctx), log_dir=ctx.work_dir,
                             root=ctx.root) as backend:
            report = evaluate(backend, tasks, settings, limit=cfg.limit,
                              cache_dir=eval_cache(ctx))
            usage = dict(backend.usage)
    except (EndpointFailed, TeacherUnavailable) as e:
        # The answers so far are cached (complete ones only): a rerun asks only the rest.
        raise PhaseInputError(f"{ctx.profile.source_file}: [teacher] {teacher.model}: {e}"
                              ) from None
    report.summary["teacher_usage"] = usage
    report.write(out_dir)
    ctx.notes.append(f"reference model ({teacher.model}): {usage['requests']} answers, "
                     f"{usage['cache_hits']} from the teacher cache, "
                     f"{usage['requests'] - usage['cache_hits']} asked "
                     f"({usage['prompt_tokens']} + {usage['completion_tokens']} tokens, "
                     f"${usage['cost_usd']:.4f})"
                     + (" (every task from the evaluation cache)" if report.cached else ""))
    for note in report.limits():
        if note not in ctx.notes:
            ctx.notes.append(note)
    return True


def compare_with_published(ctx: PhaseContext, base_dir: Path, reference_dir: Path | None
                           ) -> None:
    """A report table of the base model (the model its makers published figures for, before
    any phase changed it) and the reference model next to the profile's published figures
    (cogumi.evaluation.published), with a note for each figure outside our interval."""
    from cogumi.evaluation.published import published_rows, published_table

    profile = ctx.profile
    rows = published_rows(f"{profile.model.parts or profile.model.package or 'base'} (base)",
                          base_dir, profile.model.published)
    if reference_dir is not None and profile.teacher is not None:
        rows += published_rows(f"{profile.teacher.model} (reference)", reference_dir,
                               profile.teacher.published)
    if not rows:
        return
    ctx.add_report_section(
        "### Against the makers' published figures\n\n" + published_table(rows) + "\n\n"
        "Ours: greedy, this profile's prompts and chat template, on the items evaluated here "
        "(eval.limit may make them a sample). A published figure outside our interval means "
        "our setting differs from the makers' (prompt, template, extraction, shots, sample): "
        "a finding to look into, not a gate.")
    for r in rows:
        if r.outside:
            ctx.notes.append(f"{r.model} on {r.task}: ours {r.ours:.3f} [{r.lower:.3f}, "
                             f"{r.upper:.3f}] over {r.n} items, published {r.published:.3f} "
                             f"(outside our interval)")


def judge_against_reference(ctx: PhaseContext, student_dir: Path, reference_dir: Path
                            ) -> dict:
    """The seed's preference score and ties against the reference model, item by item
    (cogumi.evaluation.reference), with their table in the report."""
    from cogumi.evaluation.reference import (
        attainability,
        attainability_table,
        preference_table,
        versus_reference,
    )
    from cogumi.gates import resolve_gates

    metrics, rows = versus_reference(student_dir, reference_dir)
    name = ctx.profile.teacher.model if ctx.profile.teacher else "reference"
    ctx.add_report_section(f"### Against the reference model ({name}), item by item\n\n"
                           + preference_table(rows, name))
    # Which scores this phase's gates against the reference allow at all, given the
    # reference's own answers: a gate no student could pass is said to be one, not only
    # failed.
    found = attainability(rows, resolve_gates(ctx.phase.id, ctx.profile, ctx.root,
                                              ctx.runs_dir))
    if found:
        ctx.add_report_section("### Scores these gates allow against this reference\n\n"
                               + attainability_table(found, rows))
    for a in found:
        if not a.attainable:
            ctx.notes.append(f"{a.task}: no student score passes {' and '.join(a.gates)} "
                             f"against a reference right on {a.reference_right}/{a.n} of "
                             f"these items")
    return metrics
