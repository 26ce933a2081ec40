"""The independent cross-check: our benchmark files as lm-eval tasks, run through
``lm_eval.simple_evaluate`` on the same checkpoint, and compared with our numbers.

Each task becomes a YAML over the *same local file* (``dataset_path: json``), with the
same instruction as a Jinja ``doc_to_text`` and lm-eval's own chat-template handling:

* MMLU -> ``multiple_choice`` with choices " A", " B", ... after the assistant prefix
  ``gen_prefix: "The answer is"``: lm-eval's ``acc`` must equal our ``accuracy_loglik``
  and its per-option log-likelihoods ours.
* MATH -> ``generate_until`` (greedy, the same stop strings): lm-eval's generations must
  equal ours, and its ``exact_match`` (the final answer, found by lm-eval's own regex filter
  with our extractor's rules, against the solution's boxed answer, extracted by Jinja) is
  compared with our math-verify score.
* BOS: lm-eval asks the tokenizer to add it (``add_special_tokens``), so a profile with
  ``model.add_bos`` gets a tokenizer that adds it (cogumi.models.load_tokenizer).

"Agrees" means what issue 3 asks: the two scores differ by at most one standard error of
lm-eval's estimate (the sample standard error over the items, as lm-eval reports
``*_stderr``; computed here because ``bootstrap_iters=0`` makes lm-eval skip it).
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


_NUM = r"(-?[0-9][0-9,]*(?:\.[0-9]+)?(?:/[0-9]+)?)"
#: The final answer as our extractor finds it (cogumi.evaluation.answers), in lm-eval's own
#: regex filter: the last \boxed{N}; else the number after the last "answer is" / "answer:";
#: else the last number in the text. One anchored match whose first non-empty group wins,
#: so the branches keep that priority (a model that answers "52 - 17 = 35 marbles." is
#: scored on 35 by both sides, not on a phrase it never writes).
MATH_ANSWER_REGEX = (r"(?si)^(?:.*\\boxed\{\s*" + _NUM
                     + r"|.*answer\s*(?:is|:)[ \t:]*\$?\s*" + _NUM
                     + r"|.*(?<![0-9,.\-])" + _NUM + ")")


def _q(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)  # JSON strings are valid YAML scalars


def task_yaml(task: Task, max_new_tokens: int, stop: tuple[str, ...] = ()) -> str:
    name = f"cogumi_{task.name}"
    head = [
        f"task: {name}",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {_q(str(Path(task.path).resolve()))}",
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
        text = MATH_INSTRUCTION.format(problem="{{ problem }}")
        body = [
            "output_type: generate_until",
            f"doc_to_text: {_q(text)}",
            # The boxed answer of the reference solution, extracted by Jinja (not our code).
            "doc_to_target: \"{{ solution.split('boxed{')[-1].split('}')[0] | trim }}\"",
            "generation_kwargs:",
            f"  until: {json.dumps(list(stop))}",
            f"  max_gen_toks: {int(max_new_tokens)}",
            "  do_sample: false",
            "  temperature: 0.0",
            "filter_list:",
            "  - name: final_answer",
            "    filter:",
            "      - function: regex",
            "        regex_pattern: " + _q(MATH_ANSWER_REGEX),
            "      - function: take_first",
            "metric_list:",
            "  - metric: exact_match",
            "    regexes_to_ignore: [\",\"]",
        ]
    else:
        raise ValueError(f"no lm-eval form for {task.kind!r} tasks (code is scored by our sandbox)")
    return "\n".join(head + body) + "\n"


def write_lm_eval_tasks(tasks: list[Task], out_dir: str | Path, max_new_tokens: int = 64,
                        stop: tuple[str, ...] = ()) -> list[str]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for t in tasks:
        (out / f"cogumi_{t.name}.yaml").write_text(task_yaml(t, max_new_tokens, stop))
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


def cross_check(report: EvalReport, lm_results: dict[str, Any], atol: float = 1e-3) -> dict[str, Any]:
    """Item by item, our report against lm-eval's samples. Returns per task: both scores,
    the number of items compared, and every disagreement (prompt, log-likelihood,
    generation) found."""
    out: dict[str, Any] = {}
    for t in report.tasks:
        name = f"cogumi_{t['name']}"
        if name not in lm_results.get("samples", {}):
            continue
        ours = [r for r in report.records if r["task"] == t["name"] and r.get("prompt") is not None]
        samples = sorted(lm_results["samples"][name], key=lambda s: s["doc_id"])
        diffs: list[str] = []
        res = lm_results["results"][name]
        entry: dict[str, Any] = {"items": min(len(ours), len(samples))}
        for rec, s in zip(ours, samples, strict=False):
            args = s["arguments"]
            if t["kind"] == "mmlu":
                ctx = args[0][0] if isinstance(args[0], (list, tuple)) else args["gen_args_0"]["arg_0"]
                if ctx != rec.get("loglik_context"):
                    diffs.append(f"{rec['item_id']}: prompt differs")
                lm_ll = [float(r[0][0]) if isinstance(r[0], (list, tuple)) else float(r[0])
                         for r in s["resps"]]
                for i, (a, b) in enumerate(zip(rec.get("loglik", []), lm_ll, strict=False)):
                    if not math.isclose(a, b, abs_tol=atol, rel_tol=1e-4):
                        diffs.append(f"{rec['item_id']}: option {i} log-likelihood {a:.5f} vs {b:.5f}")
            else:
                ctx = args[0][0] if isinstance(args[0], (list, tuple)) else args["gen_args_0"]["arg_0"]
                if ctx != rec["prompt"]:
                    diffs.append(f"{rec['item_id']}: prompt differs")
                gen = s["resps"][0][0] if isinstance(s["resps"][0], list) else s["resps"][0]
                if gen != rec["generations"][0]:
                    diffs.append(f"{rec['item_id']}: generation differs: {gen[:60]!r} vs "
                                 f"{rec['generations'][0][:60]!r}")
        if t["kind"] == "mmlu":
            entry["ours"] = report.metrics.get(f"{t['name']}.accuracy_loglik")
            entry["lm_eval_metric"], per_item = "acc,none", [s.get("acc") for s in samples]
        else:
            entry["ours"] = report.metrics.get(f"{t['name']}.accuracy")
            entry["lm_eval_metric"] = "exact_match,final_answer"
            per_item = [s.get("exact_match") for s in samples]
        entry["lm_eval"] = res.get(entry["lm_eval_metric"])
        entry["lm_eval_stderr"] = sample_stderr([float(x) for x in per_item if x is not None])
        # Plain floats and bools: lm-eval's numbers can be numpy scalars, which json refuses.
        for key in ("ours", "lm_eval"):
            entry[key] = None if entry[key] is None else float(entry[key])
        entry["within_one_stderr"] = bool(
            entry["ours"] is not None and entry["lm_eval"] is not None
            and abs(entry["ours"] - entry["lm_eval"]) <= entry["lm_eval_stderr"] + 1e-12)
        entry["disagreements"] = diffs
        out[t["name"]] = entry
    return out
