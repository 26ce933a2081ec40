"""Routing (4A-4C): the router and escalation files the server loads, the labels, the
confusion matrix, the cost-quality curve's RouteLLM metrics on curves small enough to check
by hand, and the fit/report separation of phases 4B and 4C on synthetic route outcomes.
One test runs the real llama.cpp on the fixture model (token log-probabilities, the
embedding router)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from cogumi.routing import SIGNALS, Escalation, Router, RouterFileError, curve, serving_signals
from cogumi.routing.escalation import EMPTY_LOGPROB, EscalationFileError
from cogumi.routing.labels import (
    OutcomesFileError,
    confusion,
    read_outcomes,
    source_route,
    verifier_label,
    write_outcomes,
)
from cogumi.routing.router import HashedNgrams

ROUTES = ("base", "code", "reasoning")


def _queries(n: int, seed: int) -> tuple[list[str], list[str]]:
    """Three kinds of text a router must tell apart, with their routes."""
    rng = random.Random(seed)
    qs, labs = [], []
    for _ in range(n):
        k = rng.randrange(3)
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        if k == 0:
            qs.append(f"Tom has {a} apples and buys {b} more. How many apples does Tom have?")
        elif k == 1:
            qs.append(f"def add_{a}(x):\n    \"\"\"Return x plus {b}.\"\"\"\n")
        else:
            qs.append(f"Which number is the largest? A. {a} B. {b} C. {a + b} D. {abs(a - b)}")
        labs.append(ROUTES[k])
    return qs, labs


# ---------------------------------------------------------------------- router
def test_router_fit_save_load_route_roundtrip(tmp_path):
    qs, labs = _queries(150, 0)
    router = Router.fit(qs, labs, ROUTES, HashedNgrams(n_features=2 ** 12))
    folder = router.save(tmp_path / "router")
    loaded = Router.load(folder)
    assert loaded.routes == ROUTES and loaded.classes == ROUTES
    test_q, test_l = _queries(60, 1)
    before, after = router.route_many(test_q), loaded.route_many(test_q)
    assert [r for r, _ in before] == [r for r, _ in after]
    assert np.allclose([m for _, m in before], [m for _, m in after])
    assert all(0.0 <= m <= 1.0 for _, m in after)
    # It learnt something: unseen queries of the three kinds go to their routes.
    assert np.mean([r == lab for (r, _), lab in zip(after, test_l, strict=True)]) >= 0.95
    route, margin = loaded.route(test_q[0])
    assert route in ROUTES and isinstance(margin, float)
    assert json.loads((folder / "router.json").read_text())["features"]["kind"] == "hashed-ngrams"


@pytest.mark.parametrize("names", [("base", "code", "reasoning"), ("base", "alpha", "zeta")])
@pytest.mark.parametrize("n_routes", [2, 3])
def test_router_keeps_the_route_order_whatever_scikit_learn_sorts(tmp_path, names, n_routes):
    # scikit-learn sorts classes; routes come in the profile's order (base first)
    qs, labs = _queries(90, 2)
    rename = dict(zip(ROUTES, names, strict=True))
    if n_routes == 2:
        rename["reasoning"] = names[0]
    labels = [rename[lab] for lab in labs]
    routes = names[:n_routes]
    router = Router.fit(qs, labels, routes, HashedNgrams(n_features=2 ** 12))
    loaded = Router.load(router.save(tmp_path / "r"))
    assert loaded.classes == routes
    assert np.mean([r == lab for (r, _), lab in zip(loaded.route_many(qs), labels,
                                                    strict=True)]) >= 0.95


def test_router_with_one_label_always_picks_it(tmp_path):
    qs, _ = _queries(10, 3)
    router = Router.fit(qs, ["base"] * 10, ROUTES, HashedNgrams(n_features=2 ** 10))
    loaded = Router.load(router.save(tmp_path / "r"))
    assert loaded.route("anything at all") == ("base", 1.0)
    assert loaded.routes == ROUTES and loaded.classes == ("base",)


def test_router_load_errors_name_file_and_key(tmp_path):
    with pytest.raises(RouterFileError, match="router.json: missing"):
        Router.load(tmp_path)
    qs, labs = _queries(60, 4)
    folder = Router.fit(qs, labs, ROUTES, HashedNgrams(n_features=2 ** 10)).save(tmp_path / "r")
    meta = json.loads((folder / "router.json").read_text())
    (folder / "router.json").write_text(json.dumps({**meta, "format": 99}))
    with pytest.raises(RouterFileError, match="key 'format'"):
        Router.load(folder)
    (folder / "router.json").write_text(json.dumps({**meta, "classes": ["base", "code"]}))
    with pytest.raises(RouterFileError, match="coef has 3 rows for 2 classes"):
        Router.load(folder)
    del meta["routes"]
    (folder / "router.json").write_text(json.dumps(meta))
    with pytest.raises(RouterFileError, match="missing key 'routes'"):
        Router.load(folder)


def test_router_refuses_labels_that_are_not_routes():
    with pytest.raises(ValueError, match="not routes"):
        Router.fit(["a", "b"], ["base", "math"], ROUTES, HashedNgrams(n_features=2 ** 8))


# ---------------------------------------------------------------------- labels
def test_verifier_label_tie_rule():
    assert verifier_label({"base": True, "code": True}, "code", ROUTES) == "base"
    assert verifier_label({"base": False, "code": True, "reasoning": True}, "reasoning",
                          ROUTES) == "reasoning"
    assert verifier_label({"base": False, "code": True, "reasoning": True}, "base",
                          ROUTES) == "code"
    assert verifier_label({"base": False, "code": False, "reasoning": False}, "code",
                          ROUTES) == "base"  # all wrong: a tie of every route
    assert source_route("code", {"code": "code"}) == "code"
    assert source_route("math", {"code": "code"}) == "base"


def test_confusion_matrix_by_hand():
    true = ["base", "base", "code", "code", "code", "reasoning"]
    pred = ["base", "code", "code", "code", "base", "reasoning"]
    c = confusion(true, pred, ROUTES)
    assert c["matrix"] == [[1, 1, 0], [1, 2, 0], [0, 0, 1]]
    assert c["accuracy"] == pytest.approx(4 / 6)
    assert c["per_route"]["code"]["recall"] == pytest.approx(2 / 3)
    assert c["per_route"]["code"]["precision"] == pytest.approx(2 / 3)
    assert c["per_route"]["reasoning"] == {"support": 1, "recall": 1.0, "precision": 1.0}


def _outcome(i, split, correct_base=True):
    return {"id": f"math:q{i}", "split": split, "domain": "math", "query": f"q{i}",
            "routes": {"base": {"correct": correct_base, "mean_logprob": -0.5,
                                "min_logprob": -2.0, "completion_tokens": 7}},
            "router": {"route": "base", "margin": 1.0}}


def test_route_outcomes_are_checked_line_by_line(tmp_path):
    path = tmp_path / "route_outcomes.jsonl"
    write_outcomes(path, [_outcome(0, "fit"), _outcome(1, "report")])
    assert len(read_outcomes(path)) == 2
    bad = _outcome(2, "fit")
    del bad["routes"]["base"]["min_logprob"]
    write_outcomes(path, [_outcome(0, "fit"), bad])
    with pytest.raises(OutcomesFileError, match=r"route_outcomes.jsonl:2: missing key "
                                                r"'routes.base.min_logprob'"):
        read_outcomes(path)
    write_outcomes(path, [_outcome(0, "fit"), _outcome(0, "report")])
    with pytest.raises(OutcomesFileError, match="duplicate id"):
        read_outcomes(path)
    write_outcomes(path, [{**_outcome(0, "test")}])
    with pytest.raises(OutcomesFileError, match="key 'split'"):
        read_outcomes(path)


# ---------------------------------------------------------------------- escalation
def _signal_rows(n: int, seed: int):
    """Wrong answers have low log-probabilities (with noise)."""
    rng = np.random.default_rng(seed)
    wrong = rng.random(n) < 0.3
    mean_lp = np.where(wrong, -2.0, -0.3) + rng.normal(0, 0.4, n)
    rows = [{"mean_logprob": float(m), "min_logprob": float(m * 3 + rng.normal(0, 0.5)),
             "router_margin": float(rng.random())} for m in mean_lp]
    return rows, wrong.tolist()


def test_escalation_fit_save_load_p_wrong(tmp_path):
    rows, wrong = _signal_rows(300, 0)
    esc = Escalation.fit(rows, wrong)
    loaded = Escalation.load(esc.save(tmp_path / "escalation.json"))
    assert loaded.signals == SIGNALS
    assert np.allclose(esc.p_wrong_many(rows), loaded.p_wrong_many(rows))
    p = loaded.p_wrong_many(rows)
    assert p[np.array(wrong)].mean() > p[~np.array(wrong)].mean() + 0.3
    confident = loaded.p_wrong({"mean_logprob": -0.1, "min_logprob": -0.3, "router_margin": 0.9})
    unsure = loaded.p_wrong({"mean_logprob": -3.0, "min_logprob": -9.0, "router_margin": 0.9})
    assert 0 <= confident < unsure <= 1


def test_escalation_constant_and_load_errors(tmp_path):
    rows, _ = _signal_rows(20, 1)
    esc = Escalation.load(Escalation.fit(rows, [False] * 20).save(tmp_path / "e.json"))
    assert esc.p_wrong(rows[0]) == 0.0
    path = tmp_path / "bad.json"
    good = Escalation.fit(*_signal_rows(100, 2)).to_dict()
    path.write_text(json.dumps({**good, "model": {**good["model"], "coef": [1.0]}}))
    with pytest.raises(EscalationFileError, match=r"key 'model.coef' needs 3 values"):
        Escalation.load(path)
    with pytest.raises(KeyError, match="router_margin"):
        Escalation.load(tmp_path / "e.json").p_wrong_many([{"mean_logprob": 0.0}])
    fitted = Escalation.fit(*_signal_rows(100, 2))
    with pytest.raises(KeyError, match="router_margin"):
        fitted.p_wrong({"mean_logprob": 0.0, "min_logprob": 0.0})


def test_serving_signals():
    s = serving_signals([-0.5, -1.5, -0.1], 0.25)
    assert s == {"mean_logprob": pytest.approx(-0.7), "min_logprob": -1.5,
                 "router_margin": 0.25}
    assert serving_signals([], 0.5)["min_logprob"] == EMPTY_LOGPROB


# ---------------------------------------------------------------------- the curve
def test_apgr_and_cpt_on_a_curve_checked_by_hand():
    # weak = 0.5, strong = 0.75, gap 0.25. Escalating by p_wrong (0.9, 0.8, 0.4, 0.1):
    # share 0.25 -> quality 0.75 (PGR 1); 0.5 -> the teacher is wrong where the system was
    # right: 0.5 (PGR 0); 0.75 -> 0.75 (PGR 1); 1 -> 0.75 (PGR 1).
    # APGR = 0.25 * [(0 + 1) / 2 + (1 + 0) / 2 + (0 + 1) / 2 + (1 + 1) / 2] = 0.625.
    p = [0.9, 0.8, 0.4, 0.1]
    local = [False, True, False, True]
    teacher = [True, False, True, True]
    pts = curve.sweep(p, local, teacher, teacher_usd=[1.0, 2.0, 3.0, 4.0])
    assert [pt.escalated_share for pt in pts] == [0, 0.25, 0.5, 0.75, 1.0]
    assert [pt.pgr for pt in pts] == pytest.approx([0, 1, 0, 1, 1])
    assert [pt.usd for pt in pts] == [0, 1, 3, 6, 10]
    assert curve.apgr(pts) == pytest.approx(0.625)
    # (strong - weak) x (APGR - 0.5) = 0.25 x 0.125
    assert curve.area_over_random(pts) == pytest.approx(0.25 * 0.125)
    assert curve.cpt(pts, 0.5) == 0.25 and curve.cpt(pts, 0.8) == 0.25
    chosen = curve.Objective(0.8).choose(pts)
    assert (chosen.threshold, chosen.escalated_share) == (0.9, 0.25)
    # A perfect ranking of the system's mistakes with an always-right teacher:
    # PGR 0, 0.5, 1, 1, 1 -> APGR = 0.25 * (0.25 + 0.75 + 1 + 1) = 0.75.
    perfect = curve.sweep([0.9, 0.7, 0.3, 0.1], [False, False, True, True], [True] * 4)
    assert curve.apgr(perfect) == pytest.approx(0.75)
    assert curve.cpt(perfect, 0.5) == 0.25 and curve.cpt(perfect, 0.8) == 0.5
    assert curve.Objective(0.8).choose(perfect).threshold == 0.7


def test_tied_probabilities_escalate_together():
    pts = curve.sweep([0.5, 0.5, 0.1, 0.1], [False, True, False, True], [True] * 4)
    assert [pt.escalated_share for pt in pts] == [0, 0.5, 1.0]
    assert curve.apgr(pts) == pytest.approx(0.5 * (0 + 0.5) / 2 + 0.5 * (0.5 + 1) / 2)


def test_a_random_policy_recovers_the_share_it_escalates():
    # Random p_wrong: on average APGR = 0.5 and CPT(50%) = 0.5, RouteLLM's random baseline.
    rng = np.random.default_rng(0)
    local = rng.random(200) < 0.6
    teacher = rng.random(200) < 0.9
    apgrs = [curve.apgr(curve.sweep(rng.random(200), local, teacher)) for _ in range(300)]
    assert np.mean(apgrs) == pytest.approx(0.5, abs=0.02)
    weak, strong = curve.gap(local, teacher)
    line = curve.random_policy(weak, strong, [0.0, 0.5, 1.0])
    assert line == pytest.approx([weak, (weak + strong) / 2, strong])
    # and a model that ranks the mistakes first does much better than random
    informed = np.where(local, 0.2, 0.8) + rng.normal(0, 0.05, 200)
    assert curve.apgr(curve.sweep(informed, local, teacher)) > 0.8


def test_no_gap_means_no_escalation():
    pts = curve.sweep([0.9, 0.1], [True, False], [True, False])
    assert pts[0].pgr is None and curve.apgr(pts) is None and curve.cpt(pts, 0.5) is None
    assert curve.area_over_random(pts) == 0.0
    # no gap, and the teacher is wrong exactly where the system is right and escalated
    # first: 0.5 below random's (flat) line at share 0.5, area 2 x (0.5 x 0.5 / 2)
    worse = curve.sweep([0.9, 0.1], [True, False], [False, True])
    assert curve.apgr(worse) is None and curve.area_over_random(worse) == pytest.approx(-0.25)
    assert curve.Objective(0.8).choose(pts).threshold == curve.NEVER > 1.0


def test_at_threshold_detection_and_false_escalations():
    at = curve.at_threshold(0.5, [0.9, 0.6, 0.4, 0.7, 0.1], [False, False, False, True, True],
                            [True, True, True, True, False])
    assert at["detection"] == pytest.approx(2 / 3)
    assert at["false_escalation_rate"] == pytest.approx(1 / 2)
    assert at["quality"] == pytest.approx(4 / 5)  # 3 escalated right, 1 kept wrong, 1 right


# ---------------------------------------------------------------------- phases 4B, 4C
def _ctx(tmp_path: Path, phase_id: str, out: str = "stage"):
    """A context over tmp_path/runs (inputs) writing into tmp_path/<out>, on tiny without
    its teacher (these tests feed synthetic queries no teacher was asked)."""
    from cogumi.profile import load_profile
    from cogumi.registry import get_phase
    from cogumi.runner import PhaseContext
    (tmp_path / out).mkdir(parents=True, exist_ok=True)
    profile = load_profile("tiny").model_copy(update={"teacher": None})
    return PhaseContext(profile, get_phase(phase_id), tmp_path / out,
                        tmp_path / "runs", Console(quiet=True))


def _synthetic_outcomes(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        wrong = bool(rng.random() < 0.3)
        lp = (-2.0 if wrong else -0.3) + float(rng.normal(0, 0.4))
        rows.append({"id": f"math:q{i}", "split": "report" if i % 2 else "fit",
                     "domain": "math", "query": f"question {i}",
                     "routes": {"base": {"correct": not wrong, "mean_logprob": lp,
                                         "min_logprob": 3 * lp, "completion_tokens": 9}},
                     "router": {"route": "base", "margin": 1.0}})
    return rows


def test_escalation_is_fitted_on_the_fit_split_only(tmp_path):
    from cogumi.phases import escalate
    rows = _synthetic_outcomes(200, 0)
    (tmp_path / "runs" / "4A").mkdir(parents=True)
    outcomes = tmp_path / "runs" / "4A" / "route_outcomes.jsonl"
    write_outcomes(outcomes, rows)
    m = escalate.run(ctx := _ctx(tmp_path, "4B"))
    first = (ctx.out_dir / "escalation.json").read_text()
    assert m["escalation.fit_queries"] == 100 and m["escalation.report_queries"] == 100
    assert m["escalation.auroc"] > 0.8
    assert "escalation.detection" not in m  # tiny has no teacher yet: missing, not invented
    # Flipping every report-split verdict changes nothing the model was fitted on...
    for r in rows:
        if r["split"] == "report":
            r["routes"]["base"]["correct"] = not r["routes"]["base"]["correct"]
    write_outcomes(outcomes, rows)
    escalate.run(ctx2 := _ctx(tmp_path, "4B", "second"))
    assert (ctx2.out_dir / "escalation.json").read_text() == first
    # ... and flipping a fit-split verdict does change it.
    for r in rows:
        if r["split"] == "fit":
            r["routes"]["base"]["correct"] = not r["routes"]["base"]["correct"]
            break
    write_outcomes(outcomes, rows)
    escalate.run(ctx3 := _ctx(tmp_path, "4B", "third"))
    assert (ctx3.out_dir / "escalation.json").read_text() != first


def _signals_file(path: Path, n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        right = bool(rng.random() < 0.6)
        p = float(np.clip((0.25 if right else 0.75) + rng.normal(0, 0.15), 0, 1))
        rows.append({"id": f"q{i}", "split": "report" if i % 2 else "fit", "correct": right,
                     "p_wrong": p, "teacher": {"correct": bool(rng.random() < 0.95),
                                               "usd": 0.001}})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_threshold_is_chosen_on_fit_and_reported_on_report(tmp_path):
    from cogumi.phases import threshold
    sig = tmp_path / "runs" / "4B" / "signals.jsonl"
    rows = _signals_file(sig, 400, 0)
    m = threshold.run(ctx := _ctx(tmp_path, "4C"))
    th = json.loads((ctx.out_dir / "thresholds.json").read_text())
    fit = [r for r in rows if r["split"] == "fit"]
    expected = curve.Objective(0.80).choose(curve.sweep(
        [r["p_wrong"] for r in fit], [r["correct"] for r in fit],
        [r["teacher"]["correct"] for r in fit]))
    assert th["threshold"] == m["threshold"] == expected.threshold
    assert th["fit"]["pgr"] >= 0.80
    for key in ("apgr", "cpt50", "cpt80", "operating_point.pgr", "area_over_random_lower"):
        assert key in m
    assert m["apgr"] > 0.5 and m["area_over_random_lower"] > 0
    assert (ctx.out_dir / "cost_quality.png").stat().st_size > 0
    # Report-split verdicts do not move the threshold.
    for r in rows:
        if r["split"] == "report":
            r["correct"] = not r["correct"]
    sig.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert threshold.run(_ctx(tmp_path, "4C", "second"))["threshold"] == expected.threshold


def test_threshold_without_a_teacher_escalates_nothing_and_reports_no_metric(tmp_path):
    from cogumi.phases import threshold
    sig = tmp_path / "runs" / "4B" / "signals.jsonl"
    rows = _signals_file(sig, 10, 1)
    for r in rows:
        del r["teacher"]
    sig.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert threshold.run(ctx := _ctx(tmp_path, "4C")) == {}
    assert json.loads((ctx.out_dir / "thresholds.json").read_text())["threshold"] > 1.0


# ---------------------------------------------------------------------- llama.cpp
llama_cpp = pytest.importorskip("llama_cpp")


def test_llama_cpp_routes_record_logprobs_and_embed(tiny_f32_gguf, tmp_path):
    from cogumi.evaluation import GenerationSettings, evaluate, load_task
    from cogumi.routing.outcomes import route_backend
    from cogumi.routing.router import LlamaEmbedding
    folder, _ = tiny_f32_gguf
    gguf = folder / "f32.gguf"
    root = Path(__file__).resolve().parents[1]
    task = load_task("math", root / "fixtures" / "benchmarks" / "routing_math.jsonl")
    backend = route_backend(gguf, None, n_ctx=512, n_threads=1)
    rep = evaluate(backend, task, GenerationSettings(max_new_tokens=8), limit=2,
                   loglikelihood=False)
    for rec in rep.records:
        lps = rec["token_logprobs"][0]
        assert len(lps) == rec["completion_tokens"][0] > 0 and all(x <= 0 for x in lps)
    backend.llama.close()
    qs, labs = _queries(9, 5)
    emb = LlamaEmbedding(gguf, n_ctx=512, n_threads=1)
    router = Router.fit(qs, labs, ROUTES, emb)
    saved = router.save(tmp_path / "router")
    before = router.route_many(qs[:4])
    router.close()
    with pytest.raises(RouterFileError, match="model.gguf is missing"):
        Router.load(saved)
    loaded = Router.load(saved, base_gguf=gguf, n_threads=1)
    after = loaded.route_many(qs[:4])
    assert [r for r, _ in before] == [r for r, _ in after]
    assert np.allclose([m for _, m in before], [m for _, m in after])
    loaded.close()


# ---------------------------------------------------------------------- phase 4A's rules
def test_router_features_are_chosen_by_accuracy_then_latency():
    from cogumi.phases.route import choose_features
    # best 0.90 on 100 queries: standard error 0.03, so 0.88 counts as equally accurate
    fast = {"kind": "hashed-ngrams", "cv_accuracy": 0.88, "latency_ms_median": 0.2}
    slow = {"kind": "llama-embedding", "cv_accuracy": 0.90, "latency_ms_median": 9.0}
    assert choose_features([fast, slow], 100)[0] is fast
    worse = {**fast, "cv_accuracy": 0.85}  # more than one standard error below
    pick, why = choose_features([worse, slow], 100)
    assert pick is slow and "standard error 0.030" in why


def test_modifiers_are_checked_against_their_adapter_and_the_base(tmp_path):
    from cogumi.artifacts import sha256_file
    from cogumi.phases.route import read_modifiers
    from cogumi.runner import PhaseInputError
    ctx = _ctx(tmp_path, "4A")
    for pid in ("3A", "3B", "3C"):
        (tmp_path / "runs" / pid).mkdir(parents=True)
    adapter = tmp_path / "runs" / "3A" / "adapter.gguf"
    adapter.write_bytes(b"lora")
    mod = {"name": "code", "phase": "3A", "domain": "code", "task": "code",
           "adapter_gguf_sha256": sha256_file(adapter), "adapter_bytes": 4, "lora_rank": 8,
           "lora_alpha": 16.0, "base_gguf_sha256": "b" * 64}
    (tmp_path / "runs" / "3A" / "modifier.json").write_text(json.dumps(mod))
    mods = read_modifiers(ctx, "b" * 64)
    assert [m["name"] for m in mods] == ["code"] and mods[0]["adapter"] == adapter
    assert any("3B ships no modifier" in n for n in ctx.notes)
    with pytest.raises(PhaseInputError, match="'base_gguf_sha256' is not 2C's model.gguf"):
        read_modifiers(ctx, "c" * 64)
    adapter.write_bytes(b"changed")
    with pytest.raises(PhaseInputError, match="'adapter_gguf_sha256' does not match"):
        read_modifiers(ctx, "b" * 64)
    (tmp_path / "runs" / "3A" / "modifier.json").write_text(json.dumps(
        {k: v for k, v in mod.items() if k != "task"}))
    with pytest.raises(PhaseInputError, match="modifier.json: missing key 'task'"):
        read_modifiers(ctx, "b" * 64)


def test_outcome_rows_follow_the_contract(tmp_path):
    from cogumi.evaluation import EvalReport, load_task
    from cogumi.evaluation.splits import IdSplit
    from cogumi.routing.outcomes import outcome_rows
    path = tmp_path / "math_q.jsonl"
    path.write_text('{"problem": "1 + 1?", "level": "Level 1", "type": "Prealgebra", '
                    '"solution": "$\\\\boxed{2}$"}\nnot json\n')
    task = load_task("math", path, on_error="record")
    good = task.items[0]

    def report(correct, lps):
        rec = {"task": "math", "item_id": good.id, "verdicts": [correct],
               "reasons": ["correct" if correct else "wrong_answer"], "completion_tokens": [3],
               "token_logprobs": [lps]}
        return EvalReport(metrics={}, records=[rec], settings={}, backend={}, tasks=[])
    rows, excluded = outcome_rows([task], {"base": report(True, [-0.1, -0.5, -0.3]),
                                           "code": report(False, [])}, IdSplit(0.5, "s"))
    assert [e["id"] for e in excluded] == [f"math:{task.items[1].id}"]
    (row,) = rows
    assert row["id"] == f"math:{good.id}" and row["domain"] == "math"
    assert row["split"] in ("fit", "report") and "1 + 1?" in row["query"]
    assert row["routes"]["base"]["correct"] is True
    assert row["routes"]["base"]["mean_logprob"] == pytest.approx(-0.3)
    assert row["routes"]["base"]["min_logprob"] == -0.5
    assert row["routes"]["code"]["min_logprob"] == EMPTY_LOGPROB  # empty answer: least sure
    write_outcomes(tmp_path / "o.jsonl", [{**row, "router": {"route": "base", "margin": 0.5}}])
    assert read_outcomes(tmp_path / "o.jsonl")[0]["routes"]["base"]["completion_tokens"] == 3


def test_escalation_asks_the_teacher_the_same_queries_and_reads_detection(tmp_path):
    """4B with a teacher: a fake OpenAI-compatible endpoint that knows the answers (all but
    one), the same prompts and verifiers as the routes; detection at the operating point."""
    from http.server import BaseHTTPRequestHandler

    from cogumi.evaluation import load_task
    from cogumi.phases import escalate
    from cogumi.profile import parse_profile
    from cogumi.registry import get_phase
    from cogumi.routing.outcomes import qualified_id, query_text
    from cogumi.runner import PhaseContext

    from .conftest import ROOT, LoopbackServer
    task = load_task("math", ROOT / "fixtures" / "benchmarks" / "routing_math.jsonl")
    items = task.items[:16]
    answers = {it.fields["problem"]: it.reference for it in items}
    wrong_once = items[0].fields["problem"]
    asked = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            content = body["messages"][-1]["content"]
            asked.append(content)
            problem = next(p for p in answers if p in content)
            n = "-1" if problem == wrong_once else answers[problem]
            out = json.dumps({"choices": [{"message": {"role": "assistant",
                                                       "content": f"The answer is {n}"},
                                           "finish_reason": "stop"}],
                              "usage": {"prompt_tokens": 100, "completion_tokens": 5}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    server = LoopbackServer()
    server.serve(Handler)
    try:
        text = (ROOT / "cogumi" / "profiles" / "tiny.toml").read_text()
        text = text.replace(
            text[text.index("queries = {"):text.index("\nreport_fraction")],
            'queries = { math = "fixtures/benchmarks/routing_math.jsonl" }\nlimit = 16')
        # tiny's own [teacher] (the served fixture) gives way to the fake endpoint.
        start = text.index("\n[teacher]")
        end = text.index("\n[", start + 1)
        text = text[:start] + text[end:]
        text += (f'\n[teacher]\nsource = "endpoint"\nbase_url = "{server.url}"\n'
                 f'model = "fake"\napi_key_env = "COGUMI_TEST_NO_KEY"\n'
                 f'price_usd_per_mtok = [1.0, 2.0]\n')
        profile = parse_profile(text, str(tmp_path / "p.toml"))
        rng = np.random.default_rng(0)
        rows = []
        for i, it in enumerate(items):
            right = i % 3 != 0
            lp = (-0.2 if right else -2.5) + float(rng.normal(0, 0.2))
            rows.append({"id": qualified_id(task, it.id), "split": "report" if i % 2 else "fit",
                         "domain": "math", "query": query_text(task, it),
                         "routes": {"base": {"correct": right, "mean_logprob": lp,
                                             "min_logprob": 2 * lp, "completion_tokens": 9}},
                         "router": {"route": "base", "margin": 1.0}})
        (tmp_path / "runs" / "4A").mkdir(parents=True)
        write_outcomes(tmp_path / "runs" / "4A" / "route_outcomes.jsonl", rows)
        (tmp_path / "out").mkdir()
        ctx = PhaseContext(profile, get_phase("4B"), tmp_path / "out", tmp_path / "runs",
                           Console(quiet=True), code_sha256="test")
        m = escalate.run(ctx)
    finally:
        server.close()
    assert len(asked) == 16 and all(q in {r["query"] for r in rows} for q in asked)
    teacher = [json.loads(x) for x in
               (ctx.out_dir / "teacher_outcomes.jsonl").read_text().splitlines()]
    assert {t["id"] for t in teacher} == {r["id"] for r in rows}
    assert sum(t["correct"] for t in teacher) == 15
    assert all((t["prompt_tokens"], t["completion_tokens"]) == (100, 5) for t in teacher)
    sig = [json.loads(x) for x in (ctx.out_dir / "signals.jsonl").read_text().splitlines()]
    assert sig[0]["teacher"]["usd"] == pytest.approx((100 * 1.0 + 5 * 2.0) / 1e6)
    # the system is wrong on every third query, where its log-probabilities are low: the
    # operating point escalates those and nothing else
    assert m["escalation.detection"] == 1.0 and m["escalation.false_escalation_rate"] == 0.0
    assert m["teacher.report_accuracy"] == 1.0


def test_held_out_queries_that_are_evaluation_items_or_training_records_are_refused(tmp_path):
    from cogumi.phases.common import eval_tasks
    from cogumi.phases.route import refuse_overlap, routing_tasks
    from cogumi.runner import PhaseInputError
    ctx = _ctx(tmp_path, "4A")
    (tmp_path / "runs" / "0").mkdir(parents=True)
    curated = tmp_path / "runs" / "0" / "curated.jsonl"
    tasks = routing_tasks(ctx)
    mmlu = next(t for t in tasks if t.name == "mmlu").items[0].fields
    # A shared multiple-choice stem with other options is another question: not refused.
    curated.write_text(json.dumps({"id": "r1", "instruction": mmlu["question"] + " A. 1 B. 2"})
                       + "\n")
    refuse_overlap(ctx, tasks)
    with pytest.raises(PhaseInputError, match=r"evaluation item math:"):
        refuse_overlap(ctx, eval_tasks(ctx))
    problem = next(t for t in tasks if t.name == "math").items[3].fields["problem"]
    curated.write_text(json.dumps({"id": "r2", "instruction": "Solve the following word problem.",
                                   "input": problem}) + "\n")
    with pytest.raises(PhaseInputError, match=r"1 are evaluation items or training records: "
                                              r"math:.* \(curated record r2\)"):
        refuse_overlap(ctx, tasks)
    options = "\n".join(f"{chr(65 + i)}. {c}" for i, c in enumerate(mmlu["choices"]))
    curated.write_text(json.dumps({"id": "r3", "instruction": f"{mmlu['question']}\n{options}"})
                       + "\n")
    with pytest.raises(PhaseInputError, match=r"curated record r3"):
        refuse_overlap(ctx, tasks)


def test_phase_4a_labels_routes_and_writes_the_contract(tmp_path, monkeypatch):
    """4A's orchestration with every route's answers made up (llama.cpp is tested above):
    the code modifier is right exactly on code queries and base on the others, so the
    verifier labels are the source domains and a hashed-n-gram router learns them."""
    from cogumi.artifacts import sha256_file
    from cogumi.evaluation import EvalReport
    from cogumi.phases import route
    from cogumi.profile import parse_profile
    from cogumi.registry import get_phase
    from cogumi.runner import PhaseContext

    from .conftest import ROOT
    runs = tmp_path / "runs"
    for pid in ("0", "2C", "3A", "3B", "3C"):
        (runs / pid).mkdir(parents=True)
    (runs / "0" / "curated.jsonl").write_text("")
    (runs / "2C" / "model.gguf").write_bytes(b"base")
    (runs / "3A" / "adapter.gguf").write_bytes(b"lora")
    (runs / "3A" / "modifier.json").write_text(json.dumps({
        "name": "code", "phase": "3A", "domain": "code", "task": "code",
        "adapter_gguf_sha256": sha256_file(runs / "3A" / "adapter.gguf"), "adapter_bytes": 4,
        "lora_rank": 8, "lora_alpha": 16.0,
        "base_gguf_sha256": sha256_file(runs / "2C" / "model.gguf")}))

    def fake_run_routes(routes, base, tasks, settings, **kw):
        assert base == runs / "2C" / "model.gguf" and routes["code"] == runs / "3A" / "adapter.gguf"
        out = {}
        for name in routes:
            recs = []
            for t in tasks:
                for it in t.items[:kw["limit"]]:
                    right = (t.name == "code") == (name == "code")
                    recs.append({"task": t.name, "item_id": it.id, "verdicts": [right],
                                 "reasons": ["correct" if right else "wrong_answer"],
                                 "completion_tokens": [4],
                                 "token_logprobs": [[-0.1, -0.2] if right else [-2.0, -3.0]]})
            out[name] = EvalReport(metrics={}, records=recs, settings={}, backend={}, tasks=[])
        return out
    monkeypatch.setattr(route, "run_routes", fake_run_routes)
    text = (ROOT / "cogumi" / "profiles" / "tiny.toml").read_text().replace(
        "report_fraction = 0.5", 'report_fraction = 0.5\nlimit = 20\nfeatures = ["hashed-ngrams"]')
    profile = parse_profile(text, str(tmp_path / "p.toml"))
    (tmp_path / "out").mkdir()
    ctx = PhaseContext(profile, get_phase("4A"), tmp_path / "out", runs, Console(quiet=True),
                       code_sha256="test")
    m = route.run(ctx)
    assert m["queries.fit"] + m["queries.report"] == 60
    assert m["routing.accuracy"] >= 0.95 and m["quality.oracle"] == 1.0
    assert m["quality.always_base"] == pytest.approx(40 / 60, abs=0.15)
    assert m["quality.with_router"] == pytest.approx(m["routing.accuracy"])
    # The code modifier rescues every code query the base gets wrong: routing has something
    # to gain, paired on the same report queries.
    assert m["quality.oracle_gain_over_base"] == pytest.approx(1.0 - m["quality.always_base"])
    assert m["quality.oracle_gain_over_base_lower"] > 0
    rows = read_outcomes(ctx.out_dir / "route_outcomes.jsonl")
    assert {r["label"] for r in rows if r["domain"] == "code"} == {"code"}
    assert {r["label"] for r in rows if r["domain"] != "code"} == {"base"}
    assert {r["router"]["decided_by"] for r in rows if r["split"] == "fit"} == {"cross-validated"}
    conf = json.loads((ctx.out_dir / "confusion.json").read_text())["verifier_labels"]
    assert conf["labels"] == ["base", "code"] and conf["n"] == m["queries.report"]
    loaded = Router.load(ctx.out_dir / "router")
    assert loaded.routes == ("base", "code")
    code_query = next(r["query"] for r in rows if r["domain"] == "code")
    assert loaded.route(code_query)[0] == "code"
    assert (ctx.out_dir / "confusion.png").stat().st_size > 0


def test_routing_gains_nothing_when_no_modifier_rescues_a_base_error():
    """4A's capability gate: with the base right wherever a modifier is, the oracle is the
    base and the paired lower bound is 0 (the gate fails); one rescued query in 40 is not
    significant either; ten are."""
    from cogumi.phases.route import oracle_gain_over_base

    def rows(rescued: int, n: int = 40) -> list[dict]:
        return [{"routes": {"base": {"correct": i >= rescued + 5},
                            "code": {"correct": i < rescued or i >= rescued + 5}}} for i in range(n)]
    assert oracle_gain_over_base(rows(0)).lower == 0.0
    assert oracle_gain_over_base(rows(1)).lower <= 0.0
    assert oracle_gain_over_base(rows(10)).lower > 0.0
