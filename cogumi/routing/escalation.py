"""Escalation: P(the system's answer is wrong) from signals a server has for every query.

The signals are computable at serving time only, from the one greedy generation through
llama.cpp and the router's decision (:func:`serving_signals` computes them, the same way in
phase 4B and in the server):

- ``mean_logprob``: the mean over generated tokens of the chosen token's log-probability;
- ``min_logprob``: the lowest of them (one confidently wrong token);
- ``router_margin``: P(chosen route) - P(runner-up) from the router.

The model is scikit-learn's StandardScaler and LogisticRegression over those signals
(label 1: the verifier rejected the answer). ``escalation.json`` holds the fitted arrays
(no pickle); loading restores them into the same scikit-learn objects.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

SIGNALS = ("mean_logprob", "min_logprob", "router_margin")
FORMAT = 1


class EscalationFileError(ValueError):
    """An escalation file that cannot be loaded; one line naming the file and key."""


def serving_signals(token_logprobs: Sequence[float] | None, router_margin: float) -> dict:
    """The escalation signals of one greedy generation: its chosen tokens' log-probabilities
    (llama.cpp's ``logprobs`` of the completion) and the router's margin. A generation with
    no tokens gets the lowest log-probability llama.cpp can report for a token, so it reads as
    the least confident answer (an empty answer is never right)."""
    lps = [float(x) for x in (token_logprobs or []) if x is not None and math.isfinite(x)]
    if not lps:
        lps = [EMPTY_LOGPROB]
    return {"mean_logprob": float(np.mean(lps)), "min_logprob": float(min(lps)),
            "router_margin": float(router_margin)}


#: What an empty generation reads as: far below any token's log-probability in practice.
EMPTY_LOGPROB = -30.0


class Escalation:
    """``Escalation.fit(rows, wrong)``, ``.p_wrong(signals)``, ``.save(path)``, ``.load(path)``."""

    def __init__(self, signals: Sequence[str], *, mean=None, scale=None, coef=None,
                 intercept=None, constant: float | None = None,
                 info: dict[str, Any] | None = None) -> None:
        self.signals: tuple[str, ...] = tuple(signals)
        self.constant = constant
        self.info = dict(info or {})
        self._pipe = None
        if constant is None:
            from sklearn.linear_model import LogisticRegression
            from sklearn.pipeline import make_pipeline
            from sklearn.preprocessing import StandardScaler
            # The fitted state of these two estimators is exactly these arrays.
            scaler = StandardScaler()
            scaler.mean_ = np.asarray(mean, dtype=np.float64)
            scaler.scale_ = np.asarray(scale, dtype=np.float64)
            scaler.var_ = scaler.scale_ ** 2
            scaler.n_features_in_ = len(self.signals)
            scaler.n_samples_seen_ = 0
            lr = LogisticRegression()
            lr.classes_ = np.array([0, 1])
            lr.coef_ = np.asarray(coef, dtype=np.float64).reshape(1, -1)
            lr.intercept_ = np.asarray(intercept, dtype=np.float64).reshape(1)
            lr.n_features_in_ = len(self.signals)
            lr.n_iter_ = np.array([0])
            self._pipe = make_pipeline(scaler, lr)

    @classmethod
    def fit(cls, rows: Sequence[Mapping[str, float]], wrong: Sequence[bool],
            signals: Sequence[str] = SIGNALS, *, C: float = 1.0, seed: int = 0) -> Escalation:
        if len(rows) != len(wrong) or not rows:
            raise ValueError(f"escalation fit: {len(rows)} signal rows for {len(wrong)} labels")
        y = np.array([int(bool(w)) for w in wrong])
        info = {"trained_on": len(rows), "wrong_share": float(y.mean()), "C": C}
        if y.min() == y.max():
            # Every answer right (or every one wrong): the probability is that share.
            return cls(signals, constant=float(y[0]), info=info)
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        X = _matrix(rows, signals)
        pipe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000,
                                                                  random_state=seed))
        pipe.fit(X, y)
        scaler, lr = pipe[0], pipe[1]
        return cls(signals, mean=scaler.mean_, scale=scaler.scale_, coef=lr.coef_[0],
                   intercept=lr.intercept_[0], info=info)

    def p_wrong_many(self, rows: Sequence[Mapping[str, float]]) -> np.ndarray:
        X = _matrix(rows, self.signals)  # a missing signal is an error for every model kind
        if self.constant is not None:
            return np.full(len(rows), self.constant)
        return self._pipe.predict_proba(X)[:, 1]

    def p_wrong(self, signals: Mapping[str, float]) -> float:
        """P(wrong) for one query's signals (a dict with every name of ``self.signals``)."""
        return float(self.p_wrong_many([signals])[0])

    def to_dict(self) -> dict[str, Any]:
        if self.constant is not None:
            model: dict[str, Any] = {"kind": "constant", "p_wrong": self.constant}
        else:
            scaler, lr = self._pipe[0], self._pipe[1]
            model = {"kind": "standardised logistic regression (scikit-learn)",
                     "mean": scaler.mean_.tolist(), "scale": scaler.scale_.tolist(),
                     "coef": lr.coef_[0].tolist(), "intercept": float(lr.intercept_[0])}
        return {"format": FORMAT, "signals": list(self.signals), "label": "1 = wrong answer",
                "model": model, **self.info}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Escalation:
        path = Path(path)
        try:
            meta = json.loads(path.read_text())
        except FileNotFoundError:
            raise EscalationFileError(f"{path}: missing") from None
        except json.JSONDecodeError as e:
            raise EscalationFileError(f"{path}: not JSON (line {e.lineno}: {e.msg})") from None
        for key in ("format", "signals", "model"):
            if key not in meta:
                raise EscalationFileError(f"{path}: missing key '{key}'")
        if meta["format"] != FORMAT:
            raise EscalationFileError(f"{path}: key 'format' is {meta['format']!r}; this "
                                      f"cogumi reads format {FORMAT}")
        model = meta["model"]
        info = {k: v for k, v in meta.items() if k not in ("format", "signals", "model",
                                                           "label")}
        if model.get("kind") == "constant":
            return cls(meta["signals"], constant=float(model["p_wrong"]), info=info)
        n = len(meta["signals"])
        for key in ("mean", "scale", "coef"):
            if len(model.get(key, [])) != n:
                raise EscalationFileError(f"{path}: key 'model.{key}' needs {n} values (one "
                                          f"per signal)")
        if "intercept" not in model:
            raise EscalationFileError(f"{path}: missing key 'model.intercept'")
        return cls(meta["signals"], mean=model["mean"], scale=model["scale"],
                   coef=model["coef"], intercept=model["intercept"], info=info)


def _matrix(rows: Sequence[Mapping[str, float]], signals: Sequence[str]) -> np.ndarray:
    missing = [s for s in signals if any(s not in r for r in rows)]
    if missing:
        raise KeyError(f"escalation signals {missing} missing from a row (needs "
                       f"{', '.join(signals)})")
    return np.array([[float(r[s]) for s in signals] for r in rows], dtype=np.float64)
