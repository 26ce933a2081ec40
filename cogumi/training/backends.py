"""The training backends `training.backend` can name, behind one small interface.

    load_for_training(model_cfg, training_cfg, root, device) -> LoadedModel
    wrap_lora(model, training_cfg, seed) -> peft model with trainable LoRA adapters

- peft-lora: the model in the profile's dtype, peft LoRA on top; CPU or GPU.
- qlora-bnb: the QLoRA recipe with peft + bitsandbytes: base weights stored 4-bit NF4 with
  double quantisation, matrix products in bf16, `prepare_model_for_kbit_training`, paged
  AdamW 8-bit.
- unsloth: unsloth's FastLanguageModel, 4-bit on load, its own get_peft_model and fused
  kernels, gradient checkpointing "unsloth" (activations offloaded to host memory).

The 4-bit backends must quantise while loading (an 8B model in bf16 is 16 GB before it is
ever quantised), which is why loading belongs to the backend and not to `cogumi.models`.
GPU-only packages are imported inside functions, so this module imports on any machine;
asking for a GPU backend where it cannot run fails with one line naming `training.backend`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from cogumi.models import LoadedModel, load_base_model, load_tokenizer, model_location
from cogumi.profile import ModelConfig, TrainingConfig


class BackendUnavailable(RuntimeError):
    """The profile's training backend cannot run here; the message is one line."""


@dataclass(frozen=True)
class Backend:
    name: str
    needs_cuda: bool
    package: str | None
    """The GPU package the backend imports, named in the error when it is missing."""
    install_hint: str
    optimizer: str | None
    """`TrainingArguments.optim`; None keeps the Trainer's default (as the CPU path always had)."""


BACKENDS: dict[str, Backend] = {
    "peft-lora": Backend("peft-lora", needs_cuda=False, package=None, install_hint="",
                         optimizer=None),
    # Paged 8-bit AdamW is the QLoRA paper's choice: its state lives in pages that move to host
    # memory under pressure, so a long-sequence spike does not kill a run near the card's limit;
    # for rank-64 adapters its state is under 1 GB either way, so the speed cost is negligible.
    "qlora-bnb": Backend("qlora-bnb", needs_cuda=True, package="bitsandbytes",
                         install_hint="pip install -e '.[gpu]'", optimizer="paged_adamw_8bit"),
    # unsloth's own notebooks train with (unpaged) 8-bit AdamW; we follow them.
    "unsloth": Backend("unsloth", needs_cuda=True, package="unsloth",
                       install_hint="pip install -e '.[gpu,unsloth]'", optimizer="adamw_8bit"),
}


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise BackendUnavailable(f"training.backend = {name!r} is not one of "
                                 f"{', '.join(map(repr, BACKENDS))}") from None


def check_available(name: str, device: str) -> Backend:
    """The backend, or BackendUnavailable with one line saying what to change."""
    backend = get_backend(name)
    if not backend.needs_cuda:
        return backend
    if device != "cuda":
        raise BackendUnavailable(
            f"training.backend = {name!r} needs a CUDA GPU but hardware.device = {device!r}; "
            f"use training.backend = \"peft-lora\" to train on the CPU")
    import torch
    if not torch.cuda.is_available():
        raise BackendUnavailable(
            f"training.backend = {name!r} needs a CUDA GPU and torch sees none here; "
            f"run on a CUDA machine or use training.backend = \"peft-lora\"")
    if importlib.util.find_spec(backend.package) is None:
        raise BackendUnavailable(
            f"training.backend = {name!r} needs the {backend.package} package: "
            f"{backend.install_hint}")
    return backend


# --- configuration objects (built without a GPU, so the tests can check them) ---------------

def bnb_4bit_config():
    """QLoRA storage: NF4 with double quantisation (the scales quantised too, ~0.4 bit/param
    saved), matrix products in bf16."""
    import torch
    from transformers import BitsAndBytesConfig
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def lora_config(cfg: TrainingConfig):
    from peft import LoraConfig
    return LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.target_modules), bias="none",
                      task_type="CAUSAL_LM")


def unsloth_lora_kwargs(cfg: TrainingConfig, seed: int) -> dict:
    """Arguments of unsloth's FastLanguageModel.get_peft_model for the profile's LoRA."""
    return {
        "r": cfg.lora_rank,
        "lora_alpha": cfg.lora_alpha,
        "lora_dropout": cfg.lora_dropout,
        "target_modules": list(cfg.target_modules),
        "bias": "none",
        # "unsloth" checkpointing offloads saved activations to host memory asynchronously:
        # less GPU memory than plain recomputation for a few percent of speed.
        "use_gradient_checkpointing": "unsloth" if cfg.gradient_checkpointing else False,
        "random_state": seed,
        "max_seq_length": cfg.max_seq_len,
    }


# --- loading and wrapping ------------------------------------------------------------------

def load_for_training(model_cfg: ModelConfig, training_cfg: TrainingConfig, root: Path,
                      device: str) -> LoadedModel:
    """The base model as the backend trains it (4-bit for qlora-bnb and unsloth).

    The tokenizer always comes from `load_tokenizer`, so the training data are encoded the
    same way whichever backend trains on them.
    """
    backend = check_available(training_cfg.backend, device)
    if backend.name == "peft-lora":
        return load_base_model(model_cfg, root, device)
    where, extra = model_location(model_cfg, root)
    if extra:
        raise BackendUnavailable(
            f"training.backend = {backend.name!r} loads safetensors checkpoints; model.source = "
            f"{model_cfg.source!r} gives a GGUF file, so train it with \"peft-lora\"")
    if backend.name == "unsloth":
        # unsloth patches transformers when it is imported: imported before anything else
        # loads transformers, all its patches apply.
        from unsloth import FastLanguageModel  # isort: skip
        import torch

        model, _ = FastLanguageModel.from_pretrained(
            model_name=where, max_seq_length=training_cfg.max_seq_len, dtype=torch.bfloat16,
            load_in_4bit=True, use_gradient_checkpointing=(
                "unsloth" if training_cfg.gradient_checkpointing else False),
            # Its tokenizer is discarded (see above), so its tokenizer repairs would be wasted.
            fix_tokenizer=False)
    else:
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(
            where, quantization_config=bnb_4bit_config(), dtype=torch.bfloat16,
            device_map={"": torch.cuda.current_device()})
    return LoadedModel(model, load_tokenizer(model_cfg, root), model_cfg.add_bos, where)


def wrap_lora(model, cfg: TrainingConfig, seed: int):
    """`model` (as load_for_training gave it) with LoRA adapters, ready to train."""
    backend = get_backend(cfg.backend)
    if backend.name == "unsloth":
        from unsloth import FastLanguageModel
        return FastLanguageModel.get_peft_model(model, **unsloth_lora_kwargs(cfg, seed))
    from peft import get_peft_model
    if backend.name == "qlora-bnb":
        from peft import prepare_model_for_kbit_training
        if not getattr(model, "is_loaded_in_4bit", False):
            raise BackendUnavailable(
                "training.backend = 'qlora-bnb' trains a 4-bit model; load it with "
                "cogumi.training.backends.load_for_training")
        # Freezes the base, upcasts norms and embeddings to fp32 for stable gradients, and
        # turns on checkpointing; non-reentrant checkpointing works with frozen inputs.
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
        return get_peft_model(model, lora_config(cfg))
    peft_model = get_peft_model(model, lora_config(cfg))
    if cfg.gradient_checkpointing:
        peft_model.gradient_checkpointing_enable()
        peft_model.enable_input_require_grads()
    return peft_model


def trainer_arguments(cfg: TrainingConfig, device: str) -> dict:
    """TrainingArguments the backend adds: its optimizer (none: the Trainer's default, as the
    CPU path always had), and bf16 autocast on GPUs that have it. The 4-bit backends need the
    autocast: prepare_model_for_kbit_training keeps norms, embeddings and the head in fp32, and
    without it attention and the 128K-wide head would run in fp32."""
    args = {}
    optim = get_backend(cfg.backend).optimizer
    if optim is not None:
        args["optim"] = optim
    if device == "cuda":
        import torch
        args["bf16"] = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return args
