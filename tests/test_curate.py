"""Phase 0 wired end to end: the defects planted in the fixture sources are removed for the
right reason, every record is accounted for, bad rows are quarantined with file:line, and
the report shows the equation and the domain plot. Plus the quality rules and the planted
truth scoring on small inputs."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from cogumi import cli
from cogumi.data.planted import score_dedup
from cogumi.data.quality import REMOVAL_RULES, is_refusal, quality_issue, truncation
from cogumi.data.sources import DOMAINS, Record, load_local_source
from cogumi.profile import load_profile
from cogumi.registry import get_phase

from .conftest import ROOT

FIXTURES = ROOT / "fixtures" / "sources"


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _fixture_ids() -> dict[tuple[str, int], str]:
    """(file name, position) -> record id for every fixture source record."""
    profile = load_profile("tiny")
    ids = {}
    for source in profile.data.sources:
        path = ROOT / source.path
        for position, item in enumerate(load_local_source(source.name, source.schema_, path)):
            assert isinstance(item, Record), item  # the fixture sources have no bad rows
            ids[(path.name, position)] = item.id
    return ids


@pytest.fixture(scope="module")
def phase0(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    assert cli.main(["run", "0", "--runs", str(runs)]) == 0
    folder = runs / "tiny" / "0"
    return SimpleNamespace(
        folder=folder, runs=runs / "tiny",
        metrics=json.loads((folder / "metrics.json").read_text()),
        kept={r["id"]: r for r in _jsonl(folder / "curated.jsonl")},
        removed={r["id"]: r for r in _jsonl(folder / "removed.jsonl")},
        near=_jsonl(folder / "near_duplicates.jsonl"),
        planted=json.loads((FIXTURES / "PLANTED.json").read_text()),
        ids=_fixture_ids())


def _plants(phase0, kind):
    return [p for p in phase0.planted["plants"] if p["kind"] == kind]


def _id(phase0, locator):
    return phase0.ids[(locator["file"], locator["index"])]


@pytest.mark.parametrize("kind,rule", [("near_duplicate", "near_duplicate"),
                                       ("exact_duplicate", "exact_duplicate")])
def test_planted_duplicates_removed_pointing_at_the_kept_record(phase0, kind, rule):
    plants = _plants(phase0, kind)
    assert plants
    for plant in plants:
        pair = {_id(phase0, plant["record"]), _id(phase0, plant["original"])}
        removed = [i for i in pair if i in phase0.removed]
        kept = [i for i in pair if i in phase0.kept]
        # exactly one of the pair survives, and the other names it
        assert len(removed) == 1 and len(kept) == 1, plant
        entry = phase0.removed[removed[0]]
        assert entry["rule"] == rule and entry["kept_id"] == kept[0]
        assert kept[0] in entry["reason"]
        if kind == "near_duplicate":
            assert entry["jaccard"] >= 0.8 and f"{entry['estimated_jaccard']:.3f}" in entry["reason"]
            audit = [n for n in phase0.near if n["removed_id"] == removed[0]]
            assert len(audit) == 1 and audit[0]["kept_id"] == kept[0]
            assert audit[0]["jaccard"] == entry["jaccard"] and audit[0]["kept"]["text"]


def test_non_english_removed_with_language_and_confidence(phase0):
    for plant in _plants(phase0, "non_english"):
        entry = phase0.removed[_id(phase0, plant["record"])]
        assert entry["rule"] == "non_english"
        assert re.match(rf"language {plant['language']} \(p=0\.\d\d\) in the ", entry["reason"])
    assert phase0.metrics["english.share"] >= 0.99
    assert phase0.metrics["english.planted_removed_share"] == 1.0


def test_only_planted_records_are_removed(phase0):
    """Everything not in PLANTED.json is clean, distinct English: removing any of it is a
    false positive of some stage."""
    planted = {_id(phase0, p["record"]) for p in phase0.planted["plants"]}
    planted |= {_id(phase0, p["original"]) for p in phase0.planted["plants"] if "original" in p}
    assert set(phase0.removed) <= planted
    assert {r["rule"] for r in phase0.removed.values()} == {
        "empty_response", "non_english", "exact_duplicate", "near_duplicate"}
    assert phase0.metrics["dedup.planted_precision"] == 1.0
    assert phase0.metrics["dedup.planted_recall"] == 1.0


def test_accounting_balances_against_the_files(phase0):
    m = phase0.metrics
    records_in = sum(phase0.planted["counts"].values())
    quarantined = _jsonl(phase0.folder / "quarantine.jsonl")
    assert m["records.in"] == records_in
    assert records_in == len(phase0.kept) + len(phase0.removed) + len(quarantined)
    assert (m["records.kept"], m["records.removed"], m["records.quarantined"]) == (
        len(phase0.kept), len(phase0.removed), len(quarantined))
    assert m["accounting.unbalanced"] == 0 and m["accounting.misfiled"] == 0
    assert not set(phase0.kept) & set(phase0.removed)
    assert sum(m[f"removed.{rule}"] for rule in REMOVAL_RULES) == m["records.removed"]
    counts = json.loads((phase0.folder / "domain_counts.json").read_text())
    assert sum(counts["before"].values()) == records_in - len(quarantined)
    assert counts["after"] == {d: sum(r["domain"] == d for r in phase0.kept.values())
                               for d in DOMAINS}


def test_report_shows_equation_and_embeds_the_plot(phase0):
    m = phase0.metrics
    report = (phase0.runs / "reports" / "phase0.md").read_text()
    assert "SIGNED OFF" in report
    assert (f"records in {m['records.in']} = kept {m['records.kept']} + removed "
            f"{m['records.removed']} + quarantined {m['records.quarantined']} — balanced") in report
    assert "![" in report and "](../0/domain_mix.png)" in report
    assert (phase0.folder / "domain_mix.png").read_bytes()[:4] == b"\x89PNG"
    assert "16 bands x 8 rows" in report and "near duplicate 4" in report
    assert f"| english.share | {m['english.share']:.4g} | >= 0.99 |" in report
    manifest = json.loads((phase0.folder / "manifest.json").read_text())
    assert set(get_phase("0").outputs) <= set(manifest["outputs"])


def _variant(tmp_path: Path, sources: str, extra: str = "", planted: bool = False) -> Path:
    text = (ROOT / "cogumi/profiles/tiny.toml").read_text()
    text = re.sub(r"sources = \[\n.*?\n\]\n", sources, text, count=1, flags=re.S)
    if not planted:
        text = text.replace('planted = "fixtures/sources/PLANTED.json"\n', "")
    path = tmp_path / "variant.toml"
    path.write_text(text.replace('name = "tiny"', 'name = "variant"') + extra)
    return path


_WAIVE_PLANTED = "".join(f'''
[[gate_overrides]]
phase = "0"
metric = "dedup.planted_{m}"
waive = true
why = "test data without a planted-truth file"
''' for m in ("precision", "recall"))


def test_bad_rows_are_quarantined_with_file_and_line(tmp_path, capsys):
    good = (FIXTURES / "dolly.jsonl").read_bytes().splitlines()[2:8]
    damaged = tmp_path / "dolly.jsonl"
    damaged.write_bytes(b"\n".join([good[0], b'{"instruction": "broken', good[1],
                                    b'{"instruction": "\xff\xfe", "context": ""}',
                                    b'{"instruction": "x", "context": "", "response": 7, '
                                    b'"category": "open_qa"}', *good[2:]]) + b"\n")
    sources = ('sources = [\n  { name = "dolly", schema = "dolly", path = "'
               + str(damaged) + '" },\n  { name = "code-alpaca", schema = "code_alpaca", '
               'path = "fixtures/sources/code_alpaca.json" },\n]\n')
    profile = _variant(tmp_path, sources, _WAIVE_PLANTED)
    runs = tmp_path / "runs"
    assert cli.main(["run", "0", "--profile", str(profile), "--runs", str(runs)]) == 0
    folder = runs / "variant" / "0"
    quarantined = _jsonl(folder / "quarantine.jsonl")
    assert [q["location"].rsplit("/", 1)[1] for q in quarantined] == [
        "dolly.jsonl:2", "dolly.jsonl:4", "dolly.jsonl:5"]
    assert "malformed JSON" in quarantined[0]["reason"]
    assert "not UTF-8" in quarantined[1]["reason"]
    assert "field 'response' is int" in quarantined[2]["reason"]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["records.in"] == 9 + 50 and metrics["records.quarantined"] == 3
    assert metrics["accounting.unbalanced"] == 0
    assert "dedup.planted_recall" not in metrics  # nothing to measure against
    report = (runs / "variant" / "reports" / "phase0.md").read_text()
    assert "| dedup.planted_recall | missing | >= 0.95 |" in report and "WAIVED" in report
    assert "Quarantined:** 3 records (dolly 3)" in report


def test_planted_truth_about_other_files_is_refused(tmp_path, capsys):
    sources = ('sources = [\n  { name = "code-alpaca", schema = "code_alpaca", '
               'path = "fixtures/sources/code_alpaca.json" },\n]\n')
    profile = _variant(tmp_path, sources, planted=True)
    assert cli.main(["run", "0", "--profile", str(profile), "--runs",
                     str(tmp_path / "runs")]) == 2
    out = capsys.readouterr().out
    assert "key 'data.planted'" in out and "which no source of the profile loads" in out


# --------------------------------------------------------------------------- quality rules

QUALITY = SimpleNamespace(min_response_chars=1, max_record_chars=2000, truncated_min_chars=100,
                          refusal_max_chars=120)
LONG = "The experiment shows that plants grow faster in warm light. " * 3


@pytest.mark.parametrize("instruction,response,rule", [
    ("Say hi", "   ", "empty_response"),
    ("  ", "Hello there.", "empty_instruction"),
    ("Say hi", "x" * 2001, "over_long"),
    ("Write code", "Here it is:\n```python\ndef f():\n    return 1\n", "truncated"),
    ("Explain", LONG + "Because the", "truncated"),
    ("Explain", LONG + "and so on,", "truncated"),
    ("Help me", "I'm sorry, but I can't help with that request.", "refusal"),
    ("Help me", "As an AI language model, I cannot provide medical advice.", "refusal"),
    ("Explain", LONG, None),
    ("Explain", LONG + "So the answer is yes", None),
    ("Code", LONG + "\nreturn x", None),
    ("Help me", "I'm sorry to hear that. Try restarting the router first.", None),
    ("Name one", "Paris", None),
])
def test_quality_rules(instruction, response, rule):
    issue = quality_issue(instruction, response, QUALITY)
    assert (issue[0] if issue else None) == rule


def test_quality_rules_can_be_turned_off():
    assert truncation(LONG + "Because the", 0) is None
    assert not is_refusal("I cannot help with that.", 0)


# --------------------------------------------------------------------------- planted scoring

def test_planted_scoring_counts_misses_and_wrong_removals():
    pairs = [("a2", "a1", "near_duplicate"), ("b2", "b1", "exact_duplicate"),
             ("c2", "c1", "near_duplicate")]
    # a: found (either direction counts); b: missed; c: both removed in favour of a third
    # record x that is not planted: the pair ends in one cluster (found), but neither removal
    # is a planted pair, so precision counts both as wrong.
    removals = {"a1": "a2", "c1": "x", "c2": "x"}
    score = score_dedup(pairs, removals)
    assert score.recall == pytest.approx(2 / 3) and score.precision == pytest.approx(1 / 3)
    assert [m["copy"] for m in score.missed] == ["b2"]
    assert [w["removed"] for w in score.wrong] == ["c1", "c2"]
    assert score.by_kind["exact_duplicate"] == {"pairs": 1, "found": 0}
    perfect = score_dedup(pairs, {"a2": "a1", "b1": "b2", "c2": "c1"})
    assert (perfect.precision, perfect.recall) == (1.0, 1.0)
    assert math.isnan(score_dedup(pairs, {}).precision)
