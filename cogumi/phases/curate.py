"""Phase 0: load, normalise, filter, verify English, deduplicate, and account for every record.

Stages, in order; a record leaves at the first stage that removes it, with a rule and a
reason (removed.jsonl), or is quarantined with its file:line (quarantine.jsonl):

1. load: each source in its real schema (cogumi.data.sources); a record that cannot be read
   or normalised is quarantined, and the rest of the source is still processed.
2. ids: a record whose (source, source id) repeats an earlier one is removed (duplicate_id):
   ids must be unique for everything downstream to refer to a record.
3. quality (cogumi.data.quality): empty, over-long, truncated, refusal-only.
4. language (cogumi.data.language): py3langid on instruction and response separately.
5. dedup (cogumi.data.dedup): exact duplicates by hash, then MinHash-LSH near duplicates,
   clusters by union-find, one representative per cluster.

Cheap checks come first, and quality and language come before dedup so that a record removed
for either never becomes the representative of a duplicate cluster.

Then the accounting (records in = kept + removed + quarantined, checked here and gated),
the domain mix before and after (domain_counts.json, domain_mix.png), and, when the profile
declares a planted-truth file, dedup precision and recall against the duplicates planted in
the sources.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter
from pathlib import Path

from cogumi.data.dedup import DedupConfig, near_duplicates
from cogumi.data.language import check_english
from cogumi.data.planted import PlantedTruthError, load_planted, resolve, score_dedup
from cogumi.data.quality import REMOVAL_RULES, quality_issue
from cogumi.data.sources import (
    DOMAINS,
    Quarantined,
    Record,
    SchemaError,
    load_hub_source,
    load_local_source,
)
from cogumi.runner import PhaseContext, PhaseInputError

_RULE_NAMES = {"duplicate_id": "repeated source id", "empty_instruction": "empty instruction",
               "empty_response": "empty response", "over_long": "over-long",
               "truncated": "truncated", "refusal": "refusal only",
               "non_english": "non-English", "exact_duplicate": "exact duplicate",
               "near_duplicate": "near duplicate"}
_PREVIEW_CHARS = 200


def _content_key(instruction: str, response: str) -> str:
    """Exact-duplicate key, computed independently of the dedup module to check its result:
    whitespace- and case-normalised instruction and response."""
    norm = " ".join(instruction.lower().split()) + "\0" + " ".join(response.lower().split())
    return hashlib.sha256(norm.encode()).hexdigest()


def _valid_share(rows: list[dict]) -> float:
    """Share of output records that satisfy the curated schema, checked on what we write."""
    if not rows:
        return 0.0
    ids = Counter(r.get("id") for r in rows)
    fields = ("id", "source", "source_id", "instruction", "response")
    valid = sum(
        all(isinstance(r.get(k), str) and r[k] for k in fields)
        and r.get("domain") in DOMAINS and ids[r["id"]] == 1
        for r in rows)
    return valid / len(rows)


def _preview(record: dict) -> str:
    return (" ".join(record["instruction"].split())[:_PREVIEW_CHARS] + " || "
            + " ".join(record["response"].split())[:_PREVIEW_CHARS])


class _Laps:
    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._clock = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._clock, 3)
        self._clock = now


def _load(ctx: PhaseContext):
    """Every source record, normalised or quarantined; where each came from."""
    data = ctx.profile.data
    records: list[Record] = []
    quarantined: list[dict] = []
    per_source: Counter = Counter()
    located: dict[tuple[Path, int], str | None] = {}  # (file, position) -> id, for planted truth
    loaded_counts: Counter = Counter()
    with ctx.progress() as progress:
        task = progress.add_task("loading sources", total=len(data.sources))
        for source in data.sources:
            if source.hub_id is not None:
                # No planted truth for hub data: their positions are not located.
                try:
                    for item in load_hub_source(source.name, source.schema_, source.hub_id,
                                                source.split):
                        per_source[source.name] += 1
                        if isinstance(item, Quarantined):
                            quarantined.append(item.to_dict())
                        else:
                            records.append(item)
                except SchemaError as exc:
                    raise PhaseInputError(f"{ctx.profile.source_file}: source "
                                          f"{source.name!r}: {exc}") from None
                progress.advance(task)
                continue
            path = ctx.resolve(source.path).resolve()
            for position, item in enumerate(load_local_source(
                    source.name, source.schema_, path, display_root=ctx.root)):
                per_source[source.name] += 1
                loaded_counts[path] += 1
                if isinstance(item, Quarantined):
                    quarantined.append(item.to_dict())
                    located[(path, position)] = None
                else:
                    records.append(item)
                    located[(path, position)] = item.id
            progress.advance(task)
    return records, quarantined, per_source, located, loaded_counts


def _language_reason(entry: dict, min_confidence: float) -> tuple[str, str | None]:
    """(reason, language) for a record the English check removed: the first field
    identified as another language with enough confidence decides."""
    for field in ("instruction", "response"):
        detection = entry.get(f"{field}_language")
        if detection and detection[0] != "en" and detection[1] >= min_confidence:
            return f"language {detection[0]} (p={detection[1]:.2f}) in the {field}", detection[0]
    return entry["reason"], None


def _dedup_reason(entry: dict) -> str:
    if entry["kind"] == "exact":
        return f"exact duplicate of {entry['kept_id']}"
    similarity = f"estimated Jaccard {entry['estimated_jaccard']:.3f}"
    if entry["jaccard"] is not None:
        similarity += f", exact {entry['jaccard']:.3f}"
    return (f"near duplicate of {entry['kept_id']} ({similarity}; cluster of "
            f"{entry['cluster_size']})")


def plot_domain_mix(before: dict[str, int], after: dict[str, int], path: Path,
                    title: str) -> None:
    """Bars of records per domain before and after curation, counts and shares."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(DOMAINS))
    width = 0.4
    fig, (counts_ax, share_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    total_before, total_after = sum(before.values()) or 1, sum(after.values()) or 1
    for ax, scale, label in ((counts_ax, (1, 1), "records"),
                             (share_ax, (100 / total_before, 100 / total_after),
                              "share of records (%)")):
        b = [before[d] * scale[0] for d in DOMAINS]
        a = [after[d] * scale[1] for d in DOMAINS]
        bars_b = ax.bar(x - width / 2, b, width, label=f"before ({sum(before.values())})",
                        color="#9aa5b1")
        bars_a = ax.bar(x + width / 2, a, width, label=f"after ({sum(after.values())})",
                        color="#2f6f9f")
        fmt = "%d" if label == "records" else "%.1f"
        ax.bar_label(bars_b, fmt=fmt, fontsize=7)
        ax.bar_label(bars_a, fmt=fmt, fontsize=7)
        ax.set_xticks(x, DOMAINS, rotation=20)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    counts_ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(ctx: PhaseContext) -> dict:
    data = ctx.profile.data
    laps = _Laps()
    records, quarantined, per_source, located, loaded_counts = _load(ctx)
    records_in = sum(per_source.values())
    laps.lap("load")
    removed: list[dict] = []

    def remove(record: dict, stage: str, rule: str, reason: str, **extra) -> None:
        removed.append({**record, "stage": stage, "rule": rule, "reason": reason, **extra})

    # 2 + 3: unique ids, then quality.
    seen_ids: set[str] = set()
    passing: list[dict] = []
    for item in records:
        record = item.to_dict()
        if record["id"] in seen_ids:
            remove(record, "ids", "duplicate_id",
                   f"source id {item.source_id!r} of {item.source} repeats an earlier record")
            continue
        seen_ids.add(record["id"])
        issue = quality_issue(item.instruction, item.response, data)
        if issue:
            remove(record, "quality", *issue)
        else:
            passing.append(record)
    laps.lap("quality")

    # 4: language.
    ctx.console.print(f"verifying English on {len(passing)} records (py3langid)")
    english = check_english(passing, min_confidence=data.english_min_confidence,
                            workers=data.workers)
    language_removed = {e["id"]: e for e in english.removed}
    english_records = []
    for record in passing:
        entry = language_removed.get(record["id"])
        if entry is None:
            english_records.append(record)
        else:
            reason, language = _language_reason(entry, data.english_min_confidence)
            remove(record, "language", "non_english", reason, language=language,
                   instruction_language=entry["instruction_language"],
                   response_language=entry["response_language"])
    laps.lap("language")

    # 5: exact and near duplicates.
    dedup_config = DedupConfig(**data.dedup.model_dump(), workers=data.workers)
    ctx.console.print(f"deduplicating {len(english_records)} records (MinHash-LSH at Jaccard "
                      f"{dedup_config.threshold}, {dedup_config.num_perm} permutations)")
    dedup = near_duplicates(english_records, dedup_config)
    by_id = {r["id"]: r for r in english_records}
    dedup_removed = {e["id"]: e for e in dedup.removed}
    kept, near_pairs = [], []
    for record in english_records:
        entry = dedup_removed.get(record["id"])
        if entry is None:
            kept.append(record)
            continue
        remove(record, "dedup", f"{entry['kind']}_duplicate", _dedup_reason(entry),
               kept_id=entry["kept_id"], jaccard=entry["jaccard"],
               estimated_jaccard=entry["estimated_jaccard"], cluster_size=entry["cluster_size"])
        if entry["kind"] == "near":
            keeper = by_id[entry["kept_id"]]
            near_pairs.append({
                "removed_id": record["id"], "kept_id": keeper["id"],
                "estimated_jaccard": entry["estimated_jaccard"], "jaccard": entry["jaccard"],
                "cluster_size": entry["cluster_size"],
                "removed": {k: record[k] for k in ("source", "source_id", "domain")}
                | {"text": _preview(record)},
                "kept": {k: keeper[k] for k in ("source", "source_id", "domain")}
                | {"text": _preview(keeper)}})
    laps.lap("dedup")

    # Accounting: the equation, and every loaded id filed exactly once.
    unbalanced = records_in - len(kept) - len(removed) - len(quarantined)
    filed = Counter(r["id"] for r in kept) + Counter(r["id"] for r in removed)
    loaded = Counter(item.id for item in records)
    misfiled = sum(((filed - loaded) + (loaded - filed)).values())
    by_rule = Counter(r["rule"] for r in removed)

    # Outputs.
    def write_jsonl(name: str, rows: list[dict]) -> None:
        with open(ctx.out_dir / name, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")

    write_jsonl("curated.jsonl", kept)
    write_jsonl("removed.jsonl", removed)
    write_jsonl("quarantine.jsonl", quarantined)
    write_jsonl("near_duplicates.jsonl", near_pairs)
    before = Counter(r.domain for r in records)
    after = Counter(r["domain"] for r in kept)
    removed_by_domain = {rule: dict(Counter(r["domain"] for r in removed if r["rule"] == rule))
                         for rule in REMOVAL_RULES if by_rule[rule]}
    (ctx.out_dir / "domain_counts.json").write_text(json.dumps({
        "before": {d: before.get(d, 0) for d in DOMAINS},
        "after": {d: after.get(d, 0) for d in DOMAINS},
        "before_means": "every record loaded (quarantined ones have no domain)",
        "removed_by_rule_and_domain": removed_by_domain,
        "records_in_per_source": dict(per_source),
    }, indent=2))
    plot_domain_mix({d: before.get(d, 0) for d in DOMAINS}, {d: after.get(d, 0) for d in DOMAINS},
                    ctx.out_dir / "domain_mix.png",
                    f"Phase 0 domain mix — {ctx.profile.name}: {len(records)} loaded, "
                    f"{len(kept)} kept")
    ctx.add_figure("domain_mix.png", "Records per domain before (loaded) and after (kept) "
                                     "curation, as counts and as shares")

    # English share of what is kept: of the kept records with enough prose to identify a
    # language, the share py3langid identifies as English (code- or formula-only records are
    # counted apart as undetermined).
    kept_categories = Counter(english.categories[r["id"]] for r in kept)
    judged = sum(n for c, n in kept_categories.items() if c != "undetermined")
    english_share = kept_categories["english"] / judged if judged else math.nan

    # Accounting holds by construction; if it ever does not, that is a bug in this phase,
    # not a measurement, so it stops the phase instead of appearing as a gate.
    if unbalanced or misfiled:
        raise RuntimeError(f"phase 0 accounting is broken: records in {records_in} != kept "
                           f"{len(kept)} + removed {len(removed)} + quarantined "
                           f"{len(quarantined)} (off by {unbalanced}), {misfiled} ids filed "
                           f"other than once")
    metrics = {
        "records.in": records_in,
        "records.kept": len(kept),
        "records.removed": len(removed),
        "records.quarantined": len(quarantined),
        "accounting.unbalanced": unbalanced,
        "accounting.misfiled": misfiled,
        "schema.valid_share": _valid_share(kept),
        "english.share": english_share,
        "english.input_share": english.stats["english_share"],
        "english.uncertain_kept": kept_categories["uncertain"],
        "english.undetermined_kept": kept_categories["undetermined"],
        "dedup.exact_removed": by_rule["exact_duplicate"],
        "dedup.near_removed": by_rule["near_duplicate"],
        "dedup.removed_share": (dedup.stats["removed"] / len(english_records)
                                if english_records else 0.0),
        "dedup.exact_duplicates_left": len(kept) - len({_content_key(r["instruction"],
                                                                     r["response"])
                                                        for r in kept}),
    }
    metrics.update({f"removed.{rule}": by_rule[rule] for rule in REMOVAL_RULES})
    metrics.update({f"domain.{d}": after.get(d, 0) for d in DOMAINS})

    planted_summary = None
    if data.planted is not None:
        planted_summary = _score_planted(ctx, data.planted, located, loaded_counts,
                                         dedup_removed, removed, metrics)
    laps.lap("outputs")

    stats = {
        "accounting": {"records_in": records_in, "kept": len(kept), "removed": len(removed),
                       "quarantined": len(quarantined), "unbalanced": unbalanced,
                       "misfiled": misfiled, "removed_by_rule": dict(by_rule),
                       "records_in_per_source": dict(per_source),
                       "quarantined_per_source": dict(Counter(q["source"]
                                                              for q in quarantined))},
        "language": english.stats | {"kept_categories": dict(kept_categories)},
        "dedup": dedup.stats,
        "quality_thresholds": {k: getattr(data, k) for k in (
            "min_response_chars", "max_record_chars", "truncated_min_chars",
            "refusal_max_chars")},
        "planted": planted_summary,
        "seconds": laps.seconds,
    }
    (ctx.out_dir / "curation_stats.json").write_text(
        json.dumps(_json_safe(stats), indent=2, default=str, allow_nan=False))
    _summarise(ctx, metrics, removed, by_rule, english, kept_categories, dedup.stats,
               planted_summary, laps.seconds, quarantined)
    return metrics


def _json_safe(obj):
    """NaN (a share of nothing) as null, so the file is standard JSON."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def _score_planted(ctx: PhaseContext, planted: str, located, loaded_counts,
                   dedup_removed: dict, removed: list[dict], metrics: dict) -> dict:
    """Dedup precision and recall (and non-English removal) against the planted truth."""
    path = ctx.resolve(planted).resolve()
    try:
        truth = load_planted(path, display=planted)
        folder = path.parent
        in_folder = {(p.name, pos): rid for (p, pos), rid in located.items()
                     if p.parent == folder}
        counts = {p.name: n for p, n in loaded_counts.items() if p.parent == folder}
        ids = resolve(truth, in_folder, counts)
    except PlantedTruthError as exc:
        raise PhaseInputError(f"{ctx.profile.source_file}: key 'data.planted': {exc}") from None
    removals = {rid: e["kept_id"] for rid, e in dedup_removed.items()}
    score = score_dedup(ids.duplicate_pairs, removals)
    rule_of = {r["id"]: r["rule"] for r in removed}
    non_english_removed = sum(rule_of.get(rid) == "non_english" for rid in ids.non_english)
    metrics["dedup.planted_precision"] = score.precision
    metrics["dedup.planted_recall"] = score.recall
    metrics["english.planted_removed_share"] = (non_english_removed / len(ids.non_english)
                                                if ids.non_english else math.nan)
    return {"file": planted, "dedup": score.to_dict(),
            "non_english": {"planted": len(ids.non_english), "removed": non_english_removed},
            "empty": {"planted": len(ids.empty),
                      "removed": sum(rule_of.get(rid) == "empty_response" for rid in ids.empty)}}


def _summarise(ctx, metrics, removed, by_rule, english, kept_categories, dedup_stats,
               planted, seconds, quarantined) -> None:
    """The report's summary: the accounting equation and what each stage did."""
    m = metrics
    balanced = m["accounting.unbalanced"] == 0 and m["accounting.misfiled"] == 0
    reasons = ", ".join(f"{_RULE_NAMES[r]} {by_rule[r]}" for r in REMOVAL_RULES if by_rule[r])
    lines = [
        f"- **Accounting:** records in {m['records.in']} = kept {m['records.kept']} + removed "
        f"{m['records.removed']} + quarantined {m['records.quarantined']} — "
        + ("balanced" if balanced else
           f"**NOT balanced**: off by {m['accounting.unbalanced']}, "
           f"{m['accounting.misfiled']} ids filed other than once"),
        f"- **Removed by reason:** {reasons or 'none'} (removed.jsonl: rule and reason per "
        f"record)",
    ]
    if quarantined:
        per_source = Counter(q["source"] for q in quarantined)
        lines.append(f"- **Quarantined:** {len(quarantined)} records ("
                     + ", ".join(f"{s} {n}" for s, n in per_source.items())
                     + "), each with file:line and reason in quarantine.jsonl")
    languages = Counter(r["language"] for r in removed if r["rule"] == "non_english")
    lines.append(
        f"- **English:** {_pct(m['english.share'])} of the kept records with enough prose to "
        f"identify are identified as English by {english.stats['detector']} "
        f"({kept_categories['uncertain']} kept at low confidence, "
        f"{kept_categories['undetermined']} code or formulas only); before removal "
        f"{_pct(m['english.input_share'])} of the records checked; removed as non-English: "
        f"{by_rule['non_english']}" + (" (" + ", ".join(f"{k} {v}" for k, v in
                                                       sorted(languages.items())) + ")"
                                       if languages else ""))
    d = dedup_stats
    probability = d["candidate_probability_at"].get(str(d["threshold"]))
    lines.append(
        f"- **Dedup:** {m['dedup.exact_removed']} exact and {m['dedup.near_removed']} near "
        f"duplicates removed ({_pct(m['dedup.removed_share'])} of the {d['records']} English "
        f"records); MinHash over {d['shingle']} {d['ngram']}-grams, {d['num_perm']} "
        f"permutations, LSH {d['bands']} bands x {d['rows']} rows (a pair at Jaccard "
        f"{d['threshold']} is a candidate with p = {probability}), {d['verify']} verification: "
        f"{d.get('candidate_pairs', 0)} candidate pairs, {d.get('verified_pairs', 0)} verified, "
        f"{d.get('clusters', 0)} clusters; one record kept per cluster (the one whose domain "
        f"has kept fewest so far, then the longest response); pairs in near_duplicates.jsonl")
    if planted is not None:
        s = planted["dedup"]
        lines.append(
            f"- **Planted truth** (`{planted['file']}`): {s['found']} of {s['pairs']} planted "
            f"duplicate pairs found (recall {_num(s['recall'])}), {s['correct_removals']} of "
            f"{s['removals']} duplicate removals are planted pairs (precision "
            f"{_num(s['precision'])}); non-English {planted['non_english']['removed']} of "
            f"{planted['non_english']['planted']} removed, empty responses "
            f"{planted['empty']['removed']} of {planted['empty']['planted']}")
    lines.append("- **Seconds per stage:** "
                 + ", ".join(f"{k} {v:.2f}" for k, v in seconds.items()))
    ctx.write_report("\n".join(lines))
    if planted is not None and (planted["dedup"]["missed"] or planted["dedup"]["wrong"]):
        ctx.notes.append(f"planted-truth mismatches: missed {planted['dedup']['missed']}, "
                         f"wrong removals {planted['dedup']['wrong']}")


def _pct(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.2f} %"


def _num(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.3f}"
