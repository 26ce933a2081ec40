"""A model against its input on the same items, and whether a score is above chance.

Every phase that changes the model compares its evaluation with its input's, item by item
(``compare_with_input``): for each headline score of the suite, the mean per-item change and
its paired interval (cogumi.stats.paired_difference: exact McNemar for right/wrong items,
the paired bootstrap for shares of k generations; parameters in gates/statistics.toml). The gate
``vs_input.worst_delta_upper >= 0`` then says "not significantly worse on any task".

``capability`` says whether a score means anything: the lower end of its Wilson interval
minus the task's chance level, gated ``> 0`` wherever the suite is measured.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from cogumi.stats import Interval, paired_difference, wilson_interval

from .metrics import mean

SUITE = {"math.accuracy": "math", "mmlu.accuracy": "mmlu", "code.pass@1": "code",
         "gsm8k.accuracy": "gsm8k", "humaneval.pass@1": "humaneval", "gpqa.accuracy": "gpqa",
         "bfcl.accuracy": "bfcl"}
"""The suite's headline scores and the task each is measured on (one score per item: the
share of its k generations the verifier accepts; greedy evaluation has k = 1). A profile's
[eval] keys are the task names."""

CHANCE = {"math.accuracy": 0.0, "mmlu.accuracy": 0.25, "code.pass@1": 0.0,
          "gsm8k.accuracy": 0.0, "humaneval.pass@1": 0.0, "gpqa.accuracy": 0.25,
          "bfcl.accuracy": 0.0}
"""What guessing scores: MMLU and GPQA are 4-option multiple choice; arithmetic answers,
code and function calls must be produced, so guessing scores nothing (BFCL's categories
here all need a call: its irrelevance categories, where abstaining scores, are not
supported)."""


def item_scores(eval_dir: Path) -> dict[str, dict[str, float]]:
    """task -> item_id -> share of the item's generations the verifier accepted, read once
    from the folder's items.jsonl."""
    path = Path(eval_dir) / "items.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; no per-item evaluation to compare")
    scores: dict[str, dict[str, float]] = {}
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        rec = json.loads(line)
        task = scores.setdefault(rec["task"], {})
        if rec["item_id"] in task:
            raise ValueError(f"{path}:{n}: item {rec['item_id']!r} of task {rec['task']} "
                             f"appears twice")
        verdicts = rec.get("verdicts") or [False]
        task[rec["item_id"]] = sum(bool(v) for v in verdicts) / len(verdicts)
    return scores


def compare_with_input(before_dir: Path, after_dir: Path, prefix: str = "vs_input"
                       ) -> tuple[dict[str, float], list[dict]]:
    """Paired change of every suite score between two evaluations of the same items.

    Returns (metrics, rows): metrics ``{prefix}.{score}.delta|delta_lower|delta_upper`` and
    ``{prefix}.worst_delta_upper`` (the smallest upper bound: below 0 means some task got
    significantly worse); rows for the report. A task evaluated on one side only is an error:
    a comparison that silently drops a task would pass by omission."""
    before_scores, after_scores = item_scores(before_dir), item_scores(after_dir)
    if set(before_scores) != set(after_scores):
        raise ValueError(f"{before_dir} and {after_dir} evaluate different tasks "
                         f"({sorted(before_scores)} vs {sorted(after_scores)})")
    metrics: dict[str, float] = {}
    rows = []
    for score, task in SUITE.items():
        if task not in before_scores:
            continue
        before, after = before_scores[task], after_scores[task]
        iv = paired_difference(before, after)
        metrics[f"{prefix}.{score}.delta"] = iv.point
        metrics[f"{prefix}.{score}.delta_lower"] = iv.lower
        metrics[f"{prefix}.{score}.delta_upper"] = iv.upper
        rows.append({"score": score, "n": iv.n, "before": mean(list(before.values())),
                     "after": mean(list(after.values())),
                     **{k: v for k, v in iv.to_dict().items() if k != "n"}})
    uppers = [r["upper"] for r in rows]
    metrics[f"{prefix}.worst_delta_upper"] = min(uppers) if uppers else math.nan
    return metrics, rows


def capability(eval_dir: Path) -> tuple[dict[str, float], list[dict]]:
    """``{score}.lower95_above_chance``: Wilson lower bound minus chance, per suite score."""
    metrics: dict[str, float] = {}
    rows = []
    present = item_scores(eval_dir)
    for score, task in SUITE.items():
        if task not in present:
            continue
        scores = present[task]
        iv: Interval = wilson_interval(sum(scores.values()), len(scores))
        metrics[f"{score}.lower95_above_chance"] = iv.lower - CHANCE[score]
        rows.append({"score": score, "chance": CHANCE[score], **iv.to_dict()})
    return metrics, rows


def paired_table(rows: list[dict], against: str) -> str:
    """Markdown: each score before and after, the mean paired change and its interval."""
    if not rows:
        return ""
    lines = [f"| score | items | {against} | this phase | change | 95% interval | verdict |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        verdict = ("better" if r["lower"] > 0 else "worse" if r["upper"] < 0
                   else "no significant change")
        lines.append(f"| {r['score']} | {r['n']} | {r['before']:.3f} | {r['after']:.3f} | "
                     f"{r['point']:+.3f} | [{r['lower']:+.3f}, {r['upper']:+.3f}] | {verdict} |")
    lines.append("")
    lines.append("Paired on the same items: "
                 + "; ".join(f"{r['score']}: {r['method']}" for r in rows) + ".")
    return "\n".join(lines)


def capability_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    lines = ["| score | items | value | 95% interval | chance | above chance |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['score']} | {r['n']} | {r['point']:.3f} | "
                     f"[{r['lower']:.3f}, {r['upper']:.3f}] | {r['chance']:g} | "
                     f"{'yes' if r['lower'] > r['chance'] else '**no**'} |")
    return "\n".join(lines)
