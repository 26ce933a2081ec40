"""Paired and capability statistics (gates/statistics.toml): exact on hand-made items."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cogumi.evaluation.paired import capability, compare_with_input
from cogumi.stats import (
    bootstrap_statistic,
    exact_mcnemar,
    paired_bootstrap,
    paired_difference,
    wilson_interval,
)


def test_no_change_has_a_zero_interval():
    same = {f"i{k}": float(k % 2) for k in range(40)}
    iv = paired_bootstrap(same, same)
    assert (iv.point, iv.lower, iv.upper) == (0.0, 0.0, 0.0)


def test_a_uniform_gain_is_certain():
    before = {f"i{k}": 0.0 for k in range(10)}
    after = {f"i{k}": 1.0 for k in range(10)}
    iv = paired_bootstrap(before, after)
    assert (iv.point, iv.lower, iv.upper) == (1.0, 1.0, 1.0)


def test_one_flipped_item_of_a_hundred_is_not_a_gain():
    # Issue 11: a gain gate passed on one flipped item out of about 110; the lower bound is 0.
    before = {f"i{k}": 0.0 for k in range(100)}
    after = {**before, "i0": 1.0}
    iv = paired_bootstrap(before, after)
    assert iv.point == pytest.approx(0.01) and iv.lower <= 0.0


def test_pairing_refuses_different_items():
    with pytest.raises(ValueError, match="different items"):
        paired_bootstrap({"a": 1.0}, {"b": 1.0})


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=60))
def test_the_interval_contains_the_point_and_is_deterministic(pairs):
    before = {f"i{k}": float(b) for k, (b, _) in enumerate(pairs)}
    after = {f"i{k}": float(a) for k, (_, a) in enumerate(pairs)}
    iv = paired_bootstrap(before, after)
    assert iv.lower <= iv.point + 1e-12 and iv.point <= iv.upper + 1e-12
    assert paired_bootstrap(before, after) == iv


def test_wilson_interval_matches_the_formula():
    iv = wilson_interval(20, 40)
    assert iv.lower == pytest.approx(0.3520, abs=1e-4)
    assert iv.upper == pytest.approx(0.6480, abs=1e-4)
    assert wilson_interval(0, 40).lower == 0.0  # nothing right is never above chance 0
    assert wilson_interval(2, 40).lower > 0.0


def test_bootstrap_statistic_is_seeded():
    import numpy as np
    values = np.arange(30, dtype=float)
    a = bootstrap_statistic(30, lambda idx: float(values[idx].mean()))
    b = bootstrap_statistic(30, lambda idx: float(values[idx].mean()))
    assert a == b and a.point == pytest.approx(14.5) and a.lower < 14.5 < a.upper


def _items(folder, task, verdicts):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "items.jsonl", "a") as f:
        for i, v in enumerate(verdicts):
            f.write(json.dumps({"task": task, "item_id": f"{task}-{i}", "verdicts": [v]}) + "\n")


def test_a_collapse_like_2a_on_tiny_is_significantly_worse(tmp_path):
    # Issue 11: 2A signed off on sparsity alone while MATH fell 0.525 -> 0.200 on 40 items.
    before, after = tmp_path / "before", tmp_path / "after"
    _items(before, "math", [True] * 21 + [False] * 19)
    _items(after, "math", [True] * 8 + [False] * 32)
    metrics, rows = compare_with_input(before, after)
    assert metrics["vs_input.math.accuracy.delta"] == pytest.approx(-0.325)
    assert metrics["vs_input.worst_delta_upper"] < 0
    assert rows[0]["before"] == pytest.approx(0.525) and rows[0]["after"] == pytest.approx(0.2)


def test_an_unchanged_model_is_not_worse(tmp_path):
    before, after = tmp_path / "before", tmp_path / "after"
    for folder in (before, after):
        _items(folder, "math", [True] * 21 + [False] * 19)
        _items(folder, "mmlu", [True] * 10 + [False] * 30)
    metrics, _ = compare_with_input(before, after)
    assert metrics["vs_input.worst_delta_upper"] == 0.0


def test_a_task_on_one_side_only_is_an_error(tmp_path):
    before, after = tmp_path / "before", tmp_path / "after"
    _items(before, "math", [True])
    _items(before, "code", [True])
    _items(after, "math", [True])
    with pytest.raises(ValueError, match="different tasks"):
        compare_with_input(before, after)


def test_capability_is_the_wilson_lower_bound_above_chance(tmp_path):
    _items(tmp_path, "mmlu", [True] * 10 + [False] * 30)  # 0.25 on 40 items: chance
    _items(tmp_path, "math", [True] * 4 + [False] * 36)
    metrics, _ = capability(tmp_path)
    assert metrics["mmlu.accuracy.lower95_above_chance"] < 0
    assert metrics["math.accuracy.lower95_above_chance"] > 0


def _flips(n: int, gained: int, lost: int, right_before: int = 0):
    """n items: `gained` go 0 -> 1, `lost` go 1 -> 0, `right_before` stay right."""
    before, after = {}, {}
    for k in range(n):
        if k < gained:
            before[f"i{k}"], after[f"i{k}"] = 0.0, 1.0
        elif k < gained + lost:
            before[f"i{k}"], after[f"i{k}"] = 1.0, 0.0
        elif k < gained + lost + right_before:
            before[f"i{k}"], after[f"i{k}"] = 1.0, 1.0
        else:
            before[f"i{k}"], after[f"i{k}"] = 0.0, 0.0
    return before, after


def test_four_of_four_changed_items_are_not_significant_under_exact_mcnemar():
    # The bootstrap's flaw (stop 18): 4 gained, 0 lost of 150 has exact two-sided p = 0.125.
    before, after = _flips(150, gained=4, lost=0)
    assert paired_bootstrap(before, after).lower > 0          # the flaw this replaces
    iv = exact_mcnemar(before, after)
    assert iv.point == pytest.approx(4 / 150) and iv.lower < 0 < iv.upper


def test_ten_of_ten_changed_items_are_significant():
    before, after = _flips(150, gained=0, lost=10, right_before=100)   # exact p = 0.002
    iv = exact_mcnemar(before, after)
    assert iv.upper < 0 and iv.point == pytest.approx(-10 / 150)


def test_no_changed_item_is_no_change():
    before, after = _flips(50, gained=0, lost=0, right_before=20)
    iv = exact_mcnemar(before, after)
    assert (iv.point, iv.lower, iv.upper) == (0.0, 0.0, 0.0)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 30), st.integers(0, 30), st.integers(0, 60))
def test_the_interval_excludes_zero_exactly_when_the_exact_test_rejects(gained, lost, same):
    from scipy.stats import binom

    before, after = _flips(gained + lost + same + 1, gained, lost, right_before=same)
    iv = exact_mcnemar(before, after)
    d = gained + lost
    p = 1.0 if d == 0 else min(1.0, 2 * min(binom.cdf(gained, d, 0.5),
                                            binom.sf(gained - 1, d, 0.5)))
    assert (iv.lower > 0 or iv.upper < 0) == (p < 0.05)
    assert iv.lower <= iv.point <= iv.upper


def test_paired_difference_picks_the_test_by_the_scores():
    before, after = _flips(40, gained=3, lost=1)
    assert paired_difference(before, after).method.startswith("exact McNemar")
    shares = {k: v / 2 for k, v in after.items()}
    assert paired_difference(before, shares).method.startswith("paired bootstrap")
    with pytest.raises(ValueError, match="0/1"):
        exact_mcnemar(before, shares)
