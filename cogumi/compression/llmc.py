"""Glue to llm-compressor (`llmcompressor.oneshot`): calibration data, a CPU workaround,
sparsity masks, and the width check W4A16 needs.

llm-compressor does the real work (SparseGPT, AWQ, GPTQ, compressed-tensors); this module
only prepares its inputs and measures its outputs.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from cogumi.runner import PhaseInputError
from cogumi.training.sft import messages_for, split_heldout

W4A16_GROUP_SIZE = 128
"""compressed-tensors' W4A16 preset: int4 weights, symmetric, one scale per 128 inputs."""


# ------------------------------------------------------------------------ calibration data


@dataclass
class CalibrationData:
    dataset: object
    """A `datasets.Dataset` with input_ids and attention_mask, already tokenized."""
    accounting: dict = field(default_factory=dict)
    """Every curated record: used, or why not (held out, empty, not sampled)."""


def calibration_data(records: list[dict], tokenizer, add_bos: bool, n: int, max_seq_len: int,
                     heldout_fraction: float, seed: int) -> CalibrationData:
    """Curated records as whole conversations (chat template applied), for oneshot.

    Only the training side of the deterministic held-out split is used, so phase 2E's
    held-out loss is measured on records no compression step has seen. Sequences longer
    than `max_seq_len` tokens are truncated (counted), not dropped: calibration needs
    activations, not whole answers.
    """
    from datasets import Dataset

    train, heldout = split_heldout(records, heldout_fraction)
    usable = [r for r in train if r.get("response", "").strip()]
    pool = list(usable)
    random.Random(seed).shuffle(pool)
    chosen = pool[:n]
    bos = tokenizer.bos_token_id
    ids_list, truncated = [], 0
    for r in chosen:
        text = tokenizer.apply_chat_template(
            messages_for(r) + [{"role": "assistant", "content": r["response"]}], tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if add_bos and bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids
        if len(ids) > max_seq_len:
            ids, truncated = ids[:max_seq_len], truncated + 1
        ids_list.append(ids)
    if not ids_list:
        raise PhaseInputError(f"no curated training record with a response to calibrate on "
                              f"({len(records)} records, {len(heldout)} held out)")
    accounting = {"records.in": len(records), "heldout (not used)": len(heldout),
                  "empty response (not used)": len(train) - len(usable),
                  "not sampled (beyond the calibration count)": len(usable) - len(chosen),
                  "used": len(chosen), "truncated to max_seq_len": truncated,
                  "max_seq_len": max_seq_len,
                  "tokens": sum(len(x) for x in ids_list)}
    assert (accounting["heldout (not used)"] + accounting["empty response (not used)"]
            + accounting["not sampled (beyond the calibration count)"] + accounting["used"]
            == len(records))
    dataset = Dataset.from_dict({"input_ids": ids_list,
                                 "attention_mask": [[1] * len(x) for x in ids_list]})
    return CalibrationData(dataset, accounting)


# ------------------------------------------------------------------------------ oneshot


@contextmanager
def cpu_safe_pinning() -> Iterator[None]:
    """Make llm-compressor's AWQ run on a machine without an accelerator.

    AWQ's smoothing step pins its cached activations (`IntermediatesCache.pin_memory`) so
    they copy to the GPU faster; on a CPU-only torch, `Tensor.pin_memory()` raises
    "Cannot access accelerator device when none is available" (llmcompressor 0.14.0.1,
    modifiers/transform/awq/base.py `_apply_smoothing`). Pinning is only a transfer
    optimisation — the values are unchanged — so without an accelerator we skip it. With an
    accelerator nothing is patched.
    """
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if torch.accelerator.is_available():
        yield
        return
    original = IntermediatesCache.pin_memory
    IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None
    try:
        yield
    finally:
        IntermediatesCache.pin_memory = original


def run_oneshot(model, tokenizer, data: CalibrationData, recipe, max_seq_len: int, scratch):
    """`llmcompressor.oneshot` over our pre-tokenized calibration set, one sequence a batch
    (no padding enters the Hessians / activation statistics).

    oneshot re-reads the model's config from `model.config.name_or_path` (to refuse models
    quantised in another format); a model loaded from a GGUF file or built in memory has no
    config.json there, so the config is written to `scratch` and pointed at.
    """
    from pathlib import Path

    from llmcompressor import oneshot

    where = Path(str(getattr(model.config, "name_or_path", "") or ""))
    if not (where / "config.json").is_file():
        config_dir = Path(scratch) / "oneshot-config"
        model.config.save_pretrained(config_dir)
        model.config.name_or_path = str(config_dir)
    with cpu_safe_pinning():
        return oneshot(model=model, tokenizer=tokenizer, dataset=data.dataset, recipe=recipe,
                       num_calibration_samples=len(data.dataset), max_seq_length=max_seq_len,
                       batch_size=1, shuffle_calibration_samples=False)


# ------------------------------------------------------------------------- Linear weights


def _ignored(name: str, ignore: list[str]) -> bool:
    """llm-compressor's ignore semantics: 're:<regex>' matches the module name, otherwise
    the exact name or the last path component (e.g. 'lm_head')."""
    for pat in ignore:
        if pat.startswith("re:"):
            if re.match(pat[3:], name):
                return True
        elif name == pat or name.split(".")[-1] == pat:
            return True
    return False


def target_linears(model, ignore: list[str]) -> dict[str, object]:
    """name -> nn.Linear for every Linear llm-compressor targets (["Linear"] minus ignore)."""
    import torch
    return {n: m for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and not _ignored(n, ignore)}


def sparsity_report(model, ignore: list[str]) -> dict:
    """Measured zeros: per targeted Linear, over all targeted Linears, over all parameters."""
    zeros = total = 0
    per_layer = {}
    for name, mod in target_linears(model, ignore).items():
        w = mod.weight.detach()
        z = int((w == 0).sum())
        per_layer[name] = z / w.numel()
        zeros += z
        total += w.numel()
    all_zeros = all_total = 0
    seen = set()
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        all_zeros += int((p.detach() == 0).sum())
        all_total += p.numel()
    return {"linear": zeros / total if total else float("nan"),
            "linear_parameters": total,
            "all_parameters": all_zeros / all_total if all_total else float("nan"),
            "parameters": all_total,
            "per_layer": per_layer,
            "min_layer": min(per_layer.values(), default=float("nan")),
            "definition": "share of exactly-zero weights; 'linear' over the targeted Linear "
                          "layers (decoder projections, lm_head and embeddings excluded), "
                          "'all_parameters' over every parameter (tied weights once)"}


def zero_masks(model, ignore: list[str]) -> dict[str, object]:
    """name -> bool tensor, True where the targeted Linear's weight is exactly zero."""
    return {n: (m.weight.detach() == 0) for n, m in target_linears(model, ignore).items()}


def apply_masks(model, masks: dict[str, object]) -> int:
    """Zero the weights at each mask's True positions; returns how many were non-zero."""
    import torch
    modules = dict(model.named_modules())
    changed = 0
    with torch.no_grad():
        for name, mask in masks.items():
            w = modules[name].weight
            changed += int((w[mask] != 0).sum())
            w[mask] = 0
    return changed


class IndivisibleWidth(PhaseInputError):
    """A Linear the quantizer cannot group; the message names the tensor and its shape."""


def check_group_widths(model, ignore: list[str], group_size: int = W4A16_GROUP_SIZE
                       ) -> list[tuple[str, tuple[int, ...]]]:
    """Targeted Linears whose input width is not a multiple of `group_size`.

    W4A16 stores one scale per `group_size` consecutive inputs of each output row; a width
    that does not divide leaves a partial group the packed format has no place for.
    """
    return [(f"{name}.weight", tuple(mod.weight.shape))
            for name, mod in target_linears(model, ignore).items()
            if mod.in_features % group_size != 0]
