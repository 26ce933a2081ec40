"""The independent cross-check: our benchmark files as lm-eval tasks, run through
``lm_eval.simple_evaluate`` on the same checkpoint, and compared with our numbers.

Each task becomes a YAML over the *same local file* (``dataset_path: json``), with the
same instruction as a Jinja ``doc_to_text`` and lm-eval's own chat-template handling:

* MMLU -> ``multiple_choice`` with choices " A", " B", ... after the assistant prefix
  ``gen_prefix: "The answer is"``: lm-eval's ``acc`` must equal our ``accuracy_loglik``
  and its per-option log-likelihoods ours.
* MATH -> ``generate_until`` (greedy, the same stop strings): lm-eval's generations must
  equal ours. Its ``exact_match`` uses lm-eval's own shipped filter (gsm8k-cot's
  "strict-match", "The answer is N.") against the solution's boxed answer, extracted by
  Jinja; where its verdict and ours (our extractor, math-verify) differ on the same
  generation, that is reported as an extraction difference, not hidden.
* GSM8K -> the same, over the GSM8K file itself: the question in our instruction, and the
  target by lm-eval's own gsm8k-cot ``doc_to_target`` (the number after ``####``).
* GPQA -> the MMLU form over its items as we permuted them, written as JSON lines next to
  the YAML (the CSV holds the unpermuted answers; lm-eval's own GPQA tasks read a gated
  hub dataset and shuffle with their own seed).
* A task read from a hub dataset -> its form above, over the rows we read, written as JSON
  lines next to the YAML (lm-eval then needs no hub access, and reads the same revision).
* BOS: lm-eval asks the tokenizer to add it (``add_special_tokens``), so a profile with
  ``model.add_bos`` gets a tokenizer that adds it (cogumi.models.load_tokenizer).

The gated check is item level (``item_disagreements``, see :func:`cross_check`). Also
reported: whether the two scores differ by at most one standard error of lm-eval's
estimate (the sample standard error over the items, as lm-eval reports ``*_stderr``;
computed here because ``bootstrap_iters=0`` makes lm-eval skip it).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from .runner import EvalReport
from .tasks import MATH_INSTRUCTION, MC_ANSWER_PREFIX, MMLU_INSTRUCTION, Task

_OPTIONS_JINJA = ("{% for c in choices %}{{ 'ABCDEFGHIJ'[loop.index0] }}. {{ c }}"
                  "{% if not loop.last %}\n{% endif %}{% endfor %}")


#: lm-eval's own scoring of a final numeric answer, read from the task file lm-eval ships
#: (not copied here): gsm8k-cot's "strict-match" filter, the regex "The answer is N." that
#: matches our instruction's requested last line, and that task's exact_match settings.
#: Where it and our extractor (cogumi.evaluation.answers) reach different verdicts on the
#: same generation, cross_check reports it as an extraction difference: a finding about the
#: two extractors, not a disagreement between the runs.
MATH_SCORING_SOURCE = ("tasks/gsm8k/gsm8k-cot.yaml", "strict-match")


def lm_eval_math_scoring() -> dict[str, Any]:
    """The filter and metric list of :data:`MATH_SCORING_SOURCE`, from the installed lm-eval."""
    import importlib.resources

    import yaml

    rel, filter_name = MATH_SCORING_SOURCE
    path = importlib.resources.files("lm_eval").joinpath(rel)
    spec = yaml.safe_load(path.read_text())
    found = [f for f in spec.get("filter_list", []) if f.get("name") == filter_name]
    if not found:
        raise ValueError(f"{path}: no filter named {filter_name!r} in filter_list "
                         f"(lm-eval changed its gsm8k-cot task?)")
    return {"source": f"lm_eval/{rel}", "filter": found[0], "metric_list": spec["metric_list"],
            "doc_to_target": spec["doc_to_target"]}


def _q(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)  # JSON strings are valid YAML scalars


def task_yaml(task: Task, max_new_tokens: int, stop: tuple[str, ...] = (),
              data_file: str | Path | None = None) -> str:
    """The lm-eval YAML of a task, over its own file (or ``data_file``: GPQA's items as we
    permuted them, :func:`write_lm_eval_tasks`)."""
    name = f"cogumi_{task.name}"
    head = [
        f"task: {name}",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {_q(str(Path(data_file or task.path).resolve()))}",
        "test_split: test",
    ]
    if task.kind == "mmlu":
        text = MMLU_INSTRUCTION.format(subject="{{ subject | replace('_', ' ') }}",
                                       question="{{ question }}", options=_OPTIONS_JINJA)
        body = [
            "output_type: multiple_choice",
            f"doc_to_text: {_q(text)}",
            "doc_to_choice: \"{{ ['A','B','C','D','E','F','G','H','I','J'][:choices|length] }}\"",
            "doc_to_target: answer",
            f"gen_prefix: {_q(MC_ANSWER_PREFIX)}",
            "target_delimiter: \" \"",
            "metric_list:",
            "  - metric: acc",
        ]
    elif task.kind == "math":
        scoring = lm_eval_math_scoring()
        if task.benchmark == "gsm8k":
            text = MATH_INSTRUCTION.format(problem="{{ question }}")
            target = scoring["doc_to_target"]  # lm-eval's own: the number after '####'
        else:
            text = MATH_INSTRUCTION.format(problem="{{ problem }}")
            # The boxed answer of the reference solution, extracted by Jinja (not our code).
            target = "{{ solution.split('boxed{')[-1].split('}')[0] | trim }}"
        body = [
            "output_type: generate_until",
            f"doc_to_text: {_q(text)}",
            f"doc_to_target: {_q(target)}",
            "generation_kwargs:",
            f"  until: {json.dumps(list(stop))}",
            f"  max_gen_toks: {int(max_new_tokens)}",
            "  do_sample: false",
            "  temperature: 0.0",
            # JSON is YAML: lm-eval's own filter and metric settings, as it ships them.
            f"filter_list: {json.dumps([scoring['filter']])}",
            f"metric_list: {json.dumps(scoring['metric_list'])}",
        ]
    else:
        raise ValueError(f"no lm-eval form for {task.kind!r} tasks (code is scored by our "
                         f"sandbox, tool calls by BFCL's checker)")
    return "\n".join(head + body) + "\n"


def write_lm_eval_tasks(tasks: list[Task], out_dir: str | Path, max_new_tokens: int = 64,
                        stop: tuple[str, ...] = ()) -> list[str]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for t in tasks:
        data_file = None
        if t.benchmark == "gpqa":  # lm-eval reads the items as we permuted them
            data_file = out / f"cogumi_{t.name}.items.jsonl"
            data_file.write_text("".join(
                json.dumps({k: it.fields[k] for k in ("id", "question", "subject", "choices",
                                                      "answer")}, ensure_ascii=False) + "\n"
                for it in t.items if it.malformed is None))
        elif t.meta.get("hub") or t.meta.get("id_range"):
            # lm-eval reads the rows we read (a hub dataset's, or an id range's of a file),
            # from a local file
            data_file = out / f"cogumi_{t.name}.items.jsonl"
            data_file.write_text("".join(
                json.dumps(it.fields, ensure_ascii=False, default=str) + "\n"
                for it in t.items if it.malformed is None))
        budget = t.max_new_tokens or max_new_tokens  # the task's own, where it has one
        (out / f"cogumi_{t.name}.yaml").write_text(task_yaml(t, budget, stop, data_file))
        names.append(f"cogumi_{t.name}")
    return names


def run_lm_eval(model: Any, tokenizer: Any, tasks: list[Task], work_dir: str | Path, *,
                max_new_tokens: int = 64, limit: int | None = None, batch_size: int = 16,
                add_bos: bool = False, stop: tuple[str, ...] = ()) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` with our tasks on an in-memory HF model (zero-shot, chat
    template applied, samples logged). Offline: datasets only read the local files."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    names = write_lm_eval_tasks(tasks, Path(work_dir) / "tasks", max_new_tokens, stop)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
              add_bos_token=add_bos, max_length=getattr(model.config, "max_position_embeddings", 2048))
    # include_defaults=False: index only our YAMLs, not the thousands lm-eval ships.
    manager = TaskManager(include_path=str(Path(work_dir) / "tasks"), include_defaults=False)
    return simple_evaluate(model=lm, tasks=names, task_manager=manager,
                           num_fewshot=0, apply_chat_template=True, log_samples=True, limit=limit,
                           bootstrap_iters=0)


def sample_stderr(scores: list[float]) -> float:
    """Standard error of a mean of per-item scores (sample std / sqrt(n)), lm-eval's
    ``mean_stderr``; 0 for fewer than two items."""
    n = len(scores)
    if n < 2:
        return 0.0
    mu = sum(scores) / n
    return math.sqrt(sum((x - mu) ** 2 for x in scores) / (n - 1) / n)


#: Log-likelihoods are compared within this tolerance: the two sides batch and pad the
#: same token ids differently, which moves float32 sums in their last digits.
LOGLIK_ABS_TOL, LOGLIK_REL_TOL = 1e-3, 1e-4


def _context(sample: dict[str, Any]) -> str:
    args = sample["arguments"]
    return args[0][0] if isinstance(args[0], (list, tuple)) else args["gen_args_0"]["arg_0"]


def _first(x: Any) -> Any:
    return x[0] if isinstance(x, (list, tuple)) else x


def _argmax(xs: list[float]) -> int | None:
    return max(range(len(xs)), key=lambda i: xs[i]) if xs else None


def cross_check(report: EvalReport, lm_results: dict[str, Any], atol: float = LOGLIK_ABS_TOL,
                rtol: float = LOGLIK_REL_TOL) -> dict[str, Any]:
    """Item by item, our report against lm-eval's samples.

    An item *disagrees* when something that must be identical for the same checkpoint and
    files is not: the rendered prompt; for MMLU each option's log-likelihood (within
    ``atol``/``rtol``) and the chosen option; for MATH the greedy generation's text; or the
    item is missing on one side. ``item_disagreements`` counts those items (the gate).

    An *extraction difference* is a MATH item whose generation is identical on both sides
    but whose verdict is not: lm-eval's filter (:data:`MATH_SCORING_SOURCE`) with its
    exact_match, against our extractor with math-verify. Reported, not gated: it measures
    the two extractors, not the two runs.

    The scores and whether they are within one standard error of lm-eval's estimate are
    reported per task as well."""
    tasks: dict[str, Any] = {}
    extraction: list[dict[str, Any]] = []
    for t in report.tasks:
        if t["kind"] not in ("math", "mmlu"):
            continue  # no lm-eval form (task_yaml)
        name = f"cogumi_{t['name']}"
        ours = [r for r in report.records if r["task"] == t["name"] and r.get("prompt") is not None]
        # A task lm-eval did not run is every one of its items missing there, not a pass.
        samples = sorted(lm_results.get("samples", {}).get(name, []), key=lambda s: s["doc_id"])
        res = lm_results.get("results", {}).get(name, {})
        disagreements: list[dict[str, Any]] = []
        for rec, s in zip(ours, samples, strict=False):
            why: list[str] = []
            if t["kind"] == "mmlu":
                if _context(s) != rec.get("loglik_context"):
                    why.append("prompt differs")
                lm_ll = [float(_first(r[0]) if isinstance(r[0], (list, tuple)) else r[0])
                         for r in s["resps"]]
                our_ll = list(rec.get("loglik", []))
                if len(our_ll) != len(lm_ll):
                    why.append(f"{len(our_ll)} option log-likelihoods vs {len(lm_ll)}")
                for i, (a, b) in enumerate(zip(our_ll, lm_ll, strict=False)):
                    if not math.isclose(a, b, abs_tol=atol, rel_tol=rtol):
                        why.append(f"option {i} log-likelihood {a:.5f} vs {b:.5f}")
                a_best, b_best = _argmax(our_ll), _argmax(lm_ll)
                if a_best != b_best:
                    why.append(f"chosen option {a_best} vs {b_best}")
            else:
                if _context(s) != rec["prompt"]:
                    why.append("prompt differs")
                gen = _first(s["resps"][0])
                ours_gen = rec["generations"][0] if rec["generations"] else None
                if gen != ours_gen:
                    why.append(f"generation differs: {str(gen)[:60]!r} vs {str(ours_gen)[:60]!r}")
                elif float(s.get("exact_match", 0.0)) != float(bool(rec["verdicts"][0])):
                    extraction.append({
                        "task": t["name"], "item_id": rec["item_id"], "generation": gen,
                        "lm_eval_extracted": _first(s.get("filtered_resps")),
                        "lm_eval_target": s.get("target"),
                        "lm_eval_correct": bool(float(s.get("exact_match", 0.0))),
                        "ours_extracted": rec["extracted"][0],
                        "ours_rule": rec["extraction_rules"][0],
                        "ours_reference": rec.get("reference"),
                        "ours_correct": bool(rec["verdicts"][0])})
            if why:
                disagreements.append({"item_id": rec["item_id"], "differences": why})
        for rec in ours[len(samples):]:
            disagreements.append({"item_id": rec["item_id"], "differences": ["not in lm-eval's samples"]})
        for s in samples[len(ours):]:
            disagreements.append({"item_id": f"lm-eval doc {s['doc_id']}",
                                  "differences": ["not in our records"]})
        entry: dict[str, Any] = {"items": min(len(ours), len(samples)),
                                 "items_ours": len(ours), "items_lm_eval": len(samples)}
        if t["kind"] == "mmlu":
            entry["ours"] = report.metrics.get(f"{t['name']}.accuracy_loglik")
            entry["lm_eval_metric"], per_item = "acc,none", [s.get("acc") for s in samples]
        else:
            entry["ours"] = report.metrics.get(f"{t['name']}.accuracy")
            entry["lm_eval_metric"] = f"exact_match,{MATH_SCORING_SOURCE[1]}"
            per_item = [s.get("exact_match") for s in samples]
        entry["lm_eval"] = res.get(entry["lm_eval_metric"])
        entry["lm_eval_stderr"] = sample_stderr([float(x) for x in per_item if x is not None])
        # Plain floats and bools: lm-eval's numbers can be numpy scalars, which json refuses.
        for key in ("ours", "lm_eval"):
            entry[key] = None if entry[key] is None else float(entry[key])
        entry["within_one_stderr"] = bool(
            entry["ours"] is not None and entry["lm_eval"] is not None
            and abs(entry["ours"] - entry["lm_eval"]) <= entry["lm_eval_stderr"] + 1e-12)
        entry["item_disagreements"] = len(disagreements)
        entry["disagreements"] = disagreements
        tasks[t["name"]] = entry
    return {
        "item_disagreements": sum(e["item_disagreements"] for e in tasks.values()),
        "loglik_tolerance": {"abs": atol, "rel": rtol},
        "math_scoring": {"lm_eval": f"lm_eval/{MATH_SCORING_SOURCE[0]}, filter "
                                    f"{MATH_SCORING_SOURCE[1]!r}, exact_match",
                         "ours": "cogumi.evaluation.answers.extract_math_answer, math-verify"},
        "extraction_differences": {"count": len(extraction), "items": extraction},
        "tasks": tasks,
    }
