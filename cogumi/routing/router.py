"""The router: a query's text -> one route ("base" or a modifier's name) and its margin.

A router is a feature map and a multinomial logistic regression (scikit-learn) over it.
Two feature maps are candidates (phase 4A measures both and picks one by a stated rule):

- ``hashed-ngrams``: scikit-learn's HashingVectorizer over character n-grams inside word
  boundaries (``char_wb``), l2-normalised counts. Stateless: the artifact is the regression's
  weights and the vectorizer's parameters, nothing learnt from the vocabulary.
- ``llama-embedding``: the shipped base model's own mean-pooled embedding of the query,
  through llama.cpp (``Llama(embedding=True)``). At serving time it costs one prompt pass of
  the base model; the artifact names the GGUF by sha256 and the server passes its path.

On disk (``router/``): ``router.json`` (routes, classes, features, training summary) and
``weights.npz`` (the regression's ``coef`` and ``intercept``). No pickle: the server loads
a bundle it did not write, and the weights are plain arrays.

The margin is the regression's probability of the chosen route minus that of the runner-up
(in [0, 1]; 1 when only one route was ever a label): a serving-time signal for escalation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cogumi.artifacts import sha256_file

ROUTER_JSON = "router.json"
WEIGHTS = "weights.npz"
FORMAT = 1
FEATURE_KINDS = ("hashed-ngrams", "llama-embedding")


class RouterFileError(ValueError):
    """A router folder that cannot be loaded; one line naming the file and key."""


# ---------------------------------------------------------------------- feature maps
@dataclass
class HashedNgrams:
    """Character n-grams hashed into ``n_features`` buckets (scikit-learn)."""
    ngram_range: tuple[int, int] = (2, 4)
    n_features: int = 2 ** 16

    kind = "hashed-ngrams"

    def __post_init__(self) -> None:
        from sklearn.feature_extraction.text import HashingVectorizer
        self._vec = HashingVectorizer(analyzer="char_wb", ngram_range=tuple(self.ngram_range),
                                      n_features=int(self.n_features), alternate_sign=False,
                                      norm="l2", lowercase=True)

    def transform(self, texts: Sequence[str]):
        return self._vec.transform(list(texts))

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "analyzer": "char_wb", "ngram_range": list(self.ngram_range),
                "n_features": int(self.n_features), "norm": "l2", "lowercase": True}

    def close(self) -> None:
        pass


@dataclass
class LlamaEmbedding:
    """The base GGUF's mean-pooled, l2-normalised embedding of the text (llama.cpp)."""
    gguf: Path
    n_ctx: int = 1024
    n_threads: int | None = None
    gguf_sha256: str = ""
    _llama: Any = field(default=None, repr=False)
    _memo: dict = field(default_factory=dict, repr=False)

    kind = "llama-embedding"

    def __post_init__(self) -> None:
        from cogumi.llama_cpp_build import load_llama_cpp
        llama_cpp = load_llama_cpp("the llama-embedding router")
        self.gguf = Path(self.gguf)
        if not self.gguf_sha256:
            self.gguf_sha256 = sha256_file(self.gguf)
        self._llama = llama_cpp.Llama(model_path=str(self.gguf), embedding=True,
                                      pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                                      n_ctx=self.n_ctx, n_threads=self.n_threads,
                                      verbose=False, seed=0)

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        # truncate=True: a query longer than the batch is embedded from its start. Memoised:
        # cross-validation embeds the same queries once per fold, and a text's embedding
        # does not depend on what else is embedded.
        for t in texts:
            if t not in self._memo:
                self._memo[t] = np.asarray(self._llama.embed(t, normalize=True, truncate=True),
                                           dtype=np.float64)
        return np.stack([self._memo[t] for t in texts])

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "gguf_sha256": self.gguf_sha256, "pooling": "mean",
                "normalize": "l2", "n_ctx": self.n_ctx, "truncation": "first n_ctx tokens"}

    def close(self) -> None:
        if self._llama is not None:
            self._llama.close()
            self._llama = None



def make_features(kind: str, *, base_gguf: Path | None = None, n_ctx: int = 1024,
                  n_threads: int | None = None, **params):
    if kind == "hashed-ngrams":
        return HashedNgrams(**params)
    if kind == "llama-embedding":
        if base_gguf is None:
            raise ValueError("the llama-embedding features need the base GGUF (base_gguf=...)")
        return LlamaEmbedding(Path(base_gguf), n_ctx=n_ctx, n_threads=n_threads)
    raise ValueError(f"unknown router features {kind!r} (known: {', '.join(FEATURE_KINDS)})")


# ---------------------------------------------------------------------- the router
class Router:
    """``Router.fit(queries, labels, routes, features)``, ``.route(query)``, ``.save(folder)``,
    ``Router.load(folder)``."""

    def __init__(self, routes: Sequence[str], classes: Sequence[str], features,
                 coef: np.ndarray | None, intercept: np.ndarray | None,
                 info: dict[str, Any] | None = None) -> None:
        self.routes: tuple[str, ...] = tuple(routes)
        self.classes: tuple[str, ...] = tuple(classes)
        unknown = [c for c in self.classes if c not in self.routes]
        if unknown or not self.classes:
            raise ValueError(f"router classes {list(self.classes)} must be a non-empty subset "
                             f"of its routes {list(self.routes)}")
        self.features = features
        self.info = dict(info or {})
        self._model = None
        if len(self.classes) > 1:
            from sklearn.linear_model import LogisticRegression
            # The fitted state of a LogisticRegression is exactly these arrays: restoring them
            # gives scikit-learn's own predict_proba, not a re-implementation of it.
            m = LogisticRegression()
            m.classes_ = np.array(self.classes)
            m.coef_ = np.asarray(coef, dtype=np.float64)
            m.intercept_ = np.asarray(intercept, dtype=np.float64)
            m.n_features_in_ = m.coef_.shape[1]
            m.n_iter_ = np.array([0])
            self._model = m

    # ------------------------------------------------------------------ fit
    @classmethod
    def fit(cls, queries: Sequence[str], labels: Sequence[str], routes: Sequence[str],
            features, *, C: float = 1.0, seed: int = 0) -> Router:
        if len(queries) != len(labels) or not queries:
            raise ValueError(f"router fit: {len(queries)} queries for {len(labels)} labels")
        bad = sorted({lab for lab in labels if lab not in routes})
        if bad:
            raise ValueError(f"router fit: labels {bad} are not routes {list(routes)}")
        classes = [r for r in routes if r in set(labels)]
        info = {"trained_on": len(queries), "C": C,
                "label_counts": {r: int(sum(1 for lab in labels if lab == r)) for r in routes}}
        if len(classes) == 1:
            # Every label is the same route: nothing to learn, the router always picks it.
            return cls(routes, classes, features, None, None, {**info, "constant": True})
        from sklearn.linear_model import LogisticRegression
        X = features.transform(queries)
        m = LogisticRegression(C=C, max_iter=5000, random_state=seed)
        m.fit(X, list(labels))
        order = [list(m.classes_).index(c) for c in classes] if len(classes) > 2 else None
        coef, intercept = m.coef_, m.intercept_
        if order is not None:  # rows in our class order (scikit-learn sorts them)
            coef, intercept = coef[order], intercept[order]
        elif list(m.classes_) != classes:  # binary: one row, for classes_[1]
            coef, intercept = -coef, -intercept
        return cls(routes, classes, features, coef, intercept, info)

    # ------------------------------------------------------------------ routing
    def probabilities(self, queries: Sequence[str]) -> np.ndarray:
        """P(route) per query, columns in ``self.classes`` order."""
        if self._model is None:
            return np.ones((len(queries), 1))
        return self._model.predict_proba(self.features.transform(queries))

    def route_many(self, queries: Sequence[str]) -> list[tuple[str, float]]:
        if not queries:
            return []
        p = self.probabilities(queries)
        out = []
        for row in p:
            order = np.argsort(-row, kind="stable")
            top = float(row[order[0]])
            second = float(row[order[1]]) if len(row) > 1 else 0.0
            out.append((self.classes[int(order[0])], min(1.0, max(0.0, top - second))))
        return out

    def route(self, query: str) -> tuple[str, float]:
        """(route, margin): the most probable route and P(it) - P(runner-up), in [0, 1]."""
        return self.route_many([query])[0]

    def latency_s(self, queries: Sequence[str]) -> list[float]:
        """Wall seconds of route() per query, one at a time as a server calls it."""
        out = []
        for q in queries:
            t0 = time.perf_counter()
            self.route(q)
            out.append(time.perf_counter() - t0)
        return out

    def close(self) -> None:
        self.features.close()

    # ------------------------------------------------------------------ files
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "routes": list(self.routes), "classes": list(self.classes),
                "features": self.features.describe(),
                "model": ("constant" if self._model is None else
                          "multinomial logistic regression (scikit-learn)"),
                "margin": "P(chosen route) - P(runner-up)", "weights": WEIGHTS, **self.info}
        arrays = ({"coef": self._model.coef_, "intercept": self._model.intercept_}
                  if self._model is not None else {"coef": np.zeros((0, 0)),
                                                   "intercept": np.zeros(0)})
        np.savez_compressed(folder / WEIGHTS, **arrays)
        (folder / ROUTER_JSON).write_text(json.dumps(meta, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path, *, base_gguf: str | Path | None = None,
             n_threads: int | None = None) -> Router:
        """A saved router. ``base_gguf``: the base model, for a router over its embedding
        (default: ``model.gguf`` beside the folder, as a bundle lays it out); it must be the
        GGUF the router was trained on (sha256 checked)."""
        folder = Path(folder)
        path = folder / ROUTER_JSON
        try:
            meta = json.loads(path.read_text())
        except FileNotFoundError:
            raise RouterFileError(f"{path}: missing (not a router folder)") from None
        except json.JSONDecodeError as e:
            raise RouterFileError(f"{path}: not JSON (line {e.lineno}: {e.msg})") from None
        for key in ("format", "routes", "classes", "features"):
            if key not in meta:
                raise RouterFileError(f"{path}: missing key '{key}'")
        if meta["format"] != FORMAT:
            raise RouterFileError(f"{path}: key 'format' is {meta['format']!r}; this cogumi "
                                  f"reads format {FORMAT}")
        feats = dict(meta["features"])
        kind = feats.get("kind")
        if kind == "hashed-ngrams":
            features = HashedNgrams(tuple(feats["ngram_range"]), int(feats["n_features"]))
        elif kind == "llama-embedding":
            gguf = Path(base_gguf) if base_gguf is not None else folder.parent / "model.gguf"
            if not gguf.is_file():
                raise RouterFileError(f"{path}: the router reads the base model's embedding; "
                                      f"{gguf} is missing (pass base_gguf=...)")
            digest = sha256_file(gguf)
            if digest != feats.get("gguf_sha256"):
                raise RouterFileError(f"{path}: key 'features.gguf_sha256' names "
                                      f"{str(feats.get('gguf_sha256'))[:12]}..., but {gguf} is "
                                      f"{digest[:12]}...")
            features = LlamaEmbedding(gguf, n_ctx=int(feats.get("n_ctx", 1024)),
                                      n_threads=n_threads, gguf_sha256=digest)
        else:
            raise RouterFileError(f"{path}: key 'features.kind' is {kind!r}; known: "
                                  f"{', '.join(FEATURE_KINDS)}")
        wpath = folder / meta.get("weights", WEIGHTS)
        try:
            with np.load(wpath) as w:
                coef, intercept = w["coef"], w["intercept"]
        except FileNotFoundError:
            raise RouterFileError(f"{wpath}: missing (named by {path} key 'weights')") from None
        except (KeyError, ValueError) as e:
            raise RouterFileError(f"{wpath}: unreadable weights ({e})") from None
        info = {k: v for k, v in meta.items()
                if k not in ("format", "routes", "classes", "features", "weights", "model",
                             "margin")}
        classes = meta["classes"]
        if len(classes) > 1 and coef.shape[0] != (len(classes) if len(classes) > 2 else 1):
            raise RouterFileError(f"{wpath}: coef has {coef.shape[0]} rows for "
                                  f"{len(classes)} classes")
        try:
            return cls(meta["routes"], classes, features, coef if len(classes) > 1 else None,
                       intercept if len(classes) > 1 else None, info)
        except ValueError as e:
            raise RouterFileError(f"{path}: {e}") from None

    def size_bytes(self, folder: str | Path) -> int:
        folder = Path(folder)
        return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
