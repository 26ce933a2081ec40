"""Wins / ties / losses against a reference: the seed's "ties", with the rule that decided
each item on record.

* Verifiable items (math, mmlu, code), rule ``verifier``: each side's score is its share
  of correct samples on the item (with k=1: right or wrong). Higher wins; equal is a tie
  (``tie_both_right``, ``tie_both_wrong`` or ``tie_equal`` for equal partial scores).
* Open-ended prompts, rule ``judge``: an LLM judge (any :class:`Backend`, normally the
  OpenAI-compatible one) is asked twice with the answers' order swapped. A winner counts
  only when both orders name the same answer; a judge that contradicts itself, or says
  tie, gives a tie (``judge_inconsistent`` / ``judge_tie``); an unparseable verdict is a
  tie too (``judge_unparseable``), and every raw verdict is kept.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backends.base import Backend
from .runner import EvalReport
from .settings import GenerationRequest

JUDGE_PROMPT = (
    "You are comparing two answers to the same request. Judge which answer is more "
    "correct and helpful. Reply with exactly one line: 'Verdict: A', 'Verdict: B' or "
    "'Verdict: tie'.\n\n[Request]\n{prompt}\n\n[Answer A]\n{a}\n\n[Answer B]\n{b}\n"
)


@dataclass
class Comparison:
    records: list[dict[str, Any]]
    metrics: dict[str, float]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def definitions(self) -> dict[str, str]:
        return {
            "{task}.wins": "share of matched items where ours scores higher than the reference",
            "{task}.ties": "share of matched items with equal scores (verifier) or no "
            "consistent judge preference (judge, asked in both orders)",
            "{task}.losses": "share of matched items where the reference scores higher",
        }


def _load(r: EvalReport | str | Path) -> EvalReport:
    return r if isinstance(r, EvalReport) else EvalReport.load(r)


def compare_verified(ours: EvalReport | str | Path, reference: EvalReport | str | Path,
                     tasks: Sequence[str] | None = None) -> Comparison:
    """Per-item verdict comparison of two reports of the same task files."""
    ours, reference = _load(ours), _load(reference)
    ref_index = {(r["task"], r["item_id"]): r for r in reference.records}
    records = []
    seen = set()
    for r in ours.records:
        if tasks is not None and r["task"] not in tasks:
            continue
        key = (r["task"], r["item_id"])
        seen.add(key)
        other = ref_index.get(key)
        rec = {"task": r["task"], "item_id": r["item_id"], "rule": "verifier"}
        if other is None:
            rec.update(result="unmatched", detail="item missing from the reference report")
            records.append(rec)
            continue
        a = _score(r)
        b = _score(other)
        if a > b:
            res, detail = "win", "ours right more often"
        elif a < b:
            res, detail = "loss", "reference right more often"
        elif a == 1.0:
            res, detail = "tie", "tie_both_right"
        elif a == 0.0:
            res, detail = "tie", "tie_both_wrong"
        else:
            res, detail = "tie", "tie_equal"
        rec.update(result=res, detail=detail, ours=a, reference=b)
        records.append(rec)
    for key in ref_index:
        if key not in seen and (tasks is None or key[0] in tasks):
            records.append({"task": key[0], "item_id": key[1], "rule": "verifier",
                            "result": "unmatched", "detail": "item missing from our report"})
    return _summarise(records)


def _score(rec: dict[str, Any]) -> float:
    v = rec.get("verdicts") or [False]
    return sum(bool(x) for x in v) / len(v)


def _parse_verdict(text: str) -> str | None:
    found = re.findall(r"verdict\s*:\s*\**\s*(A|B|tie)\b", text, re.IGNORECASE)
    if not found:
        return None
    v = found[-1]
    return "tie" if v.lower() == "tie" else v.upper()


def compare_judged(
    judge: Backend,
    items: Sequence[dict[str, str]],
    task: str = "open",
    max_new_tokens: int = 64,
) -> Comparison:
    """``items``: dicts with ``item_id``, ``prompt``, ``ours``, ``reference``. The judge is
    asked twice per item (ours as A, then ours as B) at temperature 0."""
    requests = []
    for it in items:
        for ours_first in (True, False):
            a, b = (it["ours"], it["reference"]) if ours_first else (it["reference"], it["ours"])
            content = JUDGE_PROMPT.format(prompt=it["prompt"], a=a, b=b)
            requests.append(GenerationRequest(messages=({"role": "user", "content": content},),
                                              max_new_tokens=max_new_tokens, temperature=0.0))
    outs = judge.generate(requests)
    records = []
    for i, it in enumerate(items):
        raw = []
        picks = []
        for j, ours_first in enumerate((True, False)):
            out = outs[2 * i + j]
            text = out.text if isinstance(out.text, str) else out.text.decode("utf-8", "replace")
            raw.append(text)
            v = _parse_verdict(text) if not out.error else None
            if v is None:
                picks.append(None)
            elif v == "tie":
                picks.append("tie")
            else:
                picks.append("ours" if (v == "A") == ours_first else "reference")
        if None in picks:
            res, detail = "tie", "judge_unparseable"
        elif picks[0] == picks[1] == "ours":
            res, detail = "win", "judge_consistent"
        elif picks[0] == picks[1] == "reference":
            res, detail = "loss", "judge_consistent"
        elif picks[0] == picks[1] == "tie":
            res, detail = "tie", "judge_tie"
        else:
            res, detail = "tie", "judge_inconsistent"
        records.append({"task": task, "item_id": it["item_id"], "rule": "judge", "result": res,
                        "detail": detail, "judge_raw": raw, "judge_picks": picks})
    return _summarise(records)


def _summarise(records: list[dict[str, Any]]) -> Comparison:
    counts: dict[str, Counter] = {}
    for r in records:
        counts.setdefault(r["task"], Counter())[r["result"]] += 1
    metrics: dict[str, float] = {}
    for task, c in counts.items():
        matched = c["win"] + c["tie"] + c["loss"]
        for name in ("win", "tie", "loss"):
            metrics[f"{task}.{name}s" if name != "loss" else f"{task}.losses"] = (
                c[name] / matched if matched else float("nan"))
        metrics[f"{task}.unmatched"] = float(c["unmatched"])
    return Comparison(records=records, metrics=metrics,
                      counts={t: dict(c) for t, c in counts.items()})
