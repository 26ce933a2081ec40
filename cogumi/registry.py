"""Every phase of the seed's plan, in one table.

This module imports nothing heavy on purpose: the noxfile reads it to make one session per
implemented phase, and `cogumi plan` reads it on machines without torch.

A phase is *implemented* when `entry` names a function `run(ctx) -> dict[str, float]`.
Phases without an entry are listed by `cogumi plan` as "not implemented" and refuse to run:
there are no stubs that pretend to work.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Both standard-library only: phase 0's metric names come from its rules and domains.
from cogumi.data.quality import REMOVAL_RULES
from cogumi.data.sources import DOMAINS


@dataclass(frozen=True)
class PhaseSpec:
    id: str
    title: str
    inputs: tuple[str, ...]
    """Earlier phases whose signed-off artifacts this phase reads (see `inputs_for`)."""
    outputs: tuple[str, ...]
    """Files (or folders, ending in '/') the phase writes into its artifact folder."""
    metrics: tuple[str, ...]
    """Metric names the phase reports; a gate file may only name these."""
    entry: str | None = None
    """'module:function' of the implementation, or None when no issue has built it yet."""
    seed_cost_usd: str = ""
    """The seed's own cost figure, quoted, for `cogumi plan` to compare against."""
    seed_duration: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)
    config: tuple[str, ...] = ()
    """The profile tables this phase reads ('data', 'training', ...). A sign-off stays valid
    while these (and the phase's gate overrides) are unchanged, so editing phase 2's table
    does not rerun phase 1A. Empty: every table, the safe default."""

    unless_declared: tuple[tuple[str, str, str], ...] = ()
    """(input, table, instead): read `instead` in place of `input` when the profile declares
    no [table], because the phase that writes `input` cannot run without it (1C refuses a
    profile without [distill]; such a profile's chain goes 1B -> 2A directly)."""

    def inputs_for(self, profile=None) -> tuple[str, ...]:
        """The inputs under `profile` (any object with the profile's tables as attributes,
        None when absent). Without a profile: the declared inputs, the full chain."""
        if profile is None:
            return self.inputs
        swap = {inp: instead for inp, table, instead in self.unless_declared
                if getattr(profile, table, None) is None}
        return tuple(dict.fromkeys(swap.get(i, i) for i in self.inputs))

    @property
    def implemented(self) -> bool:
        return self.entry is not None

    @property
    def gate_file(self) -> str:
        return f"gates/{self.session_name}.toml"

    @property
    def session_name(self) -> str:
        """The nox session name: phase0, phase1a, phase2f, ..."""
        return "phase" + self.id.lower()


# Metrics every evaluation report provides (see cogumi.evaluation); 1A reports them
# before and after training, later phases after their own change.
_EVAL = ("math.accuracy", "mmlu.accuracy", "code.pass@1")
_EVAL_BEFORE = tuple("before." + m for m in _EVAL)
# Every phase that changes the model: its paired change against its input on the same items
# (cogumi.evaluation.paired) and whether each score is above chance.
_JUDGED = (("vs_input.worst_delta_upper",)
           + tuple(f"vs_input.{m}.{s}" for m in _EVAL for s in ("delta", "delta_lower",
                                                                  "delta_upper"))
           + tuple(f"{m}.lower95_above_chance" for m in _EVAL))
# The seed's 1A/1B scores were (wins + half ties) / n against GPT-4's own answers
# (shared/seed/ORIGIN_FINDINGS.md): measured against the reference model a profile names.
# Each item decided by the verifier on both sides; the seed's ties are the same verdict.
_VS_REFERENCE = (tuple(f"{t}.{m}" for t in ("math", "code", "mmlu")
                       for m in ("preference_vs_reference", "preference_vs_reference_lower",
                                 "preference_vs_reference_upper", "ties_vs_reference",
                                 "wins_vs_reference", "losses_vs_reference",
                                 "ties_both_right_vs_reference"))
                 + ("reference.math.accuracy", "reference.mmlu.accuracy",
                    "reference.code.pass@1"))

# The suite's headline scores (cogumi.evaluation.paired.SUITE, not imported: it pulls in
# numpy; tests/test_validate.py checks the two agree).
_SUITE = ("math.accuracy", "mmlu.accuracy", "code.pass@1", "gsm8k.accuracy",
          "humaneval.pass@1", "gpqa.accuracy", "bfcl.accuracy")

# Phases 3A-3C: a LoRA modifier trained on 2E's recovered weights (the full-precision
# model 2C exported) and judged in llama.cpp with its GGUF adapter on 2C's shipped file; the
# declared modifier says which domain, benchmark and LoRA settings (profile [[modifiers]]).
_MODIFIER_ENTRY = "cogumi.phases.modifier:run"
_MODIFIER_INPUTS = ("2C", "2E", "0")
_MODIFIER_OUTPUTS = ("adapter/", "adapter.gguf", "modifier.json", "eval_base/",
                     "eval_modifier/", "crosscheck.json", "train_log.json", "loss_curve.png",
                     "teacher_examples.jsonl", "teacher_rejected.jsonl", "teacher_usage.json",
                     "report.md")
_MODIFIER_METRICS = (
    "task.score", "task.base_score", "task.lower95_above_chance", "gain", "gain_lower", "gain_upper",
    "teacher_relative", "teacher.score", "size_mb", "adapter_bytes", "adapter_bytes_per_rank",
    "lora.parameters", "lora.rank",
    "off_domain.worst_delta", "off_domain.worst_delta_lower", "off_domain.worst_delta_upper",
    "crosscheck.transformers_score", "crosscheck.llamacpp_score",
    "crosscheck.item_agreement", "train.records", "train.examples", "train.excluded",
    "train.steps", "train.heldout_loss_before", "train.heldout_loss_after",
    "teacher_examples.kept", "teacher_examples.rejected", "teacher_examples.sent",
    "teacher_examples.cache_hits", "teacher_examples.cost_usd")
_MODIFIER_CONFIG = ("modifiers", "model", "training", "eval", "gguf", "hardware", "teacher")
_MODIFIER_NOTES = ("one phase module serves every modifier: cogumi.phases.modifier",
                   "inputs: 2C's model.gguf (the shipped base), 2E's model/ (its "
                   "full-precision weights, trained on), 0's curated records")

# The trained model compression starts from: 1C's, unless the profile declares no [distill]
# (gemma-270m, llama-3.1-8b, qwen-coder-0.5b today), where 1C cannot run and 1B's model is the
# last trained one. The simplest rule that keeps every shipped profile runnable.
_TRAINED_MODEL = (("1C", "distill", "1B"),)

PHASES: tuple[PhaseSpec, ...] = (
    PhaseSpec(
        "0", "Curated dataset: load, normalise, filter, verify English, deduplicate", (),
        ("curated.jsonl", "removed.jsonl", "quarantine.jsonl", "near_duplicates.jsonl",
         "domain_counts.json", "domain_mix.png", "curation_stats.json", "report.md"),
        ("records.in", "records.kept", "records.removed", "records.quarantined",
         "accounting.unbalanced", "accounting.misfiled", "schema.valid_share",
         "english.share", "english.input_share", "english.uncertain_kept",
         "english.undetermined_kept", "english.planted_removed_share",
         "dedup.exact_removed", "dedup.near_removed", "dedup.removed_share",
         "dedup.exact_duplicates_left", "dedup.planted_precision", "dedup.planted_recall")
        + tuple(f"removed.{rule}" for rule in REMOVAL_RULES)
        + tuple(f"domain.{d}" for d in DOMAINS),
        entry="cogumi.phases.curate:run", seed_cost_usd="0 (completed before the plan)",
        seed_duration="done", config=("data",)),
    PhaseSpec(
        "1A", "Base model: LoRA / QLoRA supervised fine-tuning", ("0",),
        ("adapter/", "loss_curve.png", "eval_before/", "eval_after/", "train_log.json",
         "reference_eval/"),
        _EVAL + _EVAL_BEFORE + _JUDGED + _VS_REFERENCE + (
                                "sft.heldout_loss_before", "sft.heldout_loss_after",
                                "sft.heldout_loss_improvement", "sft.train_examples",
                                "sft.excluded_examples", "sft.steps"),
        entry="cogumi.phases.sft:run", seed_cost_usd="220", seed_duration="3 weeks",
        config=("model", "training", "eval", "teacher", "hardware")),
    PhaseSpec(
        "1B", "Self-consistency distillation", ("1A", "0"),
        ("adapter/", "self_distillation.jsonl", "dropped.jsonl", "diagnostic_before/",
         "diagnostic_after/", "eval_after/", "loss_curve.png", "comparison.json",
         "generation_temperatures.json", "lm_eval_crosscheck.json", "reference_eval/"),
        _EVAL + _EVAL_BEFORE + _JUDGED + _VS_REFERENCE + (
            "consistency", "before.consistency", "consistency.gain", "consistency.gain_lower",
            "consistency.gain_upper", "math.unchanged_since_1a", "code.unchanged_since_1a",
            "distill.kept",
            "distill.dropped", "lm_eval.item_disagreements",
            "lm_eval.math_extraction_differences", "lm_eval.scores_within_one_stderr"),
        entry="cogumi.phases.self_consistency:run",
        config=("model", "training", "eval", "self_consistency", "teacher", "hardware"),
        seed_cost_usd="12-17", seed_duration="1 week"),
    PhaseSpec(
        "1C", "Teacher distillation on clustered failures", ("1B", "0"),
        ("adapter/", "pool_before/", "pool_after/", "failure_pool.jsonl", "clusters.json",
         "teacher_examples.jsonl", "teacher_rejected.jsonl", "teacher_usage.json",
         "teacher_eval/", "eval_after/", "loss_curve.png", "report.md"),
        _EVAL + _JUDGED + (
            "failure_clusters", "clusters.silhouette", "clusters.min_failure_drop_lower",
            "failure_pool.items", "failure_pool.fit_items", "failure_pool.heldout_items",
            "failure_pool.fit_failures", "failure_pool.failure_rate_before",
            "teacher_examples", "teacher.requests", "teacher.rejected", "teacher.sent",
            "teacher.cache_hits", "teacher.prompt_tokens", "teacher.completion_tokens",
            "teacher.cost_usd", "teacher_relative")
        + tuple(f"{t}.teacher_relative" for t in ("math", "mmlu", "code")),
        entry="cogumi.phases.teacher_distill:run",
        config=("model", "training", "eval", "distill", "teacher", "hardware"),
        seed_cost_usd="285", seed_duration="1 week",
        notes=("the student's score over the teacher's on the same items is teacher_relative "
               "(the seed's \"% of GPT-4\": the profile's teacher stands in for GPT-4)",)),
    # Phase 2's ids keep the seed's names, but its inputs follow the real data flow: recovery
    # (2E) must come before quantization and export to end up in the shipped file, so
    # 1C -> 2A prune -> 2E recover -> 2B quantize; 2C exports 2E's full-precision weights.
    # The seed's chain is 1B -> 1C -> 2A: 2A prunes 1C's model (and reads 0 for calibration
    # records). A profile without [distill] cannot run 1C, so there 2A reads 1B instead
    # (_TRAINED_MODEL); `cogumi plan` shows which.
    PhaseSpec("2A", "Pruning (SparseGPT)", ("1C", "0"),
              ("model/", "eval/", "calibration.json", "sparsity.json", "retention.json",
               "sizes.json", "report.md"),
              _EVAL + _EVAL_BEFORE + _JUDGED + ("sparsity", "sparsity.all_parameters",
                                      "sparsity.min_layer", "retention", "retention.mean",
                                      "size_mb", "calibration.records",
                                      "prune.heldout_loss_unpruned", "prune.heldout_loss_after"),
              entry="cogumi.phases.prune:run", seed_cost_usd="180", seed_duration="2 weeks",
              config=("model", "training", "eval", "prune", "hardware"),
              unless_declared=_TRAINED_MODEL,
              notes=("prunes 1C's model (1B's where the profile declares no [distill]) and "
                     "reads 0's curated records for calibration",
                     "data flow: 2A -> 2E -> 2B, and 2E -> 2C -> 2D -> 2F (2C requires 2B's "
                     "sign-off)")),
    PhaseSpec("2B", "4-bit quantization (AWQ / GPTQ, W4A16)", ("2E", "0"),
              ("model/", "eval/", "quantization.json", "retention.json", "sizes.json",
               "report.md"),
              _EVAL + _EVAL_BEFORE + _JUDGED + ("retention", "retention.step", "retention.mean",
                                      "size_mb", "weights.tensor_mb", "bits_per_parameter",
                                      "quantized.linear_share", "sparsity"),
              entry="cogumi.phases.quantize:run", seed_cost_usd="90", seed_duration="4 days",
              config=("model", "training", "eval", "quantize", "hardware"),
              notes=("quantizes 2E's recovered model (the seed orders 2B before 2E; recovery "
                     "must precede quantization to reach the shipped weights)",
                     "retention is cumulative against the uncompressed model 2A pruned (1C, "
                     "or 1B without [distill]); "
                     "retention.step is against 2E")),
    # 2C exports 2E's full-precision merged model (llama.cpp makes K-quants from F16/F32
    # weights, not from 2B's W4A16) and requires 2B's sign-off, so the 4-bit gate stands
    # before anything ships.
    PhaseSpec("2C", "GGUF export and K-quants", ("2E", "2B"),
              ("model.gguf", "gguf/", "gguf_report.json", "eval_after/", "retention.json",
               "sizes.json", "report.md"),
              _EVAL + _JUDGED + ("size_mb", "gguf.tokenizer_agreement", "gguf.top1_agreement",
                       "gguf.mean_kl", "gguf.max_kl", "gguf.base.top1_agreement",
                       "gguf.base.mean_kl", "gguf.base.max_kl", "gguf.intended_share",
                       "retention"),
              entry="cogumi.phases.gguf:run", seed_cost_usd="0", seed_duration="3 days",
              config=("model", "eval", "gguf", "hardware")),
    PhaseSpec("2D", "zstd packing", ("2C",),
              ("model.gguf.zst", "model.gguf.zst.json", "sizes.json", "report.md"),
              ("size_mb", "compression_ratio", "roundtrip_ok"),
              entry="cogumi.phases.pack:run", seed_cost_usd="0", seed_duration="2 days",
              config=("pack",)),
    PhaseSpec("2E", "Recovery fine-tuning", ("2A", "0", "1C"),
              ("model/", "eval/", "loss_curve.png", "recovery.json", "retention.json",
               "sizes.json", "report.md"),
              _EVAL + _EVAL_BEFORE + _JUDGED + ("retention_vs_2a", "retention", "sparsity",
                                      "sparsity.after_merge_before_mask",
                                      "recovery.heldout_loss_2a", "recovery.heldout_loss_after",
                                      "recovery.heldout_loss_improvement",
                                      "recovery.train_examples", "recovery.heldout_loss_unpruned",
                                      "size_mb"),
              entry="cogumi.phases.recovery:run", seed_cost_usd="70", seed_duration="4 days",
              config=("training", "eval", "prune", "recovery", "hardware"),
              unless_declared=_TRAINED_MODEL,
              notes=("runs on 2A's pruned model, before quantization (the seed lists it after "
                     "2D; a LoRA merged after export would never reach the shipped file)",
                     "the merged LoRA delta is dense: 2A's mask is re-applied after merging",
                     "reads 1C (1B without [distill]), the unpruned model 2A pruned: the "
                     "teacher when recovery.objective is distill")),
    # 2F calibrates the model as shipped: 2D's packed file, unpacked and checksum-verified.
    PhaseSpec("2F", "Confidence calibration", ("2D",),
              ("calibration.json", "reliability.png", "calibration_items.jsonl", "sizes.json",
               "report.md"),
              ("ece_before", "ece_after", "ece_reduction", "ece_reduction_lower",
               "ece_reduction_upper", "temperature_within_search_range",
               "size_mb"),
              entry="cogumi.phases.calibrate:run", seed_cost_usd="35", seed_duration="3 days",
              config=("eval", "gguf", "calibration")),
    # Phase 3: one phase module builds every modifier the profile declares ([[modifiers]]:
    # its name, domains, benchmark and LoRA settings); the ids are the seed's three.
    PhaseSpec("3A", "Code modifier (domain LoRA)", _MODIFIER_INPUTS, _MODIFIER_OUTPUTS,
              _MODIFIER_METRICS, entry=_MODIFIER_ENTRY, seed_cost_usd="200",
              seed_duration="10 days", config=_MODIFIER_CONFIG, notes=_MODIFIER_NOTES),
    PhaseSpec("3B", "Reasoning modifier (domain LoRA)", _MODIFIER_INPUTS, _MODIFIER_OUTPUTS,
              _MODIFIER_METRICS, entry=_MODIFIER_ENTRY, seed_cost_usd="207",
              seed_duration="10 days", config=_MODIFIER_CONFIG, notes=_MODIFIER_NOTES),
    PhaseSpec("3C", "Automation modifier (domain LoRA)", _MODIFIER_INPUTS, _MODIFIER_OUTPUTS,
              _MODIFIER_METRICS, entry=_MODIFIER_ENTRY, seed_cost_usd="170",
              seed_duration="10 days", config=_MODIFIER_CONFIG, notes=_MODIFIER_NOTES),
    # 4A reads every modifier phase (its adapter.gguf and modifier.json), the base GGUF they
    # apply to, and phase 0's curated records (held-out queries must not be training items).
    PhaseSpec("4A", "Router training", ("2C", "3A", "3B", "3C", "0"),
              ("router/", "route_outcomes.jsonl", "confusion.json", "confusion.png", "routes/",
               "report.md"),
              ("routing.accuracy", "routing.source_domain.accuracy", "routing.cv_accuracy",
               "routing.latency_ms_median", "routing.latency_ms_p95",
               "routing.features_is_embedding", "size_mb", "queries.fit", "queries.report",
               "quality.oracle", "quality.oracle_gain_over_base", "quality.oracle_gain_over_base_lower",
               "quality.with_router", "quality.with_source_domain_router",
               "quality.source_domain_route")
              + tuple(f"quality.always_{r}" for r in ("base", "code", "reasoning", "automation"))
              + tuple(f"candidate.{k}.{m}" for k in ("hashed-ngrams", "llama-embedding")
                      for m in ("cv_accuracy", "latency_ms_median", "size_mb")),
              entry="cogumi.phases.route:run", seed_cost_usd="45", seed_duration="1 week",
              config=("model", "eval", "gguf", "routing")),
    PhaseSpec("4B", "Escalation logic", ("4A",),
              ("escalation.json", "signals.jsonl", "teacher_outcomes.jsonl", "teacher_eval/",
               "report.md"),
              ("escalation.detection", "escalation.false_escalation_rate",
               "escalation.escalated_share", "escalation.threshold", "escalation.auroc",
               "escalation.at_confidence_0.80.detection",
               "escalation.at_confidence_0.80.false_escalation_rate",
               "escalation.at_confidence_0.80.escalated_share",
               "escalation.fit_queries", "escalation.report_queries",
               "escalation.report_wrong_share", "teacher.report_accuracy", "size_mb"),
              entry="cogumi.phases.escalate:run", seed_cost_usd="30", seed_duration="4 days",
              config=("model", "eval", "gguf", "routing", "teacher")),
    PhaseSpec("4C", "Threshold optimisation", ("4B",),
              ("thresholds.json", "curve.json", "cost_quality.png", "report.md"),
              ("threshold", "operating_point.escalated_share", "operating_point.quality",
               "operating_point.usd", "operating_point.pgr", "operating_point.detection",
               "operating_point.false_escalation_rate", "quality.no_escalation",
               "quality.always_teacher", "usd.always_teacher", "seed_cutoff.escalated_share",
               "seed_cutoff.quality", "seed_cutoff.pgr", "apgr", "cpt50", "cpt80",
               "area_over_random", "area_over_random_lower", "area_over_random_upper"),
              entry="cogumi.phases.threshold:run", seed_cost_usd="0", seed_duration="2 days",
              config=("teacher",)),
    PhaseSpec("5A", "Deployment bundle and OpenAI-compatible API",
              ("2D", "2C", "3A", "3B", "3C", "4A", "4B", "4C"),
              ("bundle/", "sizes.json", "gate_runs.json", "report.md"),
              ("bundle.size_mb", "bundle.folder_mb", "bundle.files", "bundle.verified",
               "api.smoke_ok"),
              entry="cogumi.phases.bundle:run", seed_cost_usd="0", seed_duration="4 days",
              config=("model", "eval", "gguf", "teacher")),
    # 5B asks the served bundle (5A) and compares with the offline figures of 4A-4C.
    PhaseSpec("5B", "End-to-end validation", ("5A", "4A", "4B", "4C"),
              ("validation.json", "eval_system/", "eval_base/", "eval_teacher/",
               "routing_api.jsonl", "load.jsonl", "report.md"),
              ("system.size_mb", "benchmarks.api_requests", "benchmarks.api_errors",
               "benchmarks.escalated_share", "vs_base.worst_delta_upper")
              + tuple(f"{who}.{s}" for who in ("system", "base", "teacher") for s in _SUITE)
              + tuple(f"{vs}.{s}.{k}" for vs in ("vs_base", "vs_teacher") for s in _SUITE
                      for k in ("delta", "delta_lower", "delta_upper"))
              + tuple(f"claim.{d}.{k}" for d in ("code", "reasoning", "automation")
                      for k in ("system_minus_teacher", "system_minus_teacher_lower",
                                "system_minus_teacher_upper", "system_over_teacher",
                                "system_lower95_above_chance"))
              + ("claim.domains_at_least_teacher", "routing.queries",
                 "routing.decisions_differing_from_4a", "routing.api_accuracy",
                 "routing.offline_accuracy", "routing.offline_accuracy_recomputed",
                 "escalation.decisions_differing_from_4c", "escalation.api_rate",
                 "escalation.offline_rate", "escalation.offline_rate_recomputed",
                 "escalation.teacher_answered_share", "escalation.max_p_wrong_difference",
                 "load.clients", "load.requests_per_client", "load.requests", "load.errors",
                 "load.lost", "load.duplicated", "load.local_answers_compared",
                 "load.local_answers_differing", "load.wall_s", "load.completion_tokens",
                 "load.tokens_per_s", "load.latency_p50_s", "load.latency_p95_s"),
              entry="cogumi.phases.validate:run", seed_cost_usd="100", seed_duration="1 week",
              config=("model", "eval", "gguf", "teacher", "modifiers", "routing")),
)

_BY_ID = {p.id: p for p in PHASES}


class UnknownPhase(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want a plain line
        return self.args[0]


def get_phase(phase_id: str) -> PhaseSpec:
    """Look a phase up by id ('1A', '1a') or nox session name ('phase1a')."""
    key = phase_id.strip().upper()
    if key.startswith("PHASE"):
        key = key[len("PHASE"):]
    if key not in _BY_ID:
        raise UnknownPhase(
            f"unknown phase {phase_id!r}; phases are: {', '.join(_BY_ID)}")
    return _BY_ID[key]


def upstream(phase_id: str, profile=None) -> list[PhaseSpec]:
    """All phases `phase_id` depends on under `profile` (PhaseSpec.inputs_for; None: the
    declared inputs), in an order where inputs come first."""
    order: list[PhaseSpec] = []
    seen: set[str] = set()

    def visit(pid: str) -> None:
        for dep in get_phase(pid).inputs_for(profile):
            if dep not in seen:
                visit(dep)
                seen.add(dep)
                order.append(get_phase(dep))

    visit(get_phase(phase_id).id)
    return order


def implemented_phases() -> list[PhaseSpec]:
    return [p for p in PHASES if p.implemented]
