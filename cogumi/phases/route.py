"""Phase 4A: the router, trained on which route's answer the verifier accepts.

Held-out queries ([routing] queries: the fixture's dev split, never an evaluation or
training problem) are answered by every route in llama.cpp: the shipped base (2C's
model.gguf) alone and with each modifier's GGUF LoRA (3A-3C's adapter.gguf). Each query
gets two labels (cogumi.routing.labels): the verifier-accepted route (ties, and no route
accepted: base, then the source domain's modifier) and its source domain's route. Queries are split by a hash of
their id into "fit" and "report"; every number a gate reads is measured on "report".

Router features are measured, not assumed: each candidate of [routing] features is
cross-validated on the fit split. The rule: the highest cross-validated accuracy wins;
candidates within one standard error of it (sqrt(a (1 - a) / n) at the best accuracy a
over n fit queries) count as equally accurate, and among those the one with the lowest
median latency per query wins. The chosen router is fitted on the whole fit split.

The fit split's router decisions in route_outcomes.jsonl are the cross-validated ones (each
query routed by a router that did not see it), so 4B fits escalation on the margins a
server will see; the report split's are the final router's.
"""

from __future__ import annotations

import json
import re
import statistics

import numpy as np

from cogumi.artifacts import sha256_file
from cogumi.evaluation import GenerationSettings
from cogumi.evaluation.splits import IdSplit, normalise
from cogumi.phases.common import eval_cache, eval_tasks, profile_task
from cogumi.routing.labels import (
    BASE,
    confusion,
    plot_confusion,
    source_route,
    verifier_label,
    write_outcomes,
)
from cogumi.routing.outcomes import outcome_rows, qualified_id, query_text, run_routes
from cogumi.routing.router import Router, make_features
from cogumi.runner import PhaseContext, PhaseInputError
from cogumi.stats import exact_mcnemar

MB = 1_000_000
MODIFIER_PHASES = ("3A", "3B", "3C")
MODIFIER_KEYS = ("name", "phase", "domain", "task", "adapter_gguf_sha256", "base_gguf_sha256")


def routing_config(ctx: PhaseContext):
    cfg = ctx.profile.routing
    if cfg is None:
        raise PhaseInputError(f"{ctx.profile.source_file}: no [routing] table; phases 4A-4C "
                              f"need held-out queries ([routing] queries)")
    return cfg


def routing_tasks(ctx: PhaseContext) -> list:
    """The held-out queries as evaluation tasks, one per domain, named after its key."""
    cfg = routing_config(ctx)
    return [profile_task(ctx, key, value, f"[routing] queries.{key}", name=key)
            for key, value in cfg.queries.items()]


def generation_settings(ctx: PhaseContext) -> GenerationSettings:
    cfg = routing_config(ctx)
    return GenerationSettings(max_new_tokens=cfg.max_new_tokens or ctx.profile.eval.max_new_tokens,
                              temperature=0.0, seed=ctx.seed, samples=1,
                              stop=tuple(ctx.profile.model.stop))


def read_modifiers(ctx: PhaseContext, base_sha: str) -> list[dict]:
    """Each modifier phase's modifier.json, checked against its adapter and the base."""
    mods = []
    for pid in MODIFIER_PHASES:
        folder = ctx.input_dir(pid)
        path = folder / "modifier.json"
        if not path.is_file():
            ctx.notes.append(f"phase {pid} ships no modifier ({path.name} absent): no route")
            continue
        try:
            mod = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise PhaseInputError(f"{path}: not JSON (line {e.lineno}: {e.msg})") from None
        for key in MODIFIER_KEYS:
            if key not in mod:
                raise PhaseInputError(f"{path}: missing key '{key}'")
        adapter = folder / "adapter.gguf"
        if not adapter.is_file():
            raise PhaseInputError(f"{adapter}: missing (named by {path})")
        if sha256_file(adapter) != mod["adapter_gguf_sha256"]:
            raise PhaseInputError(f"{path}: key 'adapter_gguf_sha256' does not match {adapter}")
        if mod["base_gguf_sha256"] != base_sha:
            raise PhaseInputError(f"{path}: key 'base_gguf_sha256' is not 2C's model.gguf "
                                  f"(the adapter was made for another base)")
        if mod["name"] == BASE or mod["name"] in {m["name"] for m in mods}:
            raise PhaseInputError(f"{path}: key 'name' {mod['name']!r} is taken")
        mods.append({**mod, "adapter": adapter})
    return mods


def _key_texts(task, item) -> list[str]:
    """What identifies a query's problem inside another text, normalised: a math problem's
    text, a code task's entry point, a multiple-choice question's stem and every option."""
    f = item.fields
    if task.kind == "math":
        return [normalise(f.get("question") or f.get("problem") or "")]
    if task.kind == "code":
        return [normalise(f["entry_point"])]
    if task.kind == "mmlu":
        return [normalise(f["question"]), *(normalise(str(c)) for c in f["choices"])]
    return [normalise(query_text(task, item))]


def _contains(text: str, keys: list[str]) -> bool:
    # Whole words: option "12" is not inside "120", entry point add_two not inside add_twenty.
    return all(k and re.search(rf"(?<![\w]){re.escape(k)}(?![\w])", text) for k in keys)


def refuse_overlap(ctx: PhaseContext, tasks: list) -> None:
    """Held-out queries are neither evaluation items nor curated training records (phase 0).

    Evaluation items: compared by the whole normalised user turn (what the router and the
    routes see), not by the question field alone: multiple-choice questions share their stem
    ("Which number is the largest?") and differ in their options (splits.assert_disjoint
    compares stems, which is right for training data but calls different questions the
    same here). Curated records are worded freely (an instruction around the problem, the
    problem as the input), so a record overlaps a query when its text contains the query's
    problem: the math problem, the code task's entry point, or the question's stem with
    every option (whole words)."""
    seen: dict[str, str] = {}
    for task in eval_tasks(ctx):
        for it in task.items:
            if it.malformed is None:
                seen[normalise(query_text(task, it))] = f"evaluation item {task.name}:{it.id}"
    curated_path = ctx.input_dir("0") / "curated.jsonl"
    curated = [json.loads(line) for line in curated_path.read_text().splitlines() if line]
    texts = [(r["id"], normalise(" ".join(str(r.get(k) or "") for k in ("instruction", "input"))))
             for r in curated]
    hits = []
    for t in tasks:
        for it in t.items:
            if it.malformed is not None:
                continue
            key = normalise(query_text(t, it))
            if key in seen:
                hits.append(f"{qualified_id(t, it.id)} ({seen[key]})")
                continue
            keys = _key_texts(t, it)
            rec = next((rid for rid, text in texts if _contains(text, keys)), None)
            if rec is not None:
                hits.append(f"{qualified_id(t, it.id)} (curated record {rec})")
    if hits:
        raise PhaseInputError(f"[routing] queries: {len(hits)} are evaluation items or "
                              f"training records: {', '.join(hits[:5])}; held-out queries "
                              f"must be unseen")


def _folds(n: int, k: int, seed: int) -> list[np.ndarray]:
    from sklearn.model_selection import KFold
    return [test for _, test in KFold(n_splits=min(k, n), shuffle=True,
                                      random_state=seed).split(np.arange(n))]


def cross_validate(kind: str, features, queries: list[str], labels: list[str],
                   routes: tuple[str, ...], folds: list[np.ndarray], seed: int):
    """Out-of-fold (route, margin) for every query and the accuracy against ``labels``."""
    decided: list[tuple[str, float] | None] = [None] * len(queries)
    for test in folds:
        train = np.setdiff1d(np.arange(len(queries)), test)
        router = Router.fit([queries[i] for i in train], [labels[i] for i in train], routes,
                            features, seed=seed)
        for i, out in zip(test, router.route_many([queries[i] for i in test]), strict=True):
            decided[int(i)] = out
    acc = float(np.mean([d[0] == lab for d, lab in zip(decided, labels, strict=True)]))
    return decided, acc


def choose_features(candidates: list[dict], n_fit: int) -> tuple[dict, str]:
    """The module docstring's rule: accuracy first, latency among the equally accurate."""
    best = max(c["cv_accuracy"] for c in candidates)
    se = (best * (1 - best) / max(1, n_fit)) ** 0.5
    tied = [c for c in candidates if c["cv_accuracy"] >= best - se]
    pick = min(tied, key=lambda c: (c["latency_ms_median"], -c["cv_accuracy"]))
    why = (f"best cross-validated accuracy {best:.3f} on {n_fit} fit queries, standard error "
           f"{se:.3f}; within it: {', '.join(c['kind'] for c in tied)}; lowest median latency "
           f"among those: {pick['kind']} ({pick['latency_ms_median']:.3f} ms)")
    return pick, why


def run(ctx: PhaseContext) -> dict:
    cfg = routing_config(ctx)
    base = ctx.input_dir("2C") / "model.gguf"
    base_sha = sha256_file(base)
    mods = read_modifiers(ctx, base_sha)
    routes = (BASE, *[m["name"] for m in mods])
    domain_routes = {m["task"]: m["name"] for m in mods}
    tasks = routing_tasks(ctx)
    refuse_overlap(ctx, tasks)
    if cfg.limit is not None:
        ctx.notes.append(f"reduced query sample: at most {cfg.limit} per domain "
                         f"(routing.limit)")

    gcfg = ctx.profile.gguf
    reports = run_routes({BASE: None, **{m["name"]: m["adapter"] for m in mods}}, base, tasks,
                         generation_settings(ctx), n_ctx=gcfg.n_ctx, n_threads=gcfg.threads,
                         limit=cfg.limit, cache_dir=eval_cache(ctx), log=ctx.console.print)
    for name, rep in reports.items():
        rep.write(ctx.out_dir / "routes" / name)
    split = IdSplit(cfg.report_fraction, cfg.salt)
    rows, excluded = outcome_rows(tasks, reports, split, cfg.limit)
    for r in rows:
        correct = {k: v["correct"] for k, v in r["routes"].items()}
        r["source_label"] = source_route(r["domain"], domain_routes)
        r["label"] = verifier_label(correct, r["source_label"], routes)
    fit = [r for r in rows if r["split"] == "fit"]
    rep = [r for r in rows if r["split"] == "report"]
    if len(fit) < cfg.cv_folds or not rep:
        raise PhaseInputError(f"[routing] queries: the split left {len(fit)} fit and "
                              f"{len(rep)} report queries; too few to fit and report")

    fit_q, fit_lab = [r["query"] for r in fit], [r["label"] for r in fit]
    folds = _folds(len(fit), cfg.cv_folds, ctx.seed)
    candidates, oof = [], {}
    for kind in cfg.features:
        features = make_features(kind, base_gguf=base, n_ctx=gcfg.n_ctx, n_threads=gcfg.threads)
        decided, acc = cross_validate(kind, features, fit_q, fit_lab, routes, folds, ctx.seed)
        router = Router.fit(fit_q, fit_lab, routes, features, seed=ctx.seed)
        lat = router.latency_s([r["query"] for r in rep])
        size = router.size_bytes(router.save(ctx.work_dir / f"router-{kind}"))
        candidates.append({"kind": kind, "cv_accuracy": acc,
                           "latency_ms_median": 1000 * statistics.median(lat),
                           "latency_ms_p95": 1000 * float(np.percentile(lat, 95)),
                           "size_bytes": size, "router": router})
        oof[kind] = decided
    if len(set(fit_lab)) == 1:
        # One label for every fit query: each candidate is the same constant router, which
        # reads no features; the first candidate stands (no base GGUF needed to serve it).
        pick = candidates[0]
        why = (f"every fit query's label is {fit_lab[0]}: the router is a constant and reads "
               f"no features; the first candidate of [routing] features is kept")
    else:
        pick, why = choose_features(candidates, len(fit))
    router = pick["router"]
    for c in candidates:
        if c is not pick:
            c["router"].close()
    router.info["features_chosen_by"] = why
    router.info["labelling"] = ("verifier-accepted route (ties, and no route accepted: base, "
                                "then the source domain's modifier)")
    router.save(ctx.out_dir / "router")

    for r, d in zip(fit, oof[pick["kind"]], strict=True):
        r["router"] = {"route": d[0], "margin": d[1], "decided_by": "cross-validated"}
    for r, d in zip(rep, router.route_many([r["query"] for r in rep]), strict=True):
        r["router"] = {"route": d[0], "margin": d[1], "decided_by": "final router"}

    # The second labelling: a router of the same features trained on source domains.
    source_router = Router.fit(fit_q, [r["source_label"] for r in fit], routes,
                               pick["router"].features, seed=ctx.seed)
    source_pred = [d[0] for d in source_router.route_many([r["query"] for r in rep])]
    router.close()

    metrics = _metrics(ctx, rows, rep, routes, source_pred, candidates, pick)
    write_outcomes(ctx.out_dir / "route_outcomes.jsonl",
                   [{k: v for k, v in r.items()} for r in rows])
    conf = confusion([r["label"] for r in rep], [r["router"]["route"] for r in rep], routes)
    conf_src = confusion([r["source_label"] for r in rep], source_pred, routes)
    (ctx.out_dir / "confusion.json").write_text(json.dumps(
        {"split": "report", "verifier_labels": conf, "source_domain_labels": conf_src,
         "excluded": excluded}, indent=2) + "\n")
    plot_confusion(conf, ctx.out_dir / "confusion.png",
                   f"{ctx.profile.name}: router ({pick['kind']}) on the report split")
    ctx.add_figure("confusion.png", f"Confusion matrix of the router ({pick['kind']}) on "
                   f"{len(rep)} report-split queries: rows are the verifier-accepted route "
                   f"(ties and all-wrong: base, then the source domain's modifier), columns "
                   f"the router's")
    _report(ctx, metrics, candidates, pick, why, conf, conf_src, routes, mods, excluded)
    return metrics


def oracle_gain_over_base(rows: list[dict]):
    """What routing can gain at all: the best route per query against the base alone, paired
    on the same queries (exact McNemar). Where no modifier answers a query the base gets
    wrong, every label is "base" and routing accuracy is met by routing everything to base."""
    return exact_mcnemar(
        {str(i): float(r["routes"]["base"]["correct"]) for i, r in enumerate(rows)},
        {str(i): float(any(o["correct"] for o in r["routes"].values())) for i, r in enumerate(rows)})


def _quality(rows: list[dict], pick) -> float:
    return float(np.mean([r["routes"][pick(r)]["correct"] for r in rows])) if rows else 0.0


def _metrics(ctx, rows, rep, routes, source_pred, candidates, pick) -> dict:
    m: dict[str, float] = {
        "routing.accuracy": float(np.mean([r["router"]["route"] == r["label"] for r in rep])),
        "routing.source_domain.accuracy": float(np.mean(
            [p == r["source_label"] for p, r in zip(source_pred, rep, strict=True)])),
        "routing.latency_ms_median": pick["latency_ms_median"],
        "routing.latency_ms_p95": pick["latency_ms_p95"],
        "routing.cv_accuracy": pick["cv_accuracy"],
        "size_mb": pick["size_bytes"] / MB,
        "queries.fit": float(sum(r["split"] == "fit" for r in rows)),
        "queries.report": float(len(rep)),
        "quality.oracle": float(np.mean([any(o["correct"] for o in r["routes"].values())
                                         for r in rep])),
        "quality.with_router": _quality(rep, lambda r: r["router"]["route"]),
        "quality.with_source_domain_router": float(np.mean(
            [r["routes"][p]["correct"] for p, r in zip(source_pred, rep, strict=True)])),
        "quality.source_domain_route": _quality(rep, lambda r: r["source_label"]),
    }
    for route in routes:
        m[f"quality.always_{route}"] = _quality(rep, lambda r, route=route: route)
    oracle_gain = oracle_gain_over_base(rep)
    m["quality.oracle_gain_over_base"] = oracle_gain.point
    m["quality.oracle_gain_over_base_lower"] = oracle_gain.lower
    for c in candidates:
        m[f"candidate.{c['kind']}.cv_accuracy"] = c["cv_accuracy"]
        m[f"candidate.{c['kind']}.latency_ms_median"] = c["latency_ms_median"]
        m[f"candidate.{c['kind']}.size_mb"] = c["size_bytes"] / MB
    m["routing.features_is_embedding"] = float(pick["kind"] == "llama-embedding")
    return m


def _table(conf: dict) -> str:
    labels = conf["labels"]
    head = ("| label \\ routed | " + " | ".join(labels) + " | recall |\n"
            + "|---" * (len(labels) + 2) + "|\n")
    body = ""
    for lab, row in zip(labels, conf["matrix"], strict=True):
        rec = conf["per_route"][lab]["recall"]
        body += (f"| {lab} | " + " | ".join(str(v) for v in row)
                 + f" | {'—' if rec is None else f'{rec:.3f}'} |\n")
    return head + body


def _report(ctx, m, candidates, pick, why, conf, conf_src, routes, mods, excluded) -> None:
    cand = "".join(f"| {c['kind']} | {c['cv_accuracy']:.3f} | {c['latency_ms_median']:.3f} | "
                   f"{c['latency_ms_p95']:.3f} | {c['size_bytes'] / MB:.3f} |\n"
                   for c in candidates)
    quality = "".join(f"| always {r} | {m[f'quality.always_{r}']:.3f} |\n" for r in routes)
    mods_txt = ", ".join(f"{x['name']} ({x['phase']}, task {x['task']})" for x in mods) or \
        "none (every label is base)"
    emb_note = (" The embedding router's size excludes the base model it reads (shipped "
                "anyway); serving it costs one extra prompt pass of the base."
                if pick["kind"] == "llama-embedding" else "")
    ctx.write_report(
        f"Routes: base and {mods_txt}. {int(m['queries.fit'])} fit and "
        f"{int(m['queries.report'])} report queries, each answered by every route in "
        f"llama.cpp on 2C's model.gguf and verified ({len(excluded)} excluded: malformed).\n\n"
        f"### Feature candidates (cross-validated on the fit split)\n\n"
        f"| features | CV accuracy | median ms / query | p95 ms | size MB |\n|---|---|---|---|---|\n"
        f"{cand}\nChosen: **{pick['kind']}**: {why}.{emb_note}\n\n"
        f"### Report split\n\n"
        f"Routing accuracy **{m['routing.accuracy']:.3f}** against the verifier-accepted route; "
        f"a router on the same features trained on source domains reaches "
        f"{m['routing.source_domain.accuracy']:.3f} against the source domain.\n\n"
        f"{_table(conf)}\nSource-domain labelling:\n\n{_table(conf_src)}\n"
        f"| system | verified accuracy |\n|---|---|\n"
        f"| oracle (best route per query) | {m['quality.oracle']:.3f} |\n"
        f"| oracle - always base (paired, lower bound) | {m['quality.oracle_gain_over_base']:+.3f} "
        f"({m['quality.oracle_gain_over_base_lower']:+.3f}) |\n"
        f"| with the router | {m['quality.with_router']:.3f} |\n"
        f"| with the source-domain router | {m['quality.with_source_domain_router']:.3f} |\n"
        f"| each query's source-domain route | {m['quality.source_domain_route']:.3f} |\n"
        f"{quality}")
