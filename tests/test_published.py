"""The makers' published figures: declared in the profile, checked against [eval], shown
beside our measurement with its interval, and a figure outside the interval is said."""

import json

import pytest

from cogumi.evaluation.published import published_rows, published_table
from cogumi.profile import ProfileError, PublishedFigure, load_profile, parse_profile

from .conftest import ROOT

CITE = 'source = "a report", setting = "table 1, pass@1"'


def _write_items(folder, task, verdicts):
    folder.mkdir(parents=True)
    (folder / "items.jsonl").write_text("".join(
        json.dumps({"task": task, "item_id": str(i), "verdicts": [v]}) + "\n"
        for i, v in enumerate(verdicts)))


def test_a_published_task_the_profile_does_not_evaluate_is_named():
    text = (ROOT / "cogumi/profiles/tiny.toml").read_text()
    assert "\n[data]\n" in text
    bad = text.replace("\n[data]\n", f"\n[model.published]\ngsm8k = {{ value = 0.5, {CITE} }}"
                                     "\n\n[data]\n", 1)
    with pytest.raises(ProfileError, match=r"x\.toml: .*model\.published: \['gsm8k'\] not in "
                                           r"\[eval\]"):
        parse_profile(bad, "x.toml")
    good = text.replace("\n[data]\n", f"\n[model.published]\nmath = {{ value = 0.5, {CITE} }}"
                                      "\n\n[data]\n", 1)
    assert parse_profile(good, "x.toml").model.published["math"].value == 0.5


def test_a_figure_is_a_share_not_a_percentage():
    text = (ROOT / "cogumi/profiles/tiny.toml").read_text()
    bad = text.replace("\n[data]\n", f"\n[model.published]\nmath = {{ value = 61.6, {CITE} }}"
                                     "\n\n[data]\n", 1)
    with pytest.raises(ProfileError, match=r"model\.published\.math\.value"):
        parse_profile(bad, "x.toml")


def test_rows_hold_our_interval_and_flag_a_published_figure_outside_it(tmp_path):
    _write_items(tmp_path / "e", "humaneval", [True] * 8 + [False] * 2)  # 0.8 of 10
    figs = {"humaneval": PublishedFigure(value=0.3, source="r", setting="s")}
    (row,) = published_rows("m", tmp_path / "e", figs)
    assert (row.n, row.ours) == (10, 0.8)
    assert row.lower < 0.8 < row.upper and row.outside  # Wilson [0.49, 0.94] excludes 0.3
    inside = published_rows("m", tmp_path / "e",
                            {"humaneval": PublishedFigure(value=0.7, source="r", setting="s")})
    assert not inside[0].outside
    table = published_table([row, *inside])
    assert "| 0.300 | **no** |" in table and "| 0.700 | yes |" in table


def test_no_published_value_is_shown_as_none_and_never_outside(tmp_path):
    _write_items(tmp_path / "e", "gsm8k", [False] * 5)
    (row,) = published_rows("m", tmp_path / "e",
                            {"gsm8k": PublishedFigure(source="r", setting="none found")})
    assert not row.outside
    assert "none published" in published_table([row])


def test_a_published_task_without_an_evaluation_is_an_error(tmp_path):
    _write_items(tmp_path / "e", "gsm8k", [True])
    with pytest.raises(ValueError, match=r"no evaluation of \['bfcl'\]"):
        published_rows("m", tmp_path / "e",
                       {"bfcl": PublishedFigure(value=0.5, source="r", setting="s")})


def test_the_qwen_profile_cites_both_models_on_every_benchmark():
    p = load_profile("qwen-coder-0.5b")
    tasks = {k for k, _ in p.eval.benchmarks()}
    assert set(p.model.published) == tasks == set(p.teacher.published)
    assert p.model.published["humaneval"].value == 0.616
    assert p.teacher.published["humaneval"].value == 0.707
