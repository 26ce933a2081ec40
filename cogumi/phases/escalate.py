"""Phase 4B: escalation, P(the system's answer is wrong) from serving-time signals.

For every held-out query of 4A (route_outcomes.jsonl), the system's answer is the routed
route's greedy answer; its signals are that generation's mean and minimum token
log-probability and the router's margin (cogumi.routing.serving_signals, the same function
the server calls). A logistic regression is fitted on the "fit" split (label: the verifier
rejected the answer) and reported on the "report" split.

The teacher ([teacher], through cogumi.teacher.teacher_backend) answers the same queries
with the same prompts, verified by the same verifiers (the evaluation suite), cached by
content. Detection is read at the operating threshold: the one phase 4C's objective
(cogumi.routing.curve.Objective at the seed's 0.80, see cogumi.phases.threshold) picks on
the fit split; it needs the teacher's verdicts, so without a teacher it is missing.
"""

from __future__ import annotations

import json

import numpy as np

from cogumi.phases.common import eval_cache
from cogumi.phases.route import generation_settings, routing_config, routing_tasks
from cogumi.routing import curve
from cogumi.routing.escalation import Escalation, serving_signals
from cogumi.routing.labels import read_outcomes
from cogumi.routing.outcomes import qualified_id
from cogumi.runner import PhaseContext, PhaseInputError

MB = 1_000_000
#: The seed's "Optimal 80% threshold" (4C), as cogumi.phases.threshold reads it.
SEED_TARGET_PGR = 0.80


def system_signals(row: dict) -> dict:
    chosen = row["router"]["route"]
    out = row["routes"][chosen]
    return {"mean_logprob": float(out["mean_logprob"]), "min_logprob": float(out["min_logprob"]),
            "router_margin": float(row["router"]["margin"])}


def teacher_usd(prompt_tokens: int, completion_tokens: int, prices) -> float:
    return (prompt_tokens * prices[0] + completion_tokens * prices[1]) / 1e6


def ask_teacher(ctx: PhaseContext, ids: set[str]) -> list[dict]:
    """The teacher's verified answers to the held-out queries (same prompts, same verifiers),
    one row per id: {"id", "correct", "prompt_tokens", "completion_tokens", "reason"}."""
    from cogumi.evaluation import evaluate
    from cogumi.teacher import teacher_backend

    tasks = routing_tasks(ctx)
    cfg = routing_config(ctx)
    with teacher_backend(ctx.profile.teacher, cache_dir=ctx.runs_dir / ".teacher-cache",
                         log_dir=ctx.work_dir) as backend:
        report = evaluate(backend, tasks, generation_settings(ctx), limit=cfg.limit,
                          loglikelihood=False, cache_dir=eval_cache(ctx))
    report.write(ctx.out_dir / "teacher_eval")
    by_id = {}
    for task in tasks:
        for rec in report.task_records(task.name):
            qid = qualified_id(task, rec["item_id"])
            if qid in ids:
                by_id[qid] = {"id": qid, "correct": bool(rec["verdicts"][0]),
                              "prompt_tokens": int((rec.get("prompt_tokens") or [0])[0]),
                              "completion_tokens": int((rec.get("completion_tokens") or [0])[0]),
                              "reason": rec["reasons"][0]}
    missing = sorted(ids - set(by_id))
    if missing:
        raise PhaseInputError(f"the teacher's evaluation lacks {len(missing)} of 4A's queries "
                              f"({', '.join(missing[:3])}): [routing] queries changed since 4A?")
    return [by_id[i] for i in sorted(by_id)]


def run(ctx: PhaseContext) -> dict:
    rows = read_outcomes(ctx.input_dir("4A") / "route_outcomes.jsonl")
    fit = [r for r in rows if r["split"] == "fit"]
    rep = [r for r in rows if r["split"] == "report"]
    if not fit or not rep:
        raise PhaseInputError(f"4A's route outcomes hold {len(fit)} fit and {len(rep)} report "
                              f"queries; both splits are needed")
    sig = {r["id"]: system_signals(r) for r in rows}
    right = {r["id"]: bool(r["routes"][r["router"]["route"]]["correct"]) for r in rows}
    model = Escalation.fit([sig[r["id"]] for r in fit], [not right[r["id"]] for r in fit],
                           seed=ctx.seed)
    model.save(ctx.out_dir / "escalation.json")
    p = {r["id"]: float(v) for r, v in zip(rows, model.p_wrong_many([sig[r["id"]] for r in rows]),
                                           strict=True)}

    teacher = None
    if ctx.profile.teacher is None:
        ctx.notes.append("no [teacher] in this profile: the teacher's verdicts, the operating "
                         "threshold and detection at it are missing")
    else:
        teacher = {t["id"]: t for t in ask_teacher(ctx, set(sig))}
        (ctx.out_dir / "teacher_outcomes.jsonl").write_text("".join(
            json.dumps(teacher[i], sort_keys=True) + "\n" for i in sorted(teacher)))
    prices = ctx.profile.teacher.price_usd_per_mtok if ctx.profile.teacher else (0.0, 0.0)
    with open(ctx.out_dir / "signals.jsonl", "w") as f:
        for r in rows:
            line = {"id": r["id"], "split": r["split"], "domain": r["domain"],
                    "route": r["router"]["route"], "correct": right[r["id"]],
                    "p_wrong": p[r["id"]], "signals": sig[r["id"]]}
            if teacher is not None:
                t = teacher[r["id"]]
                line["teacher"] = {"correct": t["correct"], "usd": teacher_usd(
                    t["prompt_tokens"], t["completion_tokens"], prices)}
            f.write(json.dumps(line, sort_keys=True) + "\n")

    from sklearn.metrics import roc_auc_score
    y_rep = [not right[r["id"]] for r in rep]
    p_rep = [p[r["id"]] for r in rep]
    metrics: dict[str, float] = {
        "size_mb": (ctx.out_dir / "escalation.json").stat().st_size / MB,
        "escalation.fit_queries": float(len(fit)), "escalation.report_queries": float(len(rep)),
        "escalation.report_wrong_share": float(np.mean(y_rep)),
    }
    if 0 < sum(y_rep) < len(y_rep):
        metrics["escalation.auroc"] = float(roc_auc_score(y_rep, p_rep))
    seed_cut = curve.at_threshold(1 - SEED_TARGET_PGR, p_rep, [not y for y in y_rep])
    for key in ("detection", "false_escalation_rate", "escalated_share"):
        if seed_cut[key] is not None:
            metrics[f"escalation.at_confidence_0.80.{key}"] = seed_cut[key]
    chosen = None
    if teacher is not None:
        objective = curve.Objective(SEED_TARGET_PGR)
        pts = curve.sweep([p[r["id"]] for r in fit], [right[r["id"]] for r in fit],
                          [teacher[r["id"]]["correct"] for r in fit])
        chosen = objective.choose(pts)
        at = curve.at_threshold(chosen.threshold, p_rep, [not y for y in y_rep],
                                [teacher[r["id"]]["correct"] for r in rep])
        metrics["escalation.threshold"] = chosen.threshold
        for key in ("detection", "false_escalation_rate", "escalated_share"):
            if at[key] is not None:
                metrics[f"escalation.{key}"] = at[key]
        metrics["teacher.report_accuracy"] = at["strong"]
    _report(ctx, model, metrics, seed_cut, chosen, len(fit), len(rep))
    return metrics


def _report(ctx, model, m, seed_cut, chosen, n_fit, n_rep) -> None:
    def f(key):
        v = m.get(key)
        return "missing" if v is None else f"{v:.3f}"
    coef = ""
    d = model.to_dict()["model"]
    if d["kind"] != "constant":
        coef = "".join(f"| {s} | {c:+.3f} | {mu:.3f} | {sd:.3f} |\n" for s, c, mu, sd in
                       zip(model.signals, d["coef"], d["mean"], d["scale"], strict=True))
        coef = ("| signal | coefficient (standardised) | fit mean | fit sd |\n|---|---|---|---|\n"
                + coef)
    else:
        coef = f"Every fit-split answer was {'wrong' if d['p_wrong'] else 'right'}: a constant."
    op = ("missing: no teacher in this profile" if chosen is None else
          f"p_wrong >= {chosen.threshold:.4f} (chosen on the fit split by phase 4C's objective)")
    ctx.write_report(
        f"Escalation model fitted on {n_fit} fit-split queries, reported on {n_rep}; "
        f"{m['escalation.report_wrong_share']:.3f} of the system's report-split answers are "
        f"wrong. AUROC {f('escalation.auroc')}.\n\n{coef}\n\n"
        f"| threshold | detection (wrong answers escalated) | false escalations (right "
        f"answers escalated) | escalated |\n|---|---|---|---|\n"
        f"| operating point: {op} | {f('escalation.detection')} | "
        f"{f('escalation.false_escalation_rate')} | {f('escalation.escalated_share')} |\n"
        f"| the seed's literal cut-off: confidence < 0.80 (p_wrong >= 0.20) | "
        f"{f('escalation.at_confidence_0.80.detection')} | "
        f"{f('escalation.at_confidence_0.80.false_escalation_rate')} | "
        f"{f('escalation.at_confidence_0.80.escalated_share')} |\n")


__all__ = ["run", "serving_signals"]
