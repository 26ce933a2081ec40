"""Temperature scaling and ECE on synthetic data with a known answer
(`python -m pytest tests/test_calibration.py`). Under a second."""

from __future__ import annotations

import numpy as np
import pytest

from cogumi.compression import calibration as C


def synthetic(n: int, true_t: float, seed: int):
    """Scores whose calibrated temperature is `true_t`: labels are drawn from softmax(s/true_t)."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(scale=4.0, size=(n, 4))
    p = C.softmax(scores, true_t)
    labels = np.array([rng.choice(4, p=row) for row in p])
    return scores, labels


def test_fit_recovers_the_true_temperature():
    scores, labels = synthetic(4000, 2.5, seed=0)
    t = C.fit_temperature(scores, labels)
    assert t == pytest.approx(2.5, rel=0.1)
    # The fit is the NLL minimum: neighbours on both sides are worse.
    assert C.nll(scores, labels, t) < C.nll(scores, labels, t * 1.2)
    assert C.nll(scores, labels, t) < C.nll(scores, labels, t / 1.2)


def test_overconfident_model_gets_lower_ece_on_held_out_data():
    fit_s, fit_y = synthetic(2000, 3.0, seed=1)
    test_s, test_y = synthetic(2000, 3.0, seed=2)
    t = C.fit_temperature(fit_s, fit_y)
    before = C.ece(*C.top_label(test_s, test_y, 1.0), bins=10)
    after = C.ece(*C.top_label(test_s, test_y, t), bins=10)
    assert before > 0.15  # scores are 3x too sharp: badly overconfident
    assert after < 0.05 and after < before
    # A wrong fit (sharpening instead of softening) makes it worse, not better.
    assert C.ece(*C.top_label(test_s, test_y, 1 / t), bins=10) > before


def test_ece_by_hand():
    conf = np.array([0.95, 0.95, 0.55, 0.55])
    correct = np.array([1.0, 0.0, 1.0, 1.0])
    # bin 0.9-1.0: |0.5 - 0.95| * 2/4; bin 0.5-0.6: |1.0 - 0.55| * 2/4
    assert C.ece(conf, correct, bins=10) == pytest.approx(0.45 * 0.5 + 0.45 * 0.5)
    rows = C.reliability(np.array([0.0, 1.0]), np.array([0.0, 1.0]), bins=10)
    assert rows[0]["count"] == 1 and rows[-1]["count"] == 1


def test_split_is_stable_and_near_the_fraction():
    ids = [f"mmlu-{i}" for i in range(2000)]
    first = [C.split_of(i, 0.5, seed=0) for i in ids]
    assert first == [C.split_of(i, 0.5, seed=0) for i in ids]
    assert 0.45 < first.count("fit") / len(ids) < 0.55


def test_temperature_never_changes_the_top_option():
    scores, labels = synthetic(300, 2.0, seed=3)
    _, correct_1 = C.top_label(scores, labels, 1.0)
    _, correct_t = C.top_label(scores, labels, 4.0)
    assert np.array_equal(correct_1, correct_t)


def test_reliability_diagram_is_written(tmp_path):
    scores, labels = synthetic(400, 2.0, seed=4)
    rows = C.reliability(*C.top_label(scores, labels, 1.0), bins=10)
    out = tmp_path / "reliability.png"
    C.plot_reliability(rows, rows, 0.1, 0.1, 2.0, out, "synthetic")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
