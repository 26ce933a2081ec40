"""The student against the profile's reference model (its `[teacher]`) on the same items.

The seed's 1A/1B scores were (wins + half the ties) / items against GPT-4's own answers, and
its "ties" were mostly items both got right (shared/seed/ORIGIN_FINDINGS.md: 30 of its 35
MATH ties). Here each item is decided by the evaluation suite's verifier on both sides, greedy
(one generation each):

* win: the student right, the reference wrong; loss: the reverse;
* tie: the same verdict (both right or both wrong; the two are counted apart);
* ``preference`` = (wins + ties / 2) / n; ``ties`` = ties / n.

With right/wrong items, preference = 1/2 + (student accuracy - reference accuracy) / 2, so
its interval is the paired interval of that accuracy difference (exact McNemar,
cogumi.stats.paired_difference), mapped the same way: no second statistic to trust.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from cogumi.stats import paired_difference

from .paired import SUITE, item_scores


@dataclass(frozen=True)
class Preference:
    """One task's item-by-item comparison with the reference model."""
    task: str
    n: int
    wins: int
    losses: int
    ties_both_right: int
    ties_both_wrong: int
    student_accuracy: float
    reference_accuracy: float
    lower: float
    """The preference's paired 95 % interval (gates/statistics.toml's alpha)."""
    upper: float
    method: str

    @property
    def ties(self) -> int:
        return self.ties_both_right + self.ties_both_wrong

    @property
    def preference(self) -> float:
        return (self.wins + self.ties / 2) / self.n if self.n else math.nan

    @property
    def tie_share(self) -> float:
        return self.ties / self.n if self.n else math.nan

    def to_dict(self) -> dict:
        return {**asdict(self), "ties": self.ties, "preference": self.preference,
                "tie_share": self.tie_share}


def preference(task: str, student: dict[str, float], reference: dict[str, float]) -> Preference:
    """Item id -> 1.0 (right) / 0.0 (wrong) on each side, the same ids on both: a comparison
    on different items is refused (it would drop items silently)."""
    if set(student) != set(reference):
        only_s = sorted(set(student) - set(reference))[:3]
        only_r = sorted(set(reference) - set(student))[:3]
        raise ValueError(f"{task}: the student and the reference model were evaluated on "
                         f"different items (only the student: {only_s}, only the reference: "
                         f"{only_r})")
    bad = [i for side in (student, reference) for i, v in side.items() if v not in (0.0, 1.0)]
    if bad:
        raise ValueError(f"{task}: item {bad[0]!r} is not scored right/wrong (a greedy "
                         f"evaluation has one verdict per item)")
    ids = sorted(student)
    wins = sum(1 for i in ids if student[i] and not reference[i])
    losses = sum(1 for i in ids if reference[i] and not student[i])
    both_right = sum(1 for i in ids if student[i] and reference[i])
    n = len(ids)
    if n:
        diff = paired_difference(reference, student)  # student - reference, per item
        lower, upper, method = 0.5 + diff.lower / 2, 0.5 + diff.upper / 2, diff.method
    else:
        lower = upper = math.nan
        method = "no items"
    return Preference(task=task, n=n, wins=wins, losses=losses, ties_both_right=both_right,
                      ties_both_wrong=n - wins - losses - both_right,
                      student_accuracy=sum(student.values()) / n if n else math.nan,
                      reference_accuracy=sum(reference.values()) / n if n else math.nan,
                      lower=lower, upper=upper, method=method)


def versus_reference(student_dir: Path, reference_dir: Path
                     ) -> tuple[dict[str, float], list[Preference]]:
    """Every suite task both evaluations hold (items.jsonl in each folder), as metrics:
    ``<task>.preference_vs_reference`` (with ``_lower`` / ``_upper``),
    ``<task>.ties_vs_reference`` (the share), the counts ``<task>.wins_vs_reference``,
    ``.losses_vs_reference``, ``.ties_both_right_vs_reference``, and the reference's own
    score ``reference.<score>``. A task one side lacks is an error: a comparison that drops
    a task would pass by omission."""
    s, r = item_scores(student_dir), item_scores(reference_dir)
    tasks = [t for t in SUITE.values() if t in s or t in r]
    missing = [t for t in tasks if (t in s) != (t in r)]
    if missing:
        raise ValueError(f"{student_dir} and {reference_dir} evaluate different tasks "
                         f"({sorted(s)} vs {sorted(r)})")
    metrics: dict[str, float] = {}
    rows = []
    for score, task in SUITE.items():
        if task not in s:
            continue
        p = preference(task, s[task], r[task])
        rows.append(p)
        metrics[f"{task}.preference_vs_reference"] = p.preference
        metrics[f"{task}.preference_vs_reference_lower"] = p.lower
        metrics[f"{task}.preference_vs_reference_upper"] = p.upper
        metrics[f"{task}.ties_vs_reference"] = p.tie_share
        metrics[f"{task}.wins_vs_reference"] = float(p.wins)
        metrics[f"{task}.losses_vs_reference"] = float(p.losses)
        metrics[f"{task}.ties_both_right_vs_reference"] = float(p.ties_both_right)
        metrics[f"reference.{score}"] = p.reference_accuracy
    return metrics, rows


def preference_table(rows: list[Preference], reference: str) -> str:
    """Markdown: both models' scores side by side, the counts, preference and ties."""
    if not rows:
        return ""
    lines = [f"| task | items | this model | {reference} | wins | ties (both right / both "
             f"wrong) | losses | preference = (wins + ties/2) / n | 95% interval | ties / n |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for p in rows:
        lines.append(f"| {p.task} | {p.n} | {p.student_accuracy:.3f} | "
                     f"{p.reference_accuracy:.3f} | {p.wins} | {p.ties} ({p.ties_both_right} / "
                     f"{p.ties_both_wrong}) | {p.losses} | {p.preference:.3f} | "
                     f"[{p.lower:.3f}, {p.upper:.3f}] | {p.tie_share:.3f} |")
    lines.append("")
    lines.append("Each item decided by the suite's verifier on both sides (greedy, one answer "
                 "each): a win is this model right and the reference wrong, a tie the same "
                 "verdict. The interval is 1/2 + (the paired interval of the accuracy "
                 "difference) / 2 (in each method, \"gained\" counts the wins and \"lost\" "
                 "the losses): " + "; ".join(f"{p.task}: {p.method}" for p in rows) + ".")
    return "\n".join(lines)


# --------------------------------------------------------------------------- attainability

_REFERENCE_METRICS = ("preference_vs_reference", "ties_vs_reference")


@dataclass(frozen=True)
class Attainable:
    """Which student scores could pass one task's gates against the reference at all."""
    task: str
    n: int
    reference_right: int
    gates: tuple[str, ...]
    passing_right: tuple[int, ...]
    """Every count of items the student could get right (0..n) for which some arrangement
    of its right answers over the items passes all of `gates`."""

    @property
    def attainable(self) -> bool:
        return bool(self.passing_right)

    def describe(self) -> str:
        if not self.passing_right:
            return "no student score"
        lo, hi = self.passing_right[0] / self.n, self.passing_right[-1] / self.n
        return f"accuracy {lo:.3f}" if lo == hi else f"accuracy {lo:.3f} to {hi:.3f}"


def _reference_gates(task: str, gates: Iterable) -> list:
    """The gates among `gates` on this task's preference or ties against the reference."""
    return [g for g in gates if g.metric.split(".", 1)[0] == task
            and g.metric.rsplit(".", 1)[-1] in _REFERENCE_METRICS]


def attainable(task: str, n: int, reference_right: int, gates: Iterable) -> Attainable:
    """The student accuracies under which `gates` (cogumi.gates.Gate, on this task's
    preference_vs_reference and ties_vs_reference) can pass, decided by the reference's
    answers alone, before the student is judged.

    A student right on S of the n items, against a reference right on R, has
    wins - losses = S - R, so its preference (wins + ties/2)/n is fixed by S; the items
    where the two disagree, d = wins + losses, can be any of |S - R|, |S - R| + 2, ...
    up to min(S + R, 2n - S - R), and ties = n - d. So both gates' reachable values are
    exact for every S. Why: the seed's 1A/1B criteria were a judge's preferences; read
    against a reference on the same items they can ask for scores no model can have (1B's
    "math 65 %" with "ties < 30 %" against a reference right on 96 % needs a student both
    above 100 % and below 34 %), and the report says so instead of only failing."""
    gates = _reference_gates(task, gates)

    def passes(right: int, disagree: int) -> bool:
        wins, ties = (disagree + right - reference_right) // 2, n - disagree
        values = {"preference_vs_reference": (wins + ties / 2) / n,
                  "ties_vs_reference": ties / n}
        return all(g.check(values[g.metric.rsplit(".", 1)[-1]]) for g in gates)

    def disagreements(right: int) -> range:
        return range(abs(right - reference_right),
                     min(right + reference_right, 2 * n - right - reference_right) + 1, 2)

    passing = tuple(right for right in range(n + 1)
                    if any(passes(right, d) for d in disagreements(right)))
    return Attainable(task=task, n=n, reference_right=reference_right,
                      gates=tuple(g.describe() for g in gates), passing_right=passing)


def attainability(rows: list[Preference], gates: Iterable) -> list[Attainable]:
    """`attainable` for every task of `rows` that has a gate in force against the reference
    (waived gates left out: they decide nothing)."""
    gates = [g for g in gates if not g.waived]
    # The reference is right where both are, and where only it is (the losses).
    return [attainable(p.task, p.n, p.ties_both_right + p.losses, gates) for p in rows
            if p.n and _reference_gates(p.task, gates)]


def attainability_table(found: list[Attainable], rows: list[Preference]) -> str:
    """Markdown: per task, the scores the gates allow against this reference."""
    if not found:
        return ""
    now = {p.task: p.student_accuracy for p in rows}
    lines = ["| task | items | reference right | gates in force | can pass with | this model |",
             "|---|---|---|---|---|---|"]
    for a in found:
        lines.append(f"| {a.task} | {a.n} | {a.reference_right} | {'; '.join(a.gates)} | "
                     f"{a.describe()} | {now[a.task]:.3f} |")
    lines.append("")
    lines.append("\"can pass with\": every student accuracy on these items for which some "
                 "arrangement of its right answers passes all the task's gates against the "
                 "reference (preference is fixed by the accuracy; ties can range over the "
                 "items the two could disagree on). Decided by the reference's answers alone.")
    return "\n".join(lines)
