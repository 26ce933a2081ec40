"""Phase 0 (minimal, honest form): load the sources, normalise, drop exact duplicates.

What it does not do yet, and says so in its report: language identification and MinHash
near-duplicate removal (the full curation is its own issue). Every record that enters is
accounted for: kept, removed with a reason, or quarantined with its location.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter

from cogumi.data.sources import DOMAINS, Quarantined, load_local_source
from cogumi.runner import PhaseContext, PhaseInputError


def _content_key(instruction: str, response: str) -> str:
    """Exact-duplicate key: whitespace- and case-normalised instruction and response."""
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


def run(ctx: PhaseContext) -> dict:
    data = ctx.profile.data
    kept, removed, quarantined = [], [], []
    seen: dict[str, str] = {}
    records_in = 0
    per_source_in: Counter = Counter()
    with ctx.progress() as progress:
        task = progress.add_task("loading sources", total=len(data.sources))
        for source in data.sources:
            if source.path is None:
                raise PhaseInputError(f"{ctx.profile.source_file}: source {source.name!r} is a "
                                   f"hub dataset; loading by hub id is not implemented yet")
            for item in load_local_source(source.name, source.schema_, ctx.resolve(source.path),
                                          display_root=ctx.root):
                records_in += 1
                per_source_in[source.name] += 1
                if isinstance(item, Quarantined):
                    quarantined.append(item.to_dict())
                    continue
                reason = None
                if len(item.response) < data.min_response_chars:
                    reason = "empty response"
                elif not item.instruction:
                    reason = "empty instruction"
                elif len(item.instruction) + len(item.response) > data.max_record_chars:
                    reason = f"over {data.max_record_chars} characters"
                else:
                    key = _content_key(item.instruction, item.response)
                    if key in seen:
                        reason = f"exact duplicate of {seen[key]}"
                    else:
                        seen[key] = item.id
                if reason:
                    removed.append({**item.to_dict(), "reason": reason})
                else:
                    kept.append(item.to_dict())
            progress.advance(task)

    def write_jsonl(name: str, rows: list[dict]) -> None:
        with open(ctx.out_dir / name, "w") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")

    write_jsonl("curated.jsonl", kept)
    write_jsonl("removed.jsonl", removed)
    write_jsonl("quarantine.jsonl", quarantined)
    before = Counter(r["domain"] for r in kept) + Counter(r["domain"] for r in removed)
    after = Counter(r["domain"] for r in kept)
    removal_reasons = Counter(r["reason"].split(" of ")[0] for r in removed)
    (ctx.out_dir / "domain_counts.json").write_text(json.dumps({
        "before": {d: before.get(d, 0) for d in DOMAINS},
        "after": {d: after.get(d, 0) for d in DOMAINS},
        "records_in_per_source": dict(per_source_in),
        "removed_by_reason": dict(removal_reasons),
    }, indent=2))
    if quarantined:
        ctx.notes.append(f"{len(quarantined)} records quarantined (see quarantine.jsonl)")
    ctx.notes.append("minimal phase 0: exact duplicates only; language identification and "
                     "MinHash-LSH near-duplicate removal are not applied yet")
    keys = [_content_key(r["instruction"], r["response"]) for r in kept]
    metrics = {
        "records.in": records_in,
        "records.kept": len(kept),
        "records.removed": len(removed),
        "records.quarantined": len(quarantined),
        "accounting.unbalanced": records_in - len(kept) - len(removed) - len(quarantined),
        "schema.valid_share": _valid_share(kept),
        "dedup.exact_removed": removal_reasons.get("exact duplicate", 0),
        "dedup.exact_duplicates_left": len(keys) - len(set(keys)),
    }
    for domain in DOMAINS:
        metrics[f"domain.{domain}"] = after.get(domain, 0)
    return metrics
