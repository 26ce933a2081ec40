"""Temperature scaling (Guo et al., 2017) and expected calibration error.

The model's confidence in a multiple-choice answer is the softmax over the options' answer
log-likelihoods; the verifier (the answer key) labels the top option right or wrong.
Temperature scaling divides those scores by one scalar T fitted to minimise the negative
log-likelihood of the right option on a held-out split; it never changes which option is on
top, so accuracy is untouched and only the confidence moves. ECE is measured on the *other*
split, before (T = 1) and after.

NLL(beta) with beta = 1/T is convex (a log-sum-exp minus a linear term), so a bounded
scalar minimisation over log T finds the optimum.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


def softmax(scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(scores, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(scores: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    p = softmax(scores, temperature)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(labels)), labels], 1e-300, None))))


T_BOUNDS = (0.05, 20.0)
"""Search range for T; a fit at the upper end means the scores are close to uninformative."""


def fit_temperature(scores: np.ndarray, labels: np.ndarray,
                    bounds: tuple[float, float] = T_BOUNDS) -> float:
    """The T minimising NLL of the true labels (scipy's bounded Brent search on log T)."""
    from scipy.optimize import minimize_scalar

    if len(labels) == 0:
        raise ValueError("cannot fit a temperature on an empty split")
    res = minimize_scalar(lambda log_t: nll(scores, labels, float(np.exp(log_t))),
                          bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded",
                          options={"xatol": 1e-5})
    return float(np.exp(res.x))


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int) -> list[dict]:
    """Equal-width confidence bins: count, mean confidence and accuracy of each."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    # A confidence of exactly 1.0 belongs in the last bin, 0.0 in the first.
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    out = []
    for b in range(bins):
        mask = which == b
        n = int(mask.sum())
        out.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": n,
                    "confidence": float(confidence[mask].mean()) if n else None,
                    "accuracy": float(correct[mask].mean()) if n else None})
    return out


def ece(confidence: np.ndarray, correct: np.ndarray, bins: int) -> float:
    """Expected calibration error: sum over bins of (n_b / N) * |accuracy_b - confidence_b|."""
    n = len(confidence)
    if n == 0:
        return float("nan")
    return float(sum(b["count"] / n * abs(b["accuracy"] - b["confidence"])
                     for b in reliability(confidence, correct, bins) if b["count"]))


def top_label(scores: np.ndarray, labels: np.ndarray, temperature: float):
    """(confidence of the top option, whether the top option is the right one)."""
    p = softmax(scores, temperature)
    return p.max(axis=1), (p.argmax(axis=1) == labels).astype(np.float64)


def split_of(item_id: str, fit_fraction: float, seed: int) -> str:
    """'fit' or 'test', from a hash of the item id: stable across runs and item order."""
    h = int(hashlib.sha256(f"{seed}:{item_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "fit" if h < fit_fraction else "test"


def plot_reliability(before: list[dict], after: list[dict], ece_before: float,
                     ece_after: float, temperature: float, out: Path, title: str) -> None:
    """Reliability diagram (accuracy against confidence per bin), before and after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharey=True)
    for ax, rows, name, value in ((axes[0], before, "before (T = 1)", ece_before),
                                  (axes[1], after, f"after (T = {temperature:.3g})", ece_after)):
        width = rows[0]["upper"] - rows[0]["lower"]
        mids = [r["lower"] + width / 2 for r in rows]
        acc = [r["accuracy"] if r["count"] else 0.0 for r in rows]
        ax.bar(mids, acc, width=width * 0.95, edgecolor="black", label="accuracy")
        gaps = [(m, r["confidence"]) for m, r in zip(mids, rows, strict=True) if r["count"]]
        ax.scatter([m for m, _ in gaps], [c for _, c in gaps], color="red", zorder=3,
                   s=14, label="mean confidence")
        for m, r in zip(mids, rows, strict=True):
            if r["count"]:
                ax.text(m, 0.02, str(r["count"]), ha="center", fontsize=7, color="white")
        ax.plot([0, 1], [0, 1], "k--", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top option)")
        ax.set_title(f"{name}: ECE {value:.4f}")
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
