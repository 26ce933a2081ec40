"""Scoring phase 0 against defects planted in its sources on purpose (fixtures/sources/
PLANTED.json): which records are duplicates of which, which are not English.

    truth = load_planted(path)                       # validated, errors name file and key
    ids = truth.resolve(located, loaded_counts)      # locators -> record ids
    score = score_dedup(ids.duplicate_pairs, removals)

A locator is (file, index): the file's name relative to the planted-truth file's folder and
the 0-based position of the record in it, which is how the fixture builder and the loaders
both count records.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from cogumi.data.dedup import UnionFind


class PlantedTruthError(ValueError):
    """A planted-truth file that cannot be used; one line naming the file and key."""


Locator = tuple[str, int]


@dataclass(frozen=True)
class PlantedTruth:
    path: Path
    counts: dict[str, int]
    """Records per file (PLANTED.json "counts", keyed by file name)."""
    duplicate_pairs: list[tuple[Locator, Locator, str]]
    """(copy, original, kind) with kind "exact_duplicate" or "near_duplicate"."""
    non_english: list[Locator]
    empty: list[Locator]


@dataclass(frozen=True)
class ResolvedTruth:
    duplicate_pairs: list[tuple[str | None, str | None, str]]
    """(copy id, original id, kind); None where the record was quarantined, not loaded."""
    non_english: list[str | None]
    empty: list[str | None]


def _locator(entry, where: str) -> Locator:
    if (not isinstance(entry, dict) or not isinstance(entry.get("file"), str)
            or not isinstance(entry.get("index"), int) or entry["index"] < 0):
        raise PlantedTruthError(f"{where}: expected {{file: str, index: int >= 0}}, got "
                                f"{json.dumps(entry)[:80]}")
    return entry["file"], entry["index"]


def load_planted(path: Path, display: str | None = None) -> PlantedTruth:
    """Read and validate a planted-truth file."""
    name = display or str(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlantedTruthError(f"{name}: planted-truth file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PlantedTruthError(f"{name}: not valid JSON: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("plants"), list):
        raise PlantedTruthError(f"{name}: missing key 'plants' (a list)")
    counts = raw.get("counts")
    if not isinstance(counts, dict) or not all(isinstance(v, int) for v in counts.values()):
        raise PlantedTruthError(f"{name}: key 'counts' must map source names to record counts")
    pairs, non_english, empty = [], [], []
    for i, plant in enumerate(raw["plants"]):
        where = f"{name}: plants[{i}]"
        kind = plant.get("kind") if isinstance(plant, dict) else None
        if kind in ("exact_duplicate", "near_duplicate"):
            pairs.append((_locator(plant.get("record"), f"{where}.record"),
                          _locator(plant.get("original"), f"{where}.original"), kind))
        elif kind == "non_english":
            non_english.append(_locator(plant.get("record"), f"{where}.record"))
        elif kind == "empty_response":
            empty.append(_locator(plant.get("record"), f"{where}.record"))
        else:
            raise PlantedTruthError(f"{where}: key 'kind': unknown kind {kind!r}")
    # "counts" is keyed by source name (alpaca_gpt4), locators by file (alpaca_gpt4.json).
    files = {loc[0] for pair in pairs for loc in pair[:2]} | {loc[0] for loc in non_english + empty}
    by_file = {}
    for file in files:
        stem = file.split(".", 1)[0]
        if stem not in counts:
            raise PlantedTruthError(f"{name}: key 'counts' has no entry {stem!r} for {file}")
        by_file[file] = counts[stem]
    return PlantedTruth(path, by_file, pairs, non_english, empty)


def resolve(truth: PlantedTruth, located: dict[Locator, str | None],
            loaded_counts: dict[str, int]) -> ResolvedTruth:
    """Locators -> record ids. ``located`` maps (file name, position) to the record id (None
    for a quarantined record); ``loaded_counts`` is how many records each file gave. A file
    the profile does not load, or whose count differs from the truth's, is an error: the
    truth would be about other data."""
    name = truth.path.name
    for file, count in truth.counts.items():
        if file not in loaded_counts:
            raise PlantedTruthError(f"{truth.path}: plants refer to {file}, which no source of "
                                    f"the profile loads from {truth.path.parent}")
        if loaded_counts[file] != count:
            raise PlantedTruthError(f"{truth.path}: key 'counts': {file} has {count} records "
                                    f"in {name} but {loaded_counts[file]} were loaded; the "
                                    f"sources changed since the truth was written")

    def ids(locator: Locator) -> str | None:
        if locator not in located:
            raise PlantedTruthError(f"{truth.path}: plant at {locator[0]} index {locator[1]} "
                                    f"is beyond the {loaded_counts[locator[0]]} records loaded")
        return located[locator]

    return ResolvedTruth([(ids(a), ids(b), kind) for a, b, kind in truth.duplicate_pairs],
                         [ids(loc) for loc in truth.non_english], [ids(loc) for loc in truth.empty])


@dataclass
class DedupScore:
    precision: float
    """Duplicate removals whose kept record is planted as the same content / all duplicate
    removals (NaN when nothing was removed)."""
    recall: float
    """Planted pairs that end in one cluster (one removed in favour of the other, or both
    removed in favour of a third planted copy) / planted pairs."""
    pairs: int
    found: int
    removals: int
    correct_removals: int
    missed: list[dict] = field(default_factory=list)
    wrong: list[dict] = field(default_factory=list)
    by_kind: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in self.__dict__.items()}


def score_dedup(pairs: list[tuple[str | None, str | None, str]],
                removals: dict[str, str]) -> DedupScore:
    """Precision and recall of duplicate removal against planted pairs.

    removals: removed id -> kept id, for every record removed as an exact or near duplicate.
    """
    planted_ids = sorted({i for a, b, _ in pairs for i in (a, b) if i is not None})
    index = {rid: k for k, rid in enumerate(planted_ids)}
    planted = UnionFind(len(planted_ids))
    for a, b, _ in pairs:
        if a is not None and b is not None:
            planted.union(index[a], index[b])

    def ours(rid: str) -> str:
        return removals.get(rid, rid)

    found, missed = 0, []
    by_kind: dict[str, dict] = {}
    for a, b, kind in pairs:
        ok = a is not None and b is not None and ours(a) == ours(b)
        found += ok
        tally = by_kind.setdefault(kind, {"pairs": 0, "found": 0})
        tally["pairs"] += 1
        tally["found"] += ok
        if not ok:
            missed.append({"copy": a, "original": b, "kind": kind,
                           "copy_kept_as": None if a is None else ours(a),
                           "original_kept_as": None if b is None else ours(b)})
    correct, wrong = 0, []
    for removed, kept in removals.items():
        ok = (removed in index and kept in index
              and planted.find(index[removed]) == planted.find(index[kept]))
        correct += ok
        if not ok:
            wrong.append({"removed": removed, "kept": kept})
    return DedupScore(
        precision=correct / len(removals) if removals else math.nan,
        recall=found / len(pairs) if pairs else math.nan,
        pairs=len(pairs), found=found, removals=len(removals), correct_removals=correct,
        missed=missed, wrong=sorted(wrong, key=lambda w: w["removed"]), by_kind=by_kind)
