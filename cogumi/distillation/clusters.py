"""Failure clusters: how many, which, and what they are about.

The number of clusters is chosen by one stated criterion: k-means (scikit-learn, k-means++
initialisation, 10 restarts, the profile's seed) for every k in the declared range, and the
k with the highest mean silhouette (scikit-learn's ``silhouette_score``, euclidean on
L2-normalised embeddings, i.e. a monotone function of cosine distance) wins; ties go to the
smaller k. Silhouette is defined for 2 <= k <= n - 1, so the range searched is the declared
one cut to that; when even its lower end cannot be reached (fewer than clusters_min + 1
failures), the search runs over 2 .. n - 1 and says so, and fewer than 3 failures make one
cluster (no criterion can compare counts). Top terms: scikit-learn's TF-IDF over the member
prompts (English stop words removed), a cluster's terms those of highest mean weight.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Clustering:
    k: int
    labels: np.ndarray
    centroids: np.ndarray
    silhouette: dict[int, float] = field(default_factory=dict)
    declared: tuple[int, int] = (0, 0)
    searched: tuple[int, int] | None = None
    note: str = ""

    @property
    def criterion(self) -> str:
        if self.searched is None:
            return f"one cluster: {self.note}"
        lo, hi = self.searched
        s = (f"k-means for k = {lo}..{hi}, highest mean silhouette (cosine geometry): k = "
             f"{self.k} ({self.silhouette[self.k]:.3f})")
        return s + (f"; {self.note}" if self.note else "")

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest centroid of each row (normalised like the fit) and its distance."""
        z = normalise(x)
        d = np.linalg.norm(z[:, None, :] - self.centroids[None, :, :], axis=2)
        return d.argmin(axis=1), d.min(axis=1)


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n == 0, 1.0, n)


def choose_clusters(x: np.ndarray, k_min: int, k_max: int, seed: int) -> Clustering:
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    z = normalise(x)
    n = len(z)
    if n == 0:
        return Clustering(0, np.zeros(0, int), np.zeros((0, z.shape[1] if z.ndim == 2 else 0)),
                          declared=(k_min, k_max), note="no failures")
    if n < 3 or len(np.unique(z.round(12), axis=0)) < 3:
        return Clustering(1, np.zeros(n, int), z.mean(axis=0, keepdims=True),
                          declared=(k_min, k_max),
                          note=f"{n} failures (fewer than 3 distinct): no count to compare")
    lo, hi = max(2, k_min), min(k_max, n - 1)
    note = ""
    if lo > hi:
        lo, hi = 2, min(k_max, n - 1)
        note = (f"only {n} failures: the declared range {k_min}..{k_max} needs at least "
                f"{k_min + 1}, so 2..{hi} was searched")
    best = None
    scores: dict[int, float] = {}
    fits = {}
    for k in range(lo, hi + 1):
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(z)
        if len(set(km.labels_)) < 2:
            continue
        scores[k] = float(silhouette_score(z, km.labels_))
        fits[k] = km
        if best is None or scores[k] > scores[best] + 1e-12:
            best = k
    if best is None:
        return Clustering(1, np.zeros(n, int), z.mean(axis=0, keepdims=True),
                          declared=(k_min, k_max), note="k-means found one group only")
    km = fits[best]
    return Clustering(best, km.labels_.astype(int), km.cluster_centers_, scores,
                      (k_min, k_max), (lo, hi), note)


def top_terms(texts: list[str], labels: np.ndarray, k: int, n_terms: int = 6) -> list[list[str]]:
    """The ``n_terms`` terms of highest mean TF-IDF weight in each cluster's texts."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    try:
        vec = TfidfVectorizer(stop_words="english", token_pattern=r"(?u)\b[A-Za-z_][A-Za-z_]+\b")
        m = vec.fit_transform(texts)
    except ValueError:  # every text is stop words or numbers
        return [[] for _ in range(k)]
    vocab = np.array(vec.get_feature_names_out())
    out = []
    for c in range(k):
        rows = np.flatnonzero(labels == c)
        if not len(rows):
            out.append([])
            continue
        w = np.asarray(m[rows].mean(axis=0)).ravel()
        order = [i for i in np.argsort(-w, kind="stable") if w[i] > 0][:n_terms]
        out.append([str(vocab[i]) for i in order])
    return out


def mean_pooled_embeddings(model, tokenizer, texts: list[str], batch_size: int = 16,
                           add_bos: bool | None = None, device: str = "cpu") -> np.ndarray:
    """The model's own representation of each text: its last hidden state averaged over the
    text's tokens (padding excluded), one row per text, float64."""
    import torch

    rows = []
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    was_training = base.training
    base.eval()
    bos = tokenizer.bos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (
        tokenizer.eos_token_id or 0)
    try:
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                ids = [tokenizer(t, add_special_tokens=False)["input_ids"]
                       for t in texts[i:i + batch_size]]
                if add_bos and bos is not None:
                    ids = [x if x[:1] == [bos] else [bos] + x for x in ids]
                width = max(len(x) for x in ids)
                inp = torch.full((len(ids), width), pad, dtype=torch.long)
                mask = torch.zeros((len(ids), width), dtype=torch.long)
                for j, x in enumerate(ids):
                    inp[j, :len(x)] = torch.tensor(x)
                    mask[j, :len(x)] = 1
                out = model(input_ids=inp.to(device), attention_mask=mask.to(device),
                            output_hidden_states=True)
                h = out.hidden_states[-1].float()
                m = mask.to(h.device).unsqueeze(-1).float()
                rows.append(((h * m).sum(1) / m.sum(1).clamp(min=1)).cpu().double().numpy())
    finally:
        if was_training:
            base.train()
    return np.concatenate(rows) if rows else np.zeros((0, 0))
