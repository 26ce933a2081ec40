"""Training items never come from an evaluation split.

Two tools, one rule (issue 14): training, distillation and calibration data never overlap
an evaluation split.

* :func:`split_by_id` — where a profile must draw training items from a benchmark package
  (GSM8K ships only its test set), the items are split by a hash of their id under a
  declared :class:`IdSplit` (fraction and salt): the same id always lands on the same side,
  whatever the file's order or which other items are in it.
* :func:`assert_disjoint` — training prompts against every evaluation task, by id and by
  normalised prompt text (lowercase, whitespace collapsed): a copy of a test question under
  another id is still the test question. Raises :class:`SplitOverlapError`, one line naming
  the first overlapping items.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from .tasks import Item, Task


class SplitOverlapError(ValueError):
    """Training items overlap an evaluation split; the message names them."""


@dataclass(frozen=True)
class IdSplit:
    """A declared split of one benchmark's items by id: an item is held out (evaluation)
    when ``sha256(salt NUL id)``, read as a fraction of 2**64 from its first 16 hex digits,
    is below ``heldout_fraction``; the rest may be trained on."""
    heldout_fraction: float
    salt: str

    def __post_init__(self) -> None:
        if not 0 < self.heldout_fraction < 1:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        if not self.salt:
            raise ValueError("a split needs a salt (declared once, never changed)")

    def is_heldout(self, item_id: str) -> bool:
        return id_fraction(self.salt, item_id) < self.heldout_fraction


def id_fraction(salt: str, item_id: str) -> float:
    """Where an id falls in [0, 1) under a salt: ``sha256(salt NUL id)``'s first 16 hex
    digits as a fraction of 2**64 (the hash :class:`IdSplit` and :class:`IdRange` share)."""
    h = hashlib.sha256(f"{salt}\0{item_id}".encode()).hexdigest()
    return int(h[:16], 16) / 2**64


@dataclass(frozen=True)
class IdRange:
    """A declared part of one benchmark by id: the items whose :func:`id_fraction` under
    ``salt`` is in ``[low, high)``. Ranges under one salt that do not overlap never share an
    item, so one package file can hold an evaluation split and training splits side by side
    (a profile's [eval] and its training data each name their own range)."""
    salt: str
    low: float
    high: float
    excluded: tuple[str, ...] = ()
    """Ids in the range left out of it, each named in the profile with its reason."""

    def __post_init__(self) -> None:
        if not 0 <= self.low < self.high <= 1:
            raise ValueError(f"an id range needs 0 <= low < high <= 1, got [{self.low}, "
                             f"{self.high})")
        if not self.salt:
            raise ValueError("an id range needs a salt (declared once, never changed)")

    def __contains__(self, item_id: str) -> bool:
        return (self.low <= id_fraction(self.salt, item_id) < self.high
                and item_id not in self.excluded)

    def __str__(self) -> str:
        less = f" less {len(self.excluded)}" if self.excluded else ""
        return f"[ids {self.salt!r} {self.low:g}-{self.high:g}{less}]"

    def select(self, task: Task) -> Task:
        """``task`` with only the items in this range, malformed ones included (they score as
        failures on the side their line's id falls on: nothing is silently dropped), and a
        digest that names the range (a run cache keyed on it sees another task)."""
        items = [it for it in task.items if it.id in self]
        digest = hashlib.sha256(
            f"{task.digest}:{self}:{chr(0).join(sorted(self.excluded))}".encode()).hexdigest()
        return replace(task, items=items, digest=digest,
                       meta={**task.meta, "id_range": {"salt": self.salt, "low": self.low,
                                                       "high": self.high,
                                                       "excluded": list(self.excluded),
                                                       "of_items": len(task.items)}})


def split_by_id(items: Sequence[Item], split: IdSplit) -> tuple[list[Item], list[Item]]:
    """(train, heldout) by :meth:`IdSplit.is_heldout`; malformed items go to neither."""
    train, heldout = [], []
    for it in items:
        if it.malformed is None:
            (heldout if split.is_heldout(it.id) else train).append(it)
    return train, heldout


def prompt_text(item: Item) -> str:
    """The text an item asks, whatever its benchmark (what a duplicate would repeat). A
    multiple-choice item asks its stem with its options: the fixture's and MMLU's stems
    repeat ("Which number is the largest?") across different questions."""
    f = item.fields
    for key in ("problem", "question", "prompt", "instruction"):
        if isinstance(f.get(key), str):
            choices = f.get("choices")
            if isinstance(choices, list) and all(isinstance(c, str) for c in choices):
                return "\n".join([f[key], *choices])
            return f[key]
    q = f.get("question")  # BFCL: turns of messages
    if isinstance(q, list):
        return "\n".join(m.get("content", "") for turn in q for m in turn if isinstance(m, dict))
    return ""


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def assert_disjoint(train: Iterable[tuple[str, str]], eval_tasks: Sequence[Task],
                    what: str) -> None:
    """Refuse training items (``(id, prompt text)`` pairs) that are evaluation items of
    ``eval_tasks``, by id or by normalised text. ``what`` names the training set."""
    by_id: dict[str, str] = {}
    by_text: dict[str, str] = {}
    for task in eval_tasks:
        for it in task.items:
            if it.malformed is not None:
                continue
            by_id[it.id] = f"{task.name}:{it.id}"
            text = normalise(prompt_text(it))
            if text:
                by_text[text] = f"{task.name}:{it.id}"
    hits = []
    for item_id, text in train:
        if item_id in by_id:
            hits.append(f"{item_id} (id of {by_id[item_id]})")
        elif normalise(text) in by_text:
            hits.append(f"{item_id} (text of {by_text[normalise(text)]})")
    if hits:
        shown = ", ".join(hits[:5]) + (f" and {len(hits) - 5} more" if len(hits) > 5 else "")
        raise SplitOverlapError(f"{what}: {len(hits)} item(s) are evaluation items: {shown}")
