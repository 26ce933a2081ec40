"""Which llama.cpp pre-tokenizer reproduces a Hugging Face BPE tokenizer, when the converter
cannot tell.

llama.cpp's converter names a BPE tokenizer's pre-tokenizer (`tokenizer.ggml.pre`) by
hashing the token ids of a fixed check string and looking the hash up in a table of known
models (`get_vocab_base_pre`). A tokenizer with its own vocabulary — the tiny fixture's, or
any project-trained BPE — has a hash nobody registered, so the converter stops, although its
pre-tokenization may be exactly one that llama.cpp implements.

Here we decide from the tokenizer's *declared* pre-tokenization instead: the Split regex,
the ByteLevel step and the BPE model's `ignore_merges`, compared exactly (string equality)
with the original tokenizer.json regexes that llama.cpp's `src/llama-vocab.cpp` quotes for
each pre-tokenizer type (llama.cpp 0c1e57098, the commit llama-cpp-python 0.3.36 vendors).
Anything else is refused with the file named: guessing would ship a GGUF that tokenizes
differently. Whatever is chosen is still checked afterwards, by tokenizing texts in both
llama.cpp and transformers (2C's `gguf.tokenizer_agreement`).

Standard library only: the converter's child process imports this before llama.cpp's gguf-py.
"""

from __future__ import annotations

import json
from pathlib import Path

#: HF tokenizer.json Split regex -> (llama.cpp `tokenizer.ggml.pre`, the BPE model's
#: `ignore_merges` that llama.cpp applies for that type). Quoted from llama-vocab.cpp's
#: "original regex from tokenizer.json" comments.
KNOWN_SPLIT_REGEXES: dict[str, tuple[str, bool]] = {
    # LLAMA_VOCAB_PRE_TYPE_LLAMA3 ("llama-bpe"; llama.cpp sets ignore_merges = true)
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        ("llama-bpe", True),
    # LLAMA_VOCAB_PRE_TYPE_QWEN2 ("qwen2"): Llama-3's regex with single digits, merges used
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        ("qwen2", False),
}


class UnknownPreTokenizer(ValueError):
    """No llama.cpp pre-tokenizer is known to reproduce this tokenizer; one line."""


def pre_tokenizer_for(tokenizer_json: Path) -> dict:
    """{"pre": llama.cpp name, "reason": why} for a byte-level BPE tokenizer.json, or raise."""
    path = Path(tokenizer_json)
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UnknownPreTokenizer(f"{path}: cannot read tokenizer.json ({exc})") from None
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise UnknownPreTokenizer(
            f"{path}: key 'model.type' is {model.get('type')!r}; only byte-level BPE "
            f"tokenizers are mapped to a llama.cpp pre-tokenizer here")
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    if len(steps) != 2 or steps[0].get("type") != "Split" or steps[1].get("type") != "ByteLevel":
        raise UnknownPreTokenizer(
            f"{path}: key 'pre_tokenizer' is not Sequence[Split(regex), ByteLevel]; "
            f"no llama.cpp pre-tokenizer is known to match it")
    split, byte_level = steps
    regex = (split.get("pattern") or {}).get("Regex")
    if split.get("behavior") != "Isolated" or split.get("invert") or regex is None:
        raise UnknownPreTokenizer(f"{path}: key 'pre_tokenizer.pretokenizers[0]': a Split "
                                  f"that is not an isolating regex")
    if byte_level.get("add_prefix_space") or byte_level.get("use_regex"):
        raise UnknownPreTokenizer(f"{path}: key 'pre_tokenizer.pretokenizers[1]': ByteLevel "
                                  f"with add_prefix_space or its own regex")
    if regex not in KNOWN_SPLIT_REGEXES:
        raise UnknownPreTokenizer(f"{path}: pre-tokenizer regex {regex!r} matches none that "
                                  f"llama.cpp implements ({', '.join(n for n, _ in KNOWN_SPLIT_REGEXES.values())})")
    name, ignore_merges = KNOWN_SPLIT_REGEXES[regex]
    if bool(model.get("ignore_merges", False)) != ignore_merges:
        raise UnknownPreTokenizer(
            f"{path}: key 'model.ignore_merges' is {model.get('ignore_merges')!r}, but "
            f"llama.cpp's {name!r} uses ignore_merges = {ignore_merges}")
    return {"pre": name,
            "reason": f"converter's hash table does not know this vocabulary; its Split regex, "
                      f"ByteLevel step and ignore_merges={ignore_merges} are exactly those of "
                      f"llama.cpp's {name!r} pre-tokenizer"}
