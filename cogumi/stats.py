"""The statistics behind every relative and capability gate (parameters: gates/statistics.toml).

* ``paired_difference(before, after)``: the same items scored twice; the mean per-item
  difference (after - before) and its interval. A gain gate reads the lower bound (> 0:
  better), a "not worse" gate the upper bound (>= 0: no significant drop). Items scored
  right/wrong (0 or 1) get the exact McNemar interval (``exact_mcnemar``); items with
  fractional scores (a share of k generations) the paired bootstrap (``paired_bootstrap``).
* ``bootstrap_statistic``: the same resampling for a statistic that is not a mean of
  per-item differences (ECE before minus after, computed on each resample).
* ``wilson_interval(k, n)``: a share's interval; a capability is "above chance" when its
  lower bound exceeds the chance level.

Pure Python and numpy only, deterministic for a given seed: a gate's verdict never depends
on the machine it ran on.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import numpy as np

from cogumi.locations import data_root

STATISTICS_FILE = data_root() / "gates" / "statistics.toml"


@dataclass(frozen=True)
class Settings:
    alpha: float
    resamples: int
    seed: int
    capability_alpha: float


@cache
def settings(path: Path = STATISTICS_FILE) -> Settings:
    try:
        raw = tomllib.loads(path.read_text())
        paired, capability = raw["paired"], raw["capability"]
        return Settings(float(paired["alpha"]), int(paired["resamples"]), int(paired["seed"]),
                        float(capability["alpha"]))
    except FileNotFoundError:
        raise ValueError(f"{path}: missing; it fixes how relative gates are decided") from None
    except (KeyError, TypeError, ValueError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: invalid ({exc!r}); needs [paired] alpha, resamples, seed "
                         f"and [capability] alpha") from None


@dataclass(frozen=True)
class Interval:
    """A point estimate with its (1 - alpha) interval, and how it was computed."""
    n: int
    point: float
    lower: float
    upper: float
    method: str

    def to_dict(self) -> dict:
        return asdict(self)


def _z(alpha: float) -> float:
    # Two-sided normal quantile without scipy: inverse error function via statistics.
    from statistics import NormalDist
    return NormalDist().inv_cdf(1 - alpha / 2)


def _same_items(before: Mapping[str, float], after: Mapping[str, float]) -> list[str]:
    """Both sides must score exactly the same item ids: a comparison on different items is
    not paired, and silently intersecting them would hide lost items."""
    if set(before) != set(after):
        only_b = sorted(set(before) - set(after))[:3]
        only_a = sorted(set(after) - set(before))[:3]
        raise ValueError(f"paired comparison on different items: only before {only_b}, "
                         f"only after {only_a}")
    return sorted(before)


def paired_difference(before: Mapping[str, float], after: Mapping[str, float],
                      cfg: Settings | None = None) -> Interval:
    """Mean of (after - before) over the same items with its interval: exact McNemar when
    every score is 0 or 1, the paired bootstrap otherwise (gates/statistics.toml says why)."""
    binary = all(v in (0.0, 1.0) for side in (before, after) for v in side.values())
    return exact_mcnemar(before, after, cfg) if binary else paired_bootstrap(before, after, cfg)


def exact_mcnemar(before: Mapping[str, float], after: Mapping[str, float],
                  cfg: Settings | None = None) -> Interval:
    """Right/wrong items scored twice: the change in the share right, (gained - lost) / n,
    with the exact conditional interval of McNemar's test.

    Only the items that changed carry information: given d = gained + lost of them, gained
    is Binomial(d, theta), and "no change" is theta = 1/2. The Clopper-Pearson interval of
    theta at the gate file's alpha, mapped through delta = d / n * (2 theta - 1), excludes 0
    exactly when the two-sided exact McNemar test rejects at that alpha. A percentile
    bootstrap of the same data calls 4 of 4 changed items significant (exact p = 0.125)."""
    from scipy.stats import beta

    cfg = cfg or settings()
    ids = _same_items(before, after)
    bad = [i for i in ids if before[i] not in (0.0, 1.0) or after[i] not in (0.0, 1.0)]
    if bad:
        raise ValueError(f"exact McNemar needs right/wrong (0/1) scores; item {bad[0]!r} has "
                         f"{before[bad[0]]} -> {after[bad[0]]}")
    n = len(ids)
    if not n:
        return Interval(0, math.nan, math.nan, math.nan, "exact McNemar (no items)")
    gained = sum(1 for i in ids if after[i] > before[i])
    lost = sum(1 for i in ids if after[i] < before[i])
    d = gained + lost
    if d == 0:  # nothing changed: the change is exactly 0 (not -0.0 from the formula)
        return Interval(n, 0.0, 0.0, 0.0, f"exact McNemar (0 of {n} items changed)")
    a = cfg.alpha
    theta_lo = 0.0 if gained == 0 else float(beta.ppf(a / 2, gained, d - gained + 1))
    theta_hi = 1.0 if gained == d else float(beta.ppf(1 - a / 2, gained + 1, d - gained))
    scale = d / n
    return Interval(n, (gained - lost) / n, scale * (2 * theta_lo - 1),
                    scale * (2 * theta_hi - 1),
                    f"exact McNemar ({gained} gained, {lost} lost of {n} items), "
                    f"{100 * (1 - a):g}% Clopper-Pearson interval on the changed items")


def paired_bootstrap(before: Mapping[str, float], after: Mapping[str, float],
                     cfg: Settings | None = None) -> Interval:
    """Mean of (after - before) over the same items, with its paired bootstrap interval."""
    cfg = cfg or settings()
    ids = _same_items(before, after)
    if not ids:
        return Interval(0, math.nan, math.nan, math.nan, "paired bootstrap (no items)")
    diffs = np.array([after[i] - before[i] for i in ids], dtype=float)
    rng = np.random.default_rng(cfg.seed)
    idx = rng.integers(0, len(diffs), size=(cfg.resamples, len(diffs)))
    means = diffs[idx].mean(axis=1)
    lo, hi = np.quantile(means, [cfg.alpha / 2, 1 - cfg.alpha / 2])
    return Interval(len(ids), float(diffs.mean()), float(lo), float(hi),
                    f"paired bootstrap, {cfg.resamples} resamples, seed {cfg.seed}, "
                    f"{100 * (1 - cfg.alpha):g}% percentile interval")


def bootstrap_statistic(n: int, statistic: Callable[[np.ndarray], float],
                        cfg: Settings | None = None) -> Interval:
    """``statistic(indices)`` on all n items and on resamples of them (same seed and count
    as the paired bootstrap): for statistics like ECE that are not item means."""
    cfg = cfg or settings()
    if n == 0:
        return Interval(0, math.nan, math.nan, math.nan, "bootstrap (no items)")
    rng = np.random.default_rng(cfg.seed)
    point = float(statistic(np.arange(n)))
    values = np.array([statistic(rng.integers(0, n, size=n)) for _ in range(cfg.resamples)])
    lo, hi = np.quantile(values, [cfg.alpha / 2, 1 - cfg.alpha / 2])
    return Interval(n, point, float(lo), float(hi),
                    f"bootstrap over items, {cfg.resamples} resamples, seed {cfg.seed}, "
                    f"{100 * (1 - cfg.alpha):g}% percentile interval")


def wilson_interval(successes: float, n: int, cfg: Settings | None = None) -> Interval:
    """Wilson score interval of a share (successes may be fractional: a mean over samples)."""
    cfg = cfg or settings()
    if n <= 0:
        return Interval(0, math.nan, math.nan, math.nan, "Wilson (no items)")
    z = _z(cfg.capability_alpha)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At 0 (or n) successes the formula's bound is 0 (or 1) up to rounding; a rounding
    # residue above 0 would read as "above chance" for a model that got nothing right.
    lower = 0.0 if successes <= 0 else max(0.0, centre - half)
    upper = 1.0 if successes >= n else min(1.0, centre + half)
    return Interval(n, p, lower, upper,
                    f"Wilson score interval, {100 * (1 - cfg.capability_alpha):g}%")
