"""Our measurement of a model next to what its makers publish for it (issue 14).

The published figure is a citation from the profile (`[model.published]`,
`[teacher.published]`); ours is the same model's per-item verdicts from an evaluation
folder. A published figure outside our 95 % interval says that our prompt, chat template,
extraction or sample differs from the makers' setting: the report says so, the reader looks
before building on it. Not a gate: the makers' setting is theirs (shots, templates, the whole
benchmark where we may score a reduced sample), so a gap is a finding, not a failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cogumi.evaluation.paired import item_scores
from cogumi.stats import wilson_interval


@dataclass(frozen=True)
class PublishedRow:
    model: str
    task: str
    n: int
    ours: float
    lower: float
    upper: float
    published: float | None
    source: str
    setting: str

    @property
    def outside(self) -> bool:
        """The published figure lies outside our 95 % interval."""
        return self.published is not None and not self.lower <= self.published <= self.upper


def published_rows(model: str, eval_dir: Path, published: dict) -> list[PublishedRow]:
    """One row per task that `published` (task -> PublishedFigure) names and `eval_dir`
    evaluated. A named task the folder lacks is an error: the comparison would drop it."""
    scores = item_scores(eval_dir)
    missing = sorted(set(published) - set(scores))
    if missing:
        raise ValueError(f"{eval_dir}: no evaluation of {missing}, for which {model}'s "
                         f"published figures are given")
    rows = []
    for task, fig in published.items():
        per_item = scores[task]
        n = len(per_item)
        interval = wilson_interval(sum(per_item.values()), n)
        rows.append(PublishedRow(model, task, n, interval.point, interval.lower,
                                 interval.upper, fig.value, fig.source, fig.setting))
    return rows


def published_table(rows: list[PublishedRow]) -> str:
    """Markdown: ours with its interval, the published figure, and where it is from."""
    lines = ["| model | task | items | ours | 95% interval (Wilson) | published | inside? | "
             "source, setting |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pub = "none published" if r.published is None else f"{r.published:.3f}"
        inside = "" if r.published is None else ("**no**" if r.outside else "yes")
        lines.append(f"| {r.model} | {r.task} | {r.n} | {r.ours:.3f} | "
                     f"[{r.lower:.3f}, {r.upper:.3f}] | {pub} | {inside} | "
                     f"{r.source}: {r.setting} |")
    return "\n".join(lines)
