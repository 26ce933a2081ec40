"""Phase 5B on the real tiny bundle (tests/serving_bundle.py: the fixture's F32 GGUF, two
random-weight LoRAs, a router and an escalation model fitted on real generations) and the
fake OpenAI-compatible teacher of test_serving_routed. The offline figures 5B compares
with are made the way 4A and 4B make them: every route answers the routing queries through
cogumi.routing.outcomes.run_routes (llama.cpp's own completion log-probabilities), the
bundle's router decides, the escalation model turns the routed answer's signals into
p_wrong (cogumi.phases.escalate.system_signals)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("fastapi")
pytest.importorskip("sklearn")
pytest.importorskip("openai")

from rich.console import Console  # noqa: E402

from cogumi.serving.bundle import write_bundle  # noqa: E402
from tests.serving_bundle import SERVING  # noqa: E402
from tests.test_serving_routed import TEACHER_ANSWER, Teacher  # noqa: E402

TASK_OF = {"code": "code", "reasoning": "math"}
LABEL_OF_DOMAIN = {"code": "code", "math": "reasoning", "mmlu": "base"}


def _profile(teacher_url: str):
    from cogumi.profile import load_profile
    p = load_profile("tiny")
    return p.model_copy(update={
        "eval": p.eval.model_copy(update={"limit": 2, "max_new_tokens": 24}),
        "routing": p.routing.model_copy(update={"limit": 2, "max_new_tokens": 24}),
        "modifiers": [m for m in p.modifiers if m.name in TASK_OF],
        "teacher": p.teacher.model_copy(update={"source": "endpoint", "base_url": teacher_url,
                                                "path": None, "max_retries": 0})})


@pytest.fixture(scope="module")
def validated(bundle_parts, routed_parts, tmp_path_factory):
    """runs/ with 5A's bundle and 4A-4C's offline figures, then 5B's run(ctx)."""
    import numpy as np

    from cogumi.evaluation.splits import IdSplit
    from cogumi.phases import validate
    from cogumi.phases.escalate import system_signals
    from cogumi.phases.route import generation_settings, routing_tasks
    from cogumi.registry import get_phase
    from cogumi.routing import Escalation, Router
    from cogumi.routing.outcomes import outcome_rows, run_routes
    from cogumi.runner import PhaseContext

    tmp = tmp_path_factory.mktemp("phase5b")
    runs = tmp / "runs"
    teacher = Teacher()
    profile = _profile(teacher.url)
    (tmp / "stage").mkdir()
    ctx = PhaseContext(profile, get_phase("5B"), tmp / "stage", runs, Console(quiet=True))

    # 4A's route outcomes, as 4A makes them (every query on the report split here).
    tasks = routing_tasks(ctx)
    mods = {n: g for n, (g, _) in bundle_parts["modifiers"].items()}
    reports = run_routes({"base": None, **mods}, bundle_parts["base_gguf"], tasks,
                         generation_settings(ctx), n_ctx=SERVING["n_ctx"], n_threads=1,
                         limit=2, log=lambda *_: None)
    rows, _ = outcome_rows(tasks, reports, IdSplit(0.5, "test"), limit=2)
    router = Router.load(routed_parts["router_dir"])
    for r, (route, margin) in zip(rows, router.route_many([r["query"] for r in rows]),
                                  strict=True):
        r.update(split="report", label=LABEL_OF_DOMAIN[r["domain"]],
                 router={"route": route, "margin": margin})
    (runs / "4A").mkdir(parents=True)
    (runs / "4A" / "route_outcomes.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows))
    offline_acc = float(np.mean([r["router"]["route"] == r["label"] for r in rows]))
    (runs / "4A" / "metrics.json").write_text(json.dumps({"routing.accuracy": offline_acc}))
    # 4B's p_wrong of the routed answer; 4C's threshold between two of them, so some
    # queries escalate and some do not.
    esc = Escalation.load(routed_parts["escalation"])
    p = {r["id"]: float(esc.p_wrong(system_signals(r))) for r in rows}
    (runs / "4B").mkdir()
    (runs / "4B" / "signals.jsonl").write_text("".join(
        json.dumps({"id": i, "split": "report", "p_wrong": v}) + "\n" for i, v in p.items()))
    ps = sorted(set(p.values()))
    threshold = (ps[len(ps) // 2 - 1] + ps[len(ps) // 2]) / 2
    (runs / "4C").mkdir()
    (runs / "4C" / "thresholds.json").write_text(json.dumps({"threshold": threshold}))
    rate = sum(v >= threshold for v in p.values()) / len(p)
    (runs / "4C" / "metrics.json").write_text(json.dumps(
        {"operating_point.escalated_share": rate}))
    # 5A's bundle and sizes.
    (runs / "5A").mkdir()
    modifiers = {n: (g, {**info, "task": TASK_OF[n], "phase": f"3{'AB'[i]}"})
                 for i, (n, (g, info)) in enumerate(bundle_parts["modifiers"].items())}
    write_bundle(runs / "5A" / "bundle", base_gguf=bundle_parts["base_gguf"],
                 packed=bundle_parts["packed"], modifiers=modifiers,
                 router_dir=routed_parts["router_dir"], escalation=routed_parts["escalation"],
                 thresholds=runs / "4C" / "thresholds.json",
                 teacher={"model": "teacher", "api_key_env": "COGUMI_TEST_TEACHER_KEY",
                          "base_url": None, "timeout_s": 5.0},
                 serving={**SERVING, "max_tokens": 24}, card="# test\n")
    (runs / "5A" / "sizes.json").write_text(json.dumps({"download_mb": 30.5}))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(validate, "LOAD_CLIENTS", 3)
        mp.setattr(validate, "LOAD_REQUESTS_PER_CLIENT", 2)
        try:
            metrics = validate.run(ctx)
        finally:
            teacher.close()
    return ctx, metrics, {"rows": rows, "p": p, "threshold": threshold, "rate": rate,
                          "accuracy": offline_acc, "teacher": teacher}


def test_benchmarks_are_answered_by_system_base_and_teacher_through_http(validated):
    ctx, m, offline = validated
    out = ctx.out_dir
    assert m["benchmarks.api_errors"] == 0
    # (system, system without escalation, base) x 3 tasks x 2 items
    assert m["benchmarks.api_requests"] == 3 * 3 * 2
    for who in ("system", "base", "teacher"):
        for score in ("math.accuracy", "mmlu.accuracy", "code.pass@1"):
            assert 0 <= m[f"{who}.{score}"] <= 1
    for score in ("math.accuracy", "mmlu.accuracy", "code.pass@1"):
        lo, up = m[f"vs_base.{score}.delta_lower"], m[f"vs_base.{score}.delta_upper"]
        assert lo <= m[f"vs_base.{score}.delta"] <= up
    # The teacher's answers are the fake's; the system's escalated ones are too.
    teacher_items = [json.loads(x) for x in (out / "eval_teacher" / "items.jsonl")
                     .read_text().splitlines()]
    assert {r["generations"][0] for r in teacher_items} == {TEACHER_ANSWER}
    assert 0 <= m["benchmarks.escalated_share"] <= 1
    # Every request went to the fake teacher over HTTP (benchmarks, escalations).
    assert offline["teacher"].requests


def test_the_seed_claim_is_measured_per_domain_and_a_missing_domain_has_no_figure(validated):
    ctx, m, _ = validated
    for d in ("code", "reasoning"):
        assert m[f"claim.{d}.system_minus_teacher_lower"] <= m[f"claim.{d}.system_minus_teacher"]
    assert "claim.automation.system_minus_teacher_lower" not in m
    claim = {c["domain"]: c for c in json.loads(
        (ctx.out_dir / "validation.json").read_text())["claim"]}
    assert claim["automation"]["why"] == "no modifier in the bundle"
    assert claim["reasoning"]["score"] == "math.accuracy"
    # Measured on the system's own answers (cogumi/local), never on escalated ones.
    assert claim["reasoning"]["system"] == m["local.math.accuracy"]
    local_items = (ctx.out_dir / "eval_local" / "items.jsonl").read_text()
    assert TEACHER_ANSWER not in local_items
    report = (ctx.out_dir / "report.md").read_text()
    assert "| automation | — | — | — | — | no: no modifier in the bundle |" in report
    # ... so its gate fails: a claim without a figure never passes.
    from cogumi.gates import resolve_gates
    gates = {g.metric: g for g in resolve_gates("5B", ctx.profile, runs_dir=ctx.runs_dir)}
    assert not gates["claim.automation.system_minus_teacher_lower"].check(
        m.get("claim.automation.system_minus_teacher_lower"))
    # A claim means something only above chance: a capability gate per domain (math's
    # chance is 0, so it is the Wilson lower bound of the system's own accuracy).
    assert "claim.automation.system_lower95_above_chance" not in m
    able = m["claim.reasoning.system_lower95_above_chance"]
    assert 0 <= able <= m["local.math.accuracy"]
    gate = gates["claim.reasoning.system_lower95_above_chance"]
    assert gate.capability and gate.check(able) == (able > 0)


def test_routing_and_escalation_through_the_api_equal_the_offline_figures(validated):
    ctx, m, offline = validated
    assert m["routing.queries"] == len(offline["rows"])
    assert m["routing.decisions_differing_from_4a"] == 0
    assert m["routing.api_accuracy"] == m["routing.offline_accuracy"] == offline["accuracy"]
    assert m["escalation.decisions_differing_from_4c"] == 0
    assert m["escalation.api_rate"] == m["escalation.offline_rate"] == offline["rate"]
    assert 0 < offline["rate"] < 1
    assert m["escalation.teacher_answered_share"] == 1
    assert m["escalation.max_p_wrong_difference"] < 1e-4
    per_query = [json.loads(x) for x in (ctx.out_dir / "routing_api.jsonl")
                 .read_text().splitlines()]
    assert {q["api_route"] for q in per_query} <= {"base", "code", "reasoning"}


def test_a_differing_decision_is_counted():
    from cogumi.phases.validate import compare_decisions
    rows = [{"id": "a", "domain": "math", "label": "reasoning",
             "router": {"route": "reasoning"},
             "api": {"route": "reasoning", "p_wrong": 0.6, "threshold": 0.5}},
            {"id": "b", "domain": "code", "label": "code", "router": {"route": "code"},
             "api": {"route": "base", "p_wrong": 0.4, "threshold": 0.5}}]
    m, _ = compare_decisions(rows, {"a": 0.6, "b": 0.55}, 0.5)
    assert m["routing.decisions_differing_from_4a"] == 1
    assert m["routing.api_accuracy"] == 0.5 and m["routing.offline_accuracy_recomputed"] == 1
    assert m["escalation.decisions_differing_from_4c"] == 1  # b: offline escalates, API not
    assert m["escalation.api_rate"] == 0.5 and m["escalation.offline_rate_recomputed"] == 1
    # A request the API failed counts as a differing route, not as a skipped query.
    rows[0]["api"] = {"error": "APIConnectionError"}
    m, _ = compare_decisions(rows, {"a": 0.6, "b": 0.55}, 0.5)
    assert m["routing.decisions_differing_from_4a"] == 2 and m["routing.queries"] == 2


def test_the_bounded_load_test_loses_nothing_and_mixes_nothing(validated):
    ctx, m, _ = validated
    assert (m["load.clients"], m["load.requests_per_client"], m["load.requests"]) == (3, 2, 6)
    assert m["load.errors"] == m["load.lost"] == m["load.duplicated"] == 0
    assert m["load.local_answers_compared"] > 0 and m["load.local_answers_differing"] == 0
    assert 0 < m["load.latency_p50_s"] <= m["load.latency_p95_s"]
    assert m["load.tokens_per_s"] > 0
    rows = [json.loads(x) for x in (ctx.out_dir / "load.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and len({r["id"] for r in rows}) == 6


def test_the_registry_lists_every_suite_score():
    from cogumi.evaluation.paired import SUITE
    from cogumi.registry import _SUITE
    assert tuple(SUITE) == _SUITE
