"""Phase 1C end to end on the tiny fixture model, with a fake OpenAI-compatible teacher on
loopback that knows the fixtures' answers (a stand-in for a strong teacher; the requests it
receives are checked to carry no reference). The 1B input is the fixture model with a fresh
LoRA (zero update) and its own evaluation. Small limits keep it to well under a minute; what
is checked is the plumbing and the accounting, not the scores."""

from __future__ import annotations

import json
import re

import pytest
from rich.console import Console

from .conftest import ROOT, ChatTeacher, profile_with

BENCH = ROOT / "fixtures" / "benchmarks"


def _answers() -> dict[str, str]:
    """Problem or prompt text -> a correct reply, from the fixture files themselves."""
    out = {}
    for name in ("math.jsonl", "math_dev.jsonl"):
        for line in (BENCH / name).read_text().splitlines():
            r = json.loads(line)
            boxed = re.findall(r"\\boxed\{([^}]*)\}", r["solution"])[-1]
            out[r["problem"]] = f"Let me compute. The answer is {boxed}."
    for name in ("code.jsonl", "code_train.jsonl"):
        for line in (BENCH / name).read_text().splitlines():
            r = json.loads(line)
            out[r["prompt"]] = f"```python\n{r['prompt']}{r['canonical_solution']}```"
    for line in (BENCH / "mmlu.jsonl").read_text().splitlines():
        r = json.loads(line)
        out[r["question"] + "\n" + "\n".join(f"{'ABCD'[i]}. {c}" for i, c in
                                             enumerate(r["choices"]))] = \
            f"The answer is {'ABCD'[r['answer']]}."
    return out


class OracleTeacher(ChatTeacher):
    def __init__(self):
        self.answers = _answers()
        super().__init__(lambda text: "arithmetic and short functions" if "A student model" in text
                         else next((a for q, a in self.answers.items() if q in text), "I am not sure."),
                         model_id="oracle")


def _profile(tmp_path, url):
    profile, _ = profile_with(tmp_path, f"""
[teacher]
source = "endpoint"
base_url = "{url}"
model = "oracle"
concurrency = 2
price_usd_per_mtok = [1.0, 4.0]
""")
    profile = profile.model_copy(update={
        "eval": profile.eval.model_copy(update={"limit": 8, "max_new_tokens": 48}),
        "distill": profile.distill.model_copy(update={
            "pools": [p.model_copy(update={"limit": 40}) for p in profile.distill.pools],
            "examples_per_cluster": 4, "epochs": 1, "embed_batch_size": 32}),
    })
    return profile


def _fake_1b(ctx):
    """The fixture model with a fresh LoRA (B = 0: the base model's outputs) as 1B."""
    from peft import LoraConfig, get_peft_model

    from cogumi.models import load_base_model
    from cogumi.phases.common import evaluate_model
    loaded = load_base_model(ctx.profile.model, ctx.root, "cpu")
    t = ctx.profile.training
    loaded.model = get_peft_model(loaded.model, LoraConfig(
        r=t.lora_rank, lora_alpha=t.lora_alpha, target_modules=list(t.target_modules),
        lora_dropout=0.0, task_type="CAUSAL_LM"))
    one_b = ctx.runs_dir / "1B"
    loaded.model.save_pretrained(one_b / "adapter")
    evaluate_model(ctx, loaded, one_b / "eval_after")


@pytest.mark.slow
def test_phase_1c_clusters_distils_trains_and_a_rerun_asks_nothing(tmp_path):
    from cogumi.phases import teacher_distill
    from cogumi.registry import get_phase
    from cogumi.runner import PhaseContext

    srv = OracleTeacher()
    try:
        profile = _profile(tmp_path, srv.url)
        runs = tmp_path / "runs"

        def ctx(out):
            out.mkdir(parents=True, exist_ok=True)
            return PhaseContext(profile=profile, phase=get_phase("1C"), out_dir=out,
                                runs_dir=runs, console=Console(quiet=True))
        c1 = ctx(runs / "1C")
        _fake_1b(PhaseContext(profile=profile, phase=get_phase("1B"), out_dir=runs / "1B",
                              runs_dir=runs, console=Console(quiet=True)))
        metrics = teacher_distill.run(c1)
        out = runs / "1C"
        # Every pool item is accounted for, on one side, in one cluster.
        pool = [json.loads(x) for x in (out / "failure_pool.jsonl").read_text().splitlines()]
        assert len(pool) == metrics["failure_pool.items"] == 40 + 40  # each pool at its limit
        assert {r["side"] for r in pool} == {"fit", "heldout"}
        k = int(metrics["failure_clusters"])
        assert k >= 1 and {r["cluster"] for r in pool} <= set(range(k))
        clusters = json.loads((out / "clusters.json").read_text())
        assert len(clusters["clusters"]) == k and "silhouette" in clusters["criterion"] or k == 1
        assert all(c["label"] == "arithmetic and short functions" for c in clusters["clusters"])
        # Examples: kept + rejected = requests, each kept one verified.
        kept = [json.loads(x) for x in (out / "teacher_examples.jsonl").read_text().splitlines()]
        rejected = (out / "teacher_rejected.jsonl").read_text().splitlines()
        assert len(kept) + len(rejected) == metrics["teacher.requests"] > 0
        assert kept and all(e["source"] == "teacher" and e["verified_by"] for e in kept)
        # The teacher never saw a reference: no solution text, no canonical solution.
        sent = json.dumps(srv.bodies)
        for line in (BENCH / "math_dev.jsonl").read_text().splitlines()[:40]:
            assert json.loads(line)["solution"] not in sent
        assert "check(candidate)" not in sent
        assert (out / "adapter" / "adapter_model.safetensors").is_file()
        for key in ("teacher_relative", "clusters.min_failure_drop_lower",
                    "vs_input.worst_delta_upper", "math.accuracy", "code.pass@1"):
            assert key in metrics
        assert metrics["math.teacher_score"] == 1.0  # the oracle is right on every item
        usage = json.loads((out / "teacher_usage.json").read_text())
        assert usage["stages"]["examples"]["sent"] == metrics["teacher.requests"]
        assert metrics["teacher.cost_usd"] == pytest.approx(
            metrics["teacher.sent"] * (50 * 1.0 + 12 * 4.0) / 1e6)
        report = (out / "report.md").read_text()
        assert "### Failure clusters" in report and "### Teacher cost" in report

        # A rerun: every teacher answer from the cache, nothing sent, nothing spent.
        calls = len(srv.bodies)
        again = teacher_distill.run(ctx(runs / "1C-again"))
        assert len(srv.bodies) == calls
        assert again["teacher.sent"] == 0 and again["teacher.cost_usd"] == 0.0
        assert again["teacher_examples"] == metrics["teacher_examples"]
    finally:
        srv.close()


def test_phase_1c_refuses_a_pool_that_is_the_evaluation_set(tmp_path):
    from cogumi.phases.teacher_distill import pool_tasks
    from cogumi.registry import get_phase
    from cogumi.runner import PhaseContext, PhaseInputError
    profile, _ = profile_with(tmp_path, "")
    bad = profile.distill.model_copy(update={"pools": [
        profile.distill.pools[0].model_copy(update={"source": "fixtures/benchmarks/math.jsonl"})]})
    ctx = PhaseContext(profile=profile.model_copy(update={"distill": bad}),
                       phase=get_phase("1C"), out_dir=tmp_path, runs_dir=tmp_path,
                       console=Console(quiet=True))
    with pytest.raises(PhaseInputError, match=r"\[distill\] pools: 150 item.*evaluation items"):
        pool_tasks(ctx)
    assert len(pool_tasks(ctx.__class__(profile=profile, phase=get_phase("1C"), out_dir=tmp_path,
                                        runs_dir=tmp_path, console=Console(quiet=True)))) == 2


def test_a_bad_distill_table_is_one_line_naming_the_key(tmp_path):
    from cogumi.profile import ProfileError, parse_profile
    text = (ROOT / "cogumi" / "profiles" / "tiny.toml").read_text()
    for extra, msg in (("clusters_min = 13", r"distill\.clusters_min 13 > clusters_max 12"),
                       ('batch_output = "out.jsonl"', r"needs distill\.batch_price_usd_per_mtok"),
                       ("teacher_samples = 3", r"teacher_samples > 1 needs teacher_temperature"),
                       ("budget_usd = -1", r"distill\.budget_usd")):
        bad = text.replace("[distill]\n", f"[distill]\n{extra}\n")
        with pytest.raises(ProfileError, match=msg) as err:
            parse_profile(bad, "x.toml")
        assert "\n" not in str(err.value)
    pools = text.replace('{ task = "code", source', '{ task = "code", source = "curated", x')
    with pytest.raises(ProfileError):
        parse_profile(pools, "x.toml")
    curated = text.replace('{ task = "code", source = "fixtures/benchmarks/code_train.jsonl" }',
                           '{ task = "code", source = "curated" }')
    with pytest.raises(ProfileError, match="source 'curated' is phase 0's math records"):
        parse_profile(curated, "x.toml")
