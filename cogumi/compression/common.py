"""What the compression phases (2A-2F) share: loading a phase's model, saving one, measuring
retention against the uncompressed model, and size accounting per artifact.

The data flow (the lead's decision, recorded in the registry notes and the README): recovery
must precede quantisation and export to end up in the shipped file, so

    1C -> 2A prune -> 2E recover -> 2B quantise (W4A16)
                            \\-> 2C GGUF (from 2E's full-precision weights) -> 2D zstd -> 2F

(1B -> 2A for a profile without [distill], which cannot run 1C: `trained_phase`.)

A phase that writes a Hugging Face model writes it as `model/` with `cogumi_model.json`
beside the weights; `load_merged_phase_model` reads either that or, for 1B and 1C, the base
model with that phase's LoRA adapter merged in.

Every compression phase writes `retention.json`: the reference (the uncompressed trained
model's evaluation, 1C's or 1B's, carried forward from phase to phase so that 2B, 2C, ... can
use it without declaring it as an input) and one row per step.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from cogumi.evaluation.paired import CHANCE, SUITE
from cogumi.models import LoadedModel, load_base_model
from cogumi.runner import PhaseContext, PhaseInputError

MODEL_DIR = "model"
MODEL_INFO = "cogumi_model.json"
"""Beside the weights: add_bos, which phase wrote them, from what."""
RETENTION = "retention.json"
EVAL_METRICS = ("math.accuracy", "mmlu.accuracy", "code.pass@1")
"""The evaluation suite's headline scores; retention is computed over these."""
MB = 1_000_000
"""Sizes are in MB of 10^6 bytes, the unit of the seed's 520 MB target."""


# ---------------------------------------------------------------------------------- loading

ADAPTER_PHASES = ("1B", "1C")
"""Phases whose artifact is a LoRA adapter on the profile's base model (1C trains 1B's
adapter further and saves the whole adapter, so it loads the same way), not a `model/`."""


def training_split(ctx: PhaseContext, records: list[dict], max_examples: int | None,
                   setting: str) -> tuple[list[dict], list[dict]]:
    """(train, held-out) curated records as 1A split them; train cut to `max_examples` by a
    seeded shuffle, said in the notes (`setting` names the profile key)."""
    import random

    from cogumi.training.sft import split_heldout
    train, heldout = split_heldout(records, ctx.profile.training.heldout_fraction)
    if max_examples is not None and len(train) > max_examples:
        random.Random(ctx.profile.seed).shuffle(train)
        ctx.notes.append(f"reduced run: {max_examples} of {len(train)} training records "
                         f"({setting})")
        train = train[:max_examples]
    return train, heldout


def trained_phase(ctx: PhaseContext) -> str:
    """The trained model compression starts from, as the phase's inputs say under its
    profile: "1C", or "1B" where the profile declares no [distill] (registry _TRAINED_MODEL)."""
    inputs = ctx.phase.inputs_for(ctx.profile)
    return next(p for p in ("1C", "1B") if p in inputs)


def load_merged_phase_model(ctx: PhaseContext, phase_id: str,
                            device: str | None = None) -> LoadedModel:
    """The full-precision (or, for 2B, compressed-tensors) model a phase produced.

    "1B", "1C": the profile's base model with that phase's LoRA adapter merged in
    (`merge_and_unload`), so compression sees plain Linear weights. Any other phase: its
    `model/` folder, saved by `save_hf_model` (tokenizer and chat template alongside).
    """
    device = device or ctx.profile.hardware.device
    folder = ctx.input_dir(phase_id)
    if phase_id in ADAPTER_PHASES:
        from peft import PeftModel

        adapter = folder / "adapter"
        if not (adapter / "adapter_config.json").exists():
            raise PhaseInputError(f"{adapter}: no adapter_config.json; phase {phase_id}'s artifact "
                                  f"has no LoRA adapter to merge")
        loaded = load_base_model(ctx.profile.model, ctx.root, device)
        peft_model = PeftModel.from_pretrained(loaded.model, adapter)
        loaded.model = peft_model.merge_and_unload()
        loaded.model.eval()
        loaded.origin = f"{loaded.origin} + {adapter} (merged)"
        return loaded
    return load_hf_model(folder / MODEL_DIR, device)


def load_hf_model(model_dir: Path, device: str = "cpu", dequantize: bool = False) -> LoadedModel:
    """A folder written by `save_hf_model` (plain or compressed-tensors weights).

    A compressed-tensors folder loads as users get it: the int4 weights stay packed
    (`weight_packed`, `weight_scale`) and are unpacked in each forward. `dequantize=True`
    unpacks them once into plain `weight` tensors instead (the same numbers), for measuring
    the weights themselves (sparsity, values per group).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info_path = model_dir / MODEL_INFO
    if not info_path.exists():
        raise PhaseInputError(f"{info_path}: missing; {model_dir} was not written by "
                              f"cogumi.compression.common.save_hf_model")
    try:
        info = json.loads(info_path.read_text())
        add_bos = info["add_bos"]
    except (json.JSONDecodeError, KeyError) as exc:
        raise PhaseInputError(f"{info_path}: unreadable or missing key 'add_bos' ({exc})") from None
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    extra = {}
    if dequantize and "quantization_config" in json.loads((model_dir / "config.json").read_text()):
        from transformers.utils.quantization_config import CompressedTensorsConfig
        extra["quantization_config"] = CompressedTensorsConfig(dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, **extra)
    model.to(device)
    model.eval()
    return LoadedModel(model, tokenizer, bool(add_bos), str(model_dir))


def save_hf_model(loaded: LoadedModel, out_dir: Path, **info) -> None:
    """safetensors + config + tokenizer (chat template included) + cogumi_model.json.

    `info` adds keys to cogumi_model.json (e.g. which phase wrote the weights, sparsity).
    A model that llm-compressor compressed is saved by `save_compressed_model` instead, but
    the tokenizer and cogumi_model.json are written the same way.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    loaded.model.save_pretrained(out_dir, safe_serialization=True)
    save_tokenizer_and_info(loaded, out_dir, **info)


def save_tokenizer_and_info(loaded: LoadedModel, out_dir: Path, **info) -> None:
    tok = loaded.tokenizer
    if not getattr(tok, "chat_template", None):
        # Every phase prompts through the chat template; a folder without one would make the
        # next phase evaluate a different prompt format and call the difference "retention".
        raise PhaseInputError(f"{loaded.origin}: tokenizer has no chat template to save")
    tok.save_pretrained(out_dir)
    (Path(out_dir) / MODEL_INFO).write_text(json.dumps(
        {"add_bos": bool(loaded.add_bos), "origin": loaded.origin, **info},
        indent=2, sort_keys=True, default=str) + "\n")


# -------------------------------------------------------------------------------- retention


def retention(after: dict, reference: dict, names=EVAL_METRICS) -> dict:
    """How much of the reference's skill above chance `after` keeps.

    Definition (issue 11): per metric m in `names`, with c_m its chance level (`CHANCE`: 0
    for MATH and code, 0.25 for 4-option MMLU), ratio_m = min(1, (after_m - c_m) /
    (reference_m - c_m)): the share of the reference's margin over guessing that is left,
    capped at 1 so that one metric's gain cannot hide another's loss. A metric counts only
    when its reference is above chance by more than the reference's standard error
    (sqrt(p (1 - p) / n), n from ``<task>.n_items``): below that there is no measurable skill
    to retain, and the metric is listed under `skipped` with the reason. A score missing
    after compression counts as 0 retained. The retention is the minimum over the counted
    metrics (`value`; `mean` is shown beside it); with none counted it is NaN, which fails
    every gate.
    """
    per_metric: dict[str, float | None] = {}
    skipped: dict[str, str] = {}
    for name in names:
        ref, val = reference.get(name), after.get(name)
        chance = CHANCE.get(name, 0.0)
        n = reference.get(f"{SUITE.get(name, name)}.n_items")
        se = math.sqrt(ref * (1 - ref) / n) if _finite(ref) and _finite(n) and n > 0 else None
        if not _finite(ref) or se is None:
            per_metric[name] = None
            skipped[name] = f"reference {ref!r} on {n!r} items: no standard error, no ratio"
        elif ref - chance <= se:
            per_metric[name] = None
            skipped[name] = (f"reference {ref:.3f} is not above chance ({chance:g}) by more "
                             f"than its standard error ({se:.3f}, {int(n)} items): no skill "
                             f"to retain")
        elif not _finite(val):
            per_metric[name] = 0.0  # a score that went missing is a loss, not an exclusion
        else:
            per_metric[name] = min(1.0, (val - chance) / (ref - chance))
    used = [v for v in per_metric.values() if v is not None]
    return {"per_metric": per_metric,
            "value": min(used) if used else float("nan"),
            "mean": sum(used) / len(used) if used else float("nan"),
            "used": [k for k, v in per_metric.items() if v is not None],
            "skipped": skipped,
            "definition": "minimum over the suite's metrics of min(1, (score - chance) / "
                          "(reference - chance)), counting the metrics whose reference is "
                          "above chance (MMLU 0.25, MATH and code 0) by more than its "
                          "standard error"}


def _finite(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


@dataclass
class Reference:
    """The uncompressed model's evaluation every compression step is measured against."""
    phase: str
    metrics: dict
    source: str


def reference_for(ctx: PhaseContext, input_phase: str) -> Reference:
    """The uncompressed reference: the trained phase's own metrics.json (1C or 1B), or carried
    in an input's retention.json."""
    folder = ctx.input_dir(input_phase)
    if input_phase in ADAPTER_PHASES:
        path = folder / "metrics.json"
        metrics = json.loads(path.read_text())
        keep = EVAL_METRICS + tuple(f"{SUITE[m]}.n_items" for m in EVAL_METRICS)
        return Reference(input_phase, {k: metrics[k] for k in keep if k in metrics}, str(path))
    path = folder / RETENTION
    if not path.exists():
        raise PhaseInputError(f"{path}: missing; phase {input_phase} did not record the "
                              f"uncompressed reference its retention is measured against")
    data = json.loads(path.read_text())
    ref = data["reference"]
    return Reference(ref["phase"], ref["metrics"], ref["source"])


def steps_of(ctx: PhaseContext, input_phase: str) -> list[dict]:
    """The retention rows earlier compression steps recorded (empty for 1B and 1C)."""
    if input_phase in ADAPTER_PHASES:
        return []
    return json.loads((ctx.input_dir(input_phase) / RETENTION).read_text())["steps"]


def retention_step(phase_id: str, after: dict, previous: dict, previous_phase: str,
                   reference: Reference) -> dict:
    """One row: retention against the step before (per step) and against the uncompressed
    reference (cumulative)."""
    step = retention(after, previous)
    cumulative = retention(after, reference.metrics)
    return {"phase": phase_id, "previous_phase": previous_phase,
            "metrics": {k: after.get(k) for k in EVAL_METRICS},
            "per_step": step, "cumulative": cumulative}


def write_retention(out_dir: Path, reference: Reference, steps: list[dict]) -> None:
    (Path(out_dir) / RETENTION).write_text(json.dumps(
        {"reference": {"phase": reference.phase, "metrics": reference.metrics,
                       "source": reference.source},
         "definition": retention({}, {})["definition"],
         "steps": steps}, indent=2, default=str) + "\n")


def retention_table(reference: Reference, steps: list[dict]) -> str:
    """Markdown for the report: each model's scores with, in brackets, the share of the
    1B reference's margin over chance it keeps (capped at 1; "—" where the reference has no
    measurable skill), then the retention per step and cumulative (the minimum)."""
    head = "| model | " + " | ".join(EVAL_METRICS) + " | per step | cumulative |"
    rows = [head, "|" + "---|" * (len(EVAL_METRICS) + 3),
            f"| {reference.phase} (reference) | " + " | ".join(
                _fmt(reference.metrics.get(m)) for m in EVAL_METRICS) + " | | 1.000 |"]
    for s in steps:
        kept = s["cumulative"]["per_metric"]
        rows.append(f"| {s['phase']} | " + " | ".join(
            f"{_fmt(s['metrics'].get(m))} ({_fmt(kept.get(m))})" for m in EVAL_METRICS)
                    + f" | {_fmt(s['per_step']['value'])} vs {s['previous_phase']} | "
                      f"{_fmt(s['cumulative']['value'])} |")
    skipped = sorted({f"- {m}: {why}" for s in steps
                      for m, why in s["cumulative"]["skipped"].items()})
    undefined = [f"- {s['phase']} {label}: undefined (a retention gate on it fails)"
                 for s in steps
                 for key, label in (("per_step", f"vs {s['previous_phase']}"),
                                    ("cumulative", f"vs {reference.phase}"))
                 if not _finite(s[key]["value"])]
    notes = (["", "Not counted in the cumulative retention:"] + skipped) if skipped else []
    return "\n".join(rows + notes + ([""] + undefined if undefined else []))


def _fmt(x) -> str:
    return f"{x:.3f}" if _finite(x) else "—"


# ------------------------------------------------------------------------------------- sizes


def bytes_on_disk(path: Path) -> int:
    """A file's size, or the sum over every file under a folder."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder to measure")
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def weight_bytes(path: Path) -> int:
    """Bytes of the weight files only (*.safetensors, *.gguf, *.zst) under `path`."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*")
               if p.is_file() and p.suffix in (".safetensors", ".gguf", ".zst", ".bin"))


def size_row(path: Path, parameters: float, label: str | None = None) -> dict:
    """Bytes on disk, MB (10^6 bytes) and bits per parameter of one artifact.

    `bytes` counts everything under `path` (tokenizer and config included: what a user
    downloads); `bits_per_parameter` uses the weight files only, so it describes the
    weight format and does not drift with tokenizer size.
    """
    total = bytes_on_disk(path)
    weights = weight_bytes(path)
    return {"artifact": label or Path(path).name, "path": str(path), "bytes": total,
            "mb": total / MB, "weight_bytes": weights, "parameters": parameters,
            "bits_per_parameter": weights * 8 / parameters if parameters else float("nan")}


def count_parameters(model) -> int:
    """Parameters of a model, counting tied embeddings once."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total
