"""Threshold rules: a gate's threshold computed from what is known before its phase runs.

A gate file may declare, beside the seed's number, one rule (``rule = "name"`` and its
arguments); a profile with ``[gating] thresholds = "rules"`` gates on the rule's output.
Every rule is a pure function of the profile and of artifacts that exist before the phase
starts (an input phase's model), never of the phase's own results, so a threshold cannot
follow a measurement.

Rules:

* ``format_budget_mb``: the size a model takes when stored in the target format, from its
  parameters by kind (the input model's safetensors header: Linear weights, embeddings,
  the rest): ``(linear x linear_bits + embedding x embedding_bits + other x other_bits) / 8``
  bytes, plus its tokenizer files, in MB of 10^6 bytes. A bits value of ``"stored"`` keeps
  that kind at the bits it is stored in (a format that leaves it alone). This is the seed's
  size claim made checkable: its 600 MB for 8.03e9 parameters is 0.6 bits per parameter,
  which no 4-6-bit format reaches, so the rule gates on what the format itself promises and
  still fails a file that was not really quantized.
* ``tensor_budget_mb``: the same count for the tensor data alone (no tokenizer, no headers
  or config files), plus ``per_linear_bits`` for what the format stores once per quantized
  Linear (compressed-tensors' pack-quantized format: its ``weight_shape``, 2 x int64 = 128
  bits). It is gated against ``tensor_payload_bytes`` of the phase's own folder, which
  counts exactly that, so the rule and the metric have the same scope.
* ``system_budget_mb``: the seed's whole-system size (668 MB: a 520 MB base and 3 x 40-50 MB
  modifiers) scaled to this model: ``format_budget_mb`` of the base times
  ``seed_system_mb / seed_base_mb``, the seed's own ratio of system to base.
* ``lora_budget_mb``: a LoRA adapter's size scaled from the seed's figure for its 8B base by
  the LoRA parameters per unit of rank: a rank-r adapter on a Linear of shape (out, in) adds
  r x (in + out) parameters, so over every Linear weight of the input model (not the
  embeddings or the output head) the adapter holds r x sum(in + out). The threshold is
  ``seed_mb x sum(in + out) of the input model / seed_parameters_per_rank`` (the same sum
  for the seed's base, stated in the gate file): the seed's megabytes per LoRA parameter at
  the seed's rank, at this model's shapes. The rank is not an argument, so a profile cannot
  loosen the gate by choosing a larger one: it only scales with the base.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

MB = 1_000_000
_DTYPE_BITS = {"F64": 64, "F32": 32, "BF16": 16, "F16": 16, "I64": 64, "I32": 32, "I16": 16,
               "I8": 8, "U8": 8, "BOOL": 8, "F8_E4M3": 8, "F8_E5M2": 8}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


class RuleError(ValueError):
    """A rule that cannot be computed: one line naming the rule and what is missing."""


def _tensor_entries(model_dir: Path):
    """(name, header entry) for every tensor in a folder's *.safetensors, read from the
    headers only (dtype, shape, data_offsets)."""
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, info in header.items():
            if name != "__metadata__":
                yield name, info


def safetensors_tensors(model_dir: Path) -> dict[str, tuple[str, list[int]]]:
    """name -> (dtype, shape) for every tensor in a folder's *.safetensors (header only)."""
    out = {name: (info["dtype"], info["shape"]) for name, info in _tensor_entries(model_dir)}
    if not out and not any(Path(model_dir).glob("*.safetensors")):
        raise RuleError(f"{model_dir}: no *.safetensors to count parameters from")
    return out


def tensor_payload_bytes(model_dir: Path) -> int:
    """Bytes of tensor data in a folder's *.safetensors (their headers excluded)."""
    return sum(info["data_offsets"][1] - info["data_offsets"][0]
               for _, info in _tensor_entries(model_dir))


def parameter_split(model_dir: Path) -> dict[str, dict[str, float]]:
    """Parameters and stored bits by kind: embedding (token embeddings, an untied LM head),
    linear (every other 2-D weight), other (norms, biases)."""
    split = {k: {"parameters": 0.0, "stored_bits": 0.0} for k in ("linear", "embedding", "other")}
    for name, (dtype, shape) in safetensors_tensors(model_dir).items():
        count = 1
        for d in shape:
            count *= d
        kind = ("embedding" if ("embed_tokens" in name or "lm_head" in name)
                else "linear" if len(shape) == 2 else "other")
        split[kind]["parameters"] += count
        split[kind]["stored_bits"] += count * _DTYPE_BITS.get(dtype, 32)
    return split


def _input_model(rule: str, runs_dir: Path, model_from: str) -> Path:
    model_dir = Path(runs_dir) / model_from / "model"
    if not model_dir.is_dir():
        raise RuleError(f"{rule}: {model_dir} is missing (the rule counts phase "
                        f"{model_from}'s parameters)")
    return model_dir


def _tensor_bits(model_dir: Path, linear_bits: float | str, embedding_bits: float | str,
                 other_bits: float | str) -> tuple[float, list[str]]:
    split = parameter_split(model_dir)
    bits = 0.0
    parts = []
    for kind, b in (("linear", linear_bits), ("embedding", embedding_bits),
                    ("other", other_bits)):
        p = split[kind]["parameters"]
        kind_bits = split[kind]["stored_bits"] if b == "stored" else p * float(b)
        bits += kind_bits
        parts.append(f"{p:,.0f} {kind} x {b if b == 'stored' else f'{float(b):g}'} bits")
    return bits, parts


def format_budget_mb(runs_dir: Path, *, model_from: str, linear_bits: float | str,
                     embedding_bits: float | str, other_bits: float | str) -> tuple[float, str]:
    model_dir = _input_model("format_budget_mb", runs_dir, model_from)
    bits, parts = _tensor_bits(model_dir, linear_bits, embedding_bits, other_bits)
    tokenizer = sum((model_dir / f).stat().st_size for f in TOKENIZER_FILES
                    if (model_dir / f).exists())
    mb = (bits / 8 + tokenizer) / MB
    return mb, (f"{'; '.join(parts)} (phase {model_from}'s model) + tokenizer {tokenizer:,} "
                f"bytes = {mb:.4g} MB")


def tensor_budget_mb(runs_dir: Path, *, model_from: str, linear_bits: float | str,
                     embedding_bits: float | str, other_bits: float | str,
                     per_linear_bits: float) -> tuple[float, str]:
    model_dir = _input_model("tensor_budget_mb", runs_dir, model_from)
    bits, parts = _tensor_bits(model_dir, linear_bits, embedding_bits, other_bits)
    linears = sum(1 for name, (_, shape) in safetensors_tensors(model_dir).items()
                  if len(shape) == 2 and "embed_tokens" not in name and "lm_head" not in name)
    bits += linears * float(per_linear_bits)
    mb = bits / 8 / MB
    return mb, (f"{'; '.join(parts)}; {linears} Linear x {float(per_linear_bits):g} bits "
                f"(phase {model_from}'s model), tensor data only = {mb:.4g} MB")


def system_budget_mb(runs_dir: Path, *, model_from: str, linear_bits: float | str,
                     embedding_bits: float | str, other_bits: float | str,
                     seed_base_mb: float, seed_system_mb: float) -> tuple[float, str]:
    """The seed's system size scaled to this model: its base's format budget
    (format_budget_mb) times the seed's system-to-base ratio (668 MB over its 520 MB base:
    the modifiers, router and the rest as a share of the base they ride on)."""
    base_mb, how = format_budget_mb(runs_dir, model_from=model_from, linear_bits=linear_bits,
                                    embedding_bits=embedding_bits, other_bits=other_bits)
    ratio = float(seed_system_mb) / float(seed_base_mb)
    mb = base_mb * ratio
    return mb, (f"base budget {how}; x the seed's {float(seed_system_mb):g} / "
                f"{float(seed_base_mb):g} MB = {mb:.4g} MB")


def lora_parameters_per_rank(model_dir: Path) -> tuple[int, int]:
    """(sum of in + out over the model's Linear weights, how many Linear weights): the LoRA
    parameters one unit of rank adds when every Linear is adapted (embeddings, the output
    head and 1-D tensors excluded, as parameter_split counts them)."""
    total = linears = 0
    for name, (_, shape) in safetensors_tensors(model_dir).items():
        if len(shape) == 2 and "embed_tokens" not in name and "lm_head" not in name:
            total += shape[0] + shape[1]
            linears += 1
    return total, linears


def lora_budget_mb(runs_dir: Path, *, model_from: str, seed_mb: float,
                   seed_parameters_per_rank: float) -> tuple[float, str]:
    model_dir = _input_model("lora_budget_mb", runs_dir, model_from)
    per_rank, linears = lora_parameters_per_rank(model_dir)
    if not per_rank:
        raise RuleError(f"lora_budget_mb: {model_dir} has no Linear weights")
    mb = float(seed_mb) * per_rank / float(seed_parameters_per_rank)
    return mb, (f"seed {float(seed_mb):g} MB x {per_rank:,} LoRA parameters per rank over "
                f"{linears} Linear weights (phase {model_from}'s model) / "
                f"{float(seed_parameters_per_rank):,.0f} for the seed's base = {mb:.4g} MB")


RULES: dict[str, Callable[..., tuple[float, str]]] = {"format_budget_mb": format_budget_mb,
                                                      "tensor_budget_mb": tensor_budget_mb,
                                                      "system_budget_mb": system_budget_mb,
                                                      "lora_budget_mb": lora_budget_mb}
RULE_ARGS = {"format_budget_mb": {"model_from", "linear_bits", "embedding_bits", "other_bits"},
             "system_budget_mb": {"model_from", "linear_bits", "embedding_bits", "other_bits",
                                  "seed_base_mb", "seed_system_mb"},
             "tensor_budget_mb": {"model_from", "linear_bits", "embedding_bits", "other_bits",
                                  "per_linear_bits"},
             "lora_budget_mb": {"model_from", "seed_mb", "seed_parameters_per_rank"}}


def compute(name: str, args: dict, runs_dir: Path) -> tuple[float, str]:
    """(threshold, how it was computed) for a declared rule."""
    if name not in RULES:
        raise RuleError(f"unknown threshold rule {name!r} (known: {', '.join(RULES)})")
    return RULES[name](runs_dir, **args)
