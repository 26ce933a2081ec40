"""Route labels for held-out queries, the confusion matrix, and the route outcomes file.

Two labellings of a query whose every route was run and verified:

- **verifier** (the one the router is trained on): the route whose answer the verifier
  accepts. Ties (several routes accepted) go to ``base`` when base is among them (no adapter
  to apply, and nothing to lose when it is right), then to the query's source-domain
  modifier, then to the first accepted route in route order. No route accepted is a tie of
  all routes (each is as wrong as the others) and follows the same rule: base.
- **source domain**: the modifier whose evaluation task is the query's task, else ``base``.

``route_outcomes.jsonl`` (the contract between 4A, 4B and 4C): one line per held-out query,
``{"id", "split", "domain", "query", "routes": {route: {"correct", "mean_logprob",
"min_logprob", "completion_tokens"}}, "router": {"route", "margin"}}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

BASE = "base"
SPLITS = ("fit", "report")


class OutcomesFileError(ValueError):
    """A route outcomes file that does not follow the contract; one line with file:line."""


def source_route(domain: str, domain_routes: Mapping[str, str]) -> str:
    """The modifier declared for a query's domain (task), or base."""
    return domain_routes.get(domain, BASE)


def verifier_label(correct: Mapping[str, bool], source: str, routes: Sequence[str]) -> str:
    accepted = [r for r in routes if correct.get(r)] or list(routes)
    if BASE in accepted:
        return BASE
    if source in accepted:
        return source
    return accepted[0]


def confusion(true: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> dict:
    """Rows: the label; columns: the router's route (scikit-learn's confusion_matrix)."""
    from sklearn.metrics import confusion_matrix
    m = confusion_matrix(list(true), list(pred), labels=list(labels)) if true else \
        np.zeros((len(labels), len(labels)), dtype=int)
    per = {}
    for i, lab in enumerate(labels):
        support = int(m[i].sum())
        predicted = int(m[:, i].sum())
        per[lab] = {"support": support,
                    "recall": float(m[i, i] / support) if support else None,
                    "precision": float(m[i, i] / predicted) if predicted else None}
    n = int(m.sum())
    return {"labels": list(labels), "rows": "label", "columns": "router's route",
            "matrix": m.tolist(), "n": n,
            "accuracy": float(np.trace(m) / n) if n else None, "per_route": per}


def plot_confusion(conf: dict, out: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, m = conf["labels"], np.array(conf["matrix"])
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2.5, 1.1 * len(labels) + 2))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("router's route")
    ax.set_ylabel("label (verifier-accepted route)")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, str(m[i, j]), ha="center", va="center",
                    color="white" if m[i, j] > m.max() / 2 else "black")
    acc = conf["accuracy"]
    ax.set_title(f"{title}\naccuracy {acc:.3f} on {conf['n']} queries" if acc is not None
                 else title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def write_outcomes(path: Path, rows: Sequence[dict]) -> None:
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


_ROUTE_KEYS = {"correct": bool, "mean_logprob": (int, float), "min_logprob": (int, float),
               "completion_tokens": int}


def read_outcomes(path: Path) -> list[dict]:
    """route_outcomes.jsonl, checked line by line against the contract."""
    rows = []
    seen: dict[str, int] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        raise OutcomesFileError(f"{path}: missing") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise OutcomesFileError(f"{where}: not JSON ({e.msg})") from None
        for key in ("id", "split", "domain", "query", "routes", "router"):
            if key not in r:
                raise OutcomesFileError(f"{where}: missing key '{key}'")
        if r["split"] not in SPLITS:
            raise OutcomesFileError(f"{where}: key 'split' is {r['split']!r}; expected one of "
                                    f"{', '.join(SPLITS)}")
        if r["id"] in seen:
            raise OutcomesFileError(f"{where}: duplicate id {r['id']!r} (first on line "
                                    f"{seen[r['id']]})")
        seen[r["id"]] = n
        if not isinstance(r["routes"], dict) or not r["routes"]:
            raise OutcomesFileError(f"{where}: key 'routes' must be a non-empty object")
        for route, out in r["routes"].items():
            for key, typ in _ROUTE_KEYS.items():
                if key not in out:
                    raise OutcomesFileError(f"{where}: missing key 'routes.{route}.{key}'")
                if not isinstance(out[key], typ):
                    raise OutcomesFileError(f"{where}: key 'routes.{route}.{key}' has the "
                                            f"wrong type ({type(out[key]).__name__})")
        chosen = r["router"].get("route")
        if chosen not in r["routes"]:
            raise OutcomesFileError(f"{where}: key 'router.route' is {chosen!r}, not one of "
                                    f"its routes")
        if not 0.0 <= float(r["router"].get("margin", -1)) <= 1.0:
            raise OutcomesFileError(f"{where}: key 'router.margin' must be in [0, 1]")
        rows.append(r)
    if not rows:
        raise OutcomesFileError(f"{path}: no outcomes")
    return rows
