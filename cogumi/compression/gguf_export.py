"""GGUF export and K-quants with llama.cpp's own tools, and checks that the files are right.

- `convert_to_gguf`: a Hugging Face model folder -> F32/F16/BF16 GGUF with llama.cpp's
  converter (vendored under cogumi/third_party/llama_cpp, see its VENDORED.md), in a child
  process (`_convert_child.py` says why).
- `quantize`: that GGUF -> Q4_K_M / Q5_K_M / Q6_K / Q8_0 with llama.cpp's quantizer, through
  llama-cpp-python (`llama_model_quantize`), collecting its log.
- `tensor_types`: every tensor's type read back from the file (gguf's GGUFReader). K-quants
  need rows that are a multiple of 256 wide; llama.cpp otherwise quantizes the tensor to
  another type and only says so in its log. A file is never reported as Q5_K_M without the
  share of its weights that really is in Q5_K_M's types.
- `tokenizer_agreement`, `greedy_agreement`: the GGUF, run by llama.cpp, against the HF
  tokenizer and model it came from.
"""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

CHILD = Path(__file__).with_name("_convert_child.py")
QK_K = 256
"""Super-block width of every K-quant: a row must be a multiple of it."""


@dataclass(frozen=True)
class QuantType:
    name: str
    llama_ftype: str
    """llama_cpp constant of the file type."""
    intended: frozenset[str]
    """Tensor types llama.cpp's recipe for this file type uses on purpose (the _M mixes put
    some attn_v / ffn_down / output tensors one K-quant higher)."""


QUANT_TYPES: dict[str, QuantType] = {
    "Q4_K_M": QuantType("Q4_K_M", "LLAMA_FTYPE_MOSTLY_Q4_K_M", frozenset({"Q4_K", "Q5_K", "Q6_K"})),
    "Q5_K_M": QuantType("Q5_K_M", "LLAMA_FTYPE_MOSTLY_Q5_K_M", frozenset({"Q5_K", "Q6_K"})),
    "Q6_K": QuantType("Q6_K", "LLAMA_FTYPE_MOSTLY_Q6_K", frozenset({"Q6_K"})),
    "Q8_0": QuantType("Q8_0", "LLAMA_FTYPE_MOSTLY_Q8_0", frozenset({"Q8_0"})),
}
BASE_TYPES = ("F32", "F16", "BF16")
"""Unquantized GGUF types the converter writes (`--outtype f32|f16|bf16`)."""


class GGUFExportError(RuntimeError):
    """Conversion or quantization failed; one paragraph naming the file and the cause."""


# ------------------------------------------------------------------------------- convert


def convert_to_gguf(model_dir: Path, out: Path, base_type: str, log_path: Path,
                    vocab_gguf: Path | None = None, add_bos: bool | None = None) -> dict:
    """HF folder -> GGUF of `base_type` (F32/F16/BF16). Returns the tokenizer decision.

    `vocab_gguf`: copy the tokenizer from that GGUF instead (see _convert_child.py), with
    `add_bos` as the BOS policy."""
    if base_type not in BASE_TYPES:
        raise GGUFExportError(f"base type {base_type!r} is not one of {', '.join(BASE_TYPES)}")
    out, log_path = Path(out), Path(log_path)
    decision = out.with_suffix(".pretokenizer.json")
    cmd = [sys.executable, str(CHILD), str(model_dir), str(out), base_type.lower(), str(decision)]
    if vocab_gguf is not None:
        cmd += [str(vocab_gguf), "true" if add_bos else "false"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log_path.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not out.exists():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-6:])
        raise GGUFExportError(f"llama.cpp's converter could not export {model_dir} "
                              f"(exit {proc.returncode}; full log {log_path}):\n{tail}")
    found = json.loads(decision.read_text())
    decision.unlink()
    return found


# ------------------------------------------------------------------------------ quantize


class _LogCapture:
    """Collect llama.cpp's log lines while quantizing (its fallback warnings live there)."""

    def __init__(self) -> None:
        self.text: list[str] = []

    def __enter__(self) -> _LogCapture:
        import llama_cpp
        import llama_cpp._logger as default_logger

        @llama_cpp.llama_log_callback
        def collect(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            self.text.append(text.decode("utf-8", "replace"))

        self._callback = collect  # keep a reference: ctypes does not
        self._default = default_logger.llama_log_callback
        llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
        return self

    def __exit__(self, *exc) -> None:
        import llama_cpp
        llama_cpp.llama_log_set(self._default, ctypes.c_void_p(0))

    @property
    def log(self) -> str:
        return "".join(self.text)


def quantize(src: Path, dst: Path, qtype: str, threads: int, log_path: Path) -> None:
    """llama.cpp's quantizer (llama_model_quantize) from an F32/F16/BF16 GGUF."""
    import llama_cpp

    if qtype not in QUANT_TYPES:
        raise GGUFExportError(f"quant type {qtype!r} is not one of {', '.join(QUANT_TYPES)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[qtype].llama_ftype)
    params.nthread = threads
    with _LogCapture() as cap:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(),
                                            ctypes.byref(params))
    Path(log_path).write_text(cap.log)
    if rc != 0 or not Path(dst).exists():
        tail = "\n".join(cap.log.strip().splitlines()[-6:])
        raise GGUFExportError(f"llama.cpp's quantizer failed on {src} -> {qtype} (return "
                              f"{rc}; log {log_path}):\n{tail}")


# --------------------------------------------------------------------------- read back


def tensor_types(path: Path, qtype: str | None) -> dict:
    """Per-type tensor counts and parameter shares of a GGUF, and every fallback tensor.

    A *quantizable* tensor is one of ≥ 2 dimensions (llama.cpp keeps 1-D norms and biases in
    F32 by design). For a K-quant file type, a quantizable tensor whose type is not one its
    recipe intends is a fallback; each one is listed with its row width, so the reason
    (width % 256) is visible. `intended_share` is the parameter share of quantizable weights
    that is in an intended type: 1.0 means the whole file is what its name says.
    """
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    counts: Counter[str] = Counter()
    params: Counter[str] = Counter()
    fallbacks, rows = [], []
    intended = QUANT_TYPES[qtype].intended if qtype else None
    quantizable = in_intended = 0
    for t in reader.tensors:
        kind = t.tensor_type.name
        shape = [int(x) for x in t.shape]  # GGUF order: shape[0] is the row width
        n = int(t.n_elements)
        counts[kind] += 1
        params[kind] += n
        is_matrix = sum(1 for d in shape if d > 1) >= 2
        rows.append({"name": t.name, "shape": shape, "type": kind})
        if not is_matrix:
            continue
        quantizable += n
        if intended is None or kind in intended:
            in_intended += n
        else:
            fallbacks.append({"name": t.name, "shape": shape, "type": kind,
                              "row_width": shape[0],
                              "row_width_multiple_of_256": shape[0] % QK_K == 0})
    total = sum(params.values())
    return {
        "file": str(path), "file_type": qtype or "unquantized",
        "tensors": len(rows),
        "count_by_type": dict(sorted(counts.items())),
        "parameter_share_by_type": {k: v / total for k, v in sorted(params.items())},
        "quantizable_parameters": quantizable,
        "intended_types": sorted(intended) if intended else None,
        "intended_share": in_intended / quantizable if quantizable else float("nan"),
        "fallback_tensors": len(fallbacks),
        "fallbacks": fallbacks,
        "per_tensor": rows,
    }


def fallback_warnings(quantize_log: str) -> list[str]:
    """Tensors llama.cpp's log says it demoted (`tensor_type_fallback`).

    Not the whole story, which is why the file is read back: for a tied or output
    embedding whose width is not a multiple of 256, llama.cpp's type choice picks Q8_0
    directly, with no warning (seen on a hidden-320 Llama and on Gemma 3's 640).
    """
    return [line.split()[1] for line in quantize_log.splitlines()
            if line.startswith("warning:") and "falling back to" in line]


def describe_types(report: dict) -> str:
    """One line for the report: what a file called Q5_K_M really holds."""
    shares = ", ".join(f"{k} {v:.1%}" for k, v in report["parameter_share_by_type"].items())
    line = (f"{Path(report['file']).name}: {report['intended_share']:.1%} of quantizable "
            f"weights in {report['file_type']}'s intended types; by parameters {shares}")
    if report["fallback_tensors"]:
        widths = sorted({f["row_width"] for f in report["fallbacks"]})
        kinds = Counter(f["type"] for f in report["fallbacks"])
        line += (f"; {report['fallback_tensors']} tensors fell back "
                 f"({', '.join(f'{n} to {k}' for k, n in sorted(kinds.items()))}) because their "
                 f"row width {widths} is not a multiple of {QK_K}")
    return line


# ---------------------------------------------------------------------------- verify


def tokenizer_agreement(gguf_path: Path, hf_tokenizer, texts: list[str]) -> dict:
    """Share of texts llama.cpp tokenizes to exactly the HF tokenizer's ids.

    Both sides without BOS and with special tokens parsed (chat-formatted texts contain
    them); the first disagreeing texts are kept for the report.
    """
    from llama_cpp import Llama

    llama = Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    same, examples = 0, []
    for text in texts:
        ours = list(llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))
        theirs = list(hf_tokenizer.encode(text, add_special_tokens=False))
        if ours == theirs:
            same += 1
        elif len(examples) < 3:
            at = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b),
                      min(len(ours), len(theirs)))
            examples.append({"text": text[:200], "first_difference_at_token": at,
                             "llama_cpp": ours[at:at + 8], "hf": theirs[at:at + 8]})
    del llama
    return {"texts": len(texts), "identical": same,
            "agreement": same / len(texts) if texts else float("nan"),
            "disagreements": examples}


def tokenizer_agreement_gguf(gguf_path: Path, reference_gguf: Path, texts: list[str]) -> dict:
    """Share of texts two GGUF files tokenize identically in llama.cpp (for a tokenizer
    copied from a source GGUF: the copy must behave as the original)."""
    from llama_cpp import Llama

    ours = Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    ref = Llama(model_path=str(reference_gguf), vocab_only=True, verbose=False)
    same = sum(ours.tokenize(t.encode("utf-8"), add_bos=False, special=True)
               == ref.tokenize(t.encode("utf-8"), add_bos=False, special=True) for t in texts)
    del ours, ref
    return {"texts": len(texts), "identical": same, "reference": str(reference_gguf),
            "agreement": same / len(texts) if texts else float("nan")}


def divergence_point(model, tokenizer, prompt_ids: list[int], hf_text: str, gguf_text: str,
                     eos_id: int) -> dict | None:
    """Where two greedy continuations part, and how close the HF model was to a tie there.

    Returns the HF model's probabilities of its own next token and of the GGUF's at the first
    differing position (the GGUF's is EOS if it stopped). A small gap means the quantized
    file took the runner-up of a near-tie: rounding, not a broken export.
    """
    import torch

    a = tokenizer.encode(hf_text, add_special_tokens=False)
    b = tokenizer.encode(gguf_text, add_special_tokens=False)
    k = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    if k >= len(a) and k >= len(b):
        return None  # the same tokens: nothing parted
    with torch.inference_mode():
        logits = model(torch.tensor([prompt_ids + a[:k]])).logits[0, -1].float()
    p = torch.softmax(logits, dim=-1)
    # A continuation that ended there ended with EOS (both had the same token budget).
    own = a[k] if k < len(a) else eos_id
    theirs = b[k] if k < len(b) else eos_id
    return {"position": k, "p_hf_token": float(p[own]), "p_gguf_token": float(p[theirs]),
            "gap": float(p[own] - p[theirs]),
            "gguf_token_rank": int((p > p[theirs]).sum())}


NEAR_TIE = 0.05
"""Where the HF model's own next token leads the GGUF's pick by less than this probability,
a quantized file may take either: that divergence is rounding at a near-tie."""


def beyond_near_ties(identical: int, prompts: int, parted: list[dict]) -> float:
    """Share of prompts whose continuations are identical or part only at a near-tie.

    A quantized file perturbs every logit a little; greedy decoding turns a perturbed
    near-tie into a different continuation. A broken file (wrong tokenizer, wrong weights,
    wrong rope) also departs where the HF model is sure, and that is what this counts."""
    ties = sum(1 for d in parted if d["gap"] < NEAR_TIE)
    return (identical + ties) / prompts if prompts else float("nan")


def greedy_agreement(gguf_outputs: list[str], hf_outputs: list[str], hf_tokenizer) -> dict:
    """Greedy continuations of the same prompts by llama.cpp and by transformers.

    `agreement`: share of prompts whose whole greedy continuation (the first N tokens, N =
    the budget both were given) is identical. `prefix_share`: mean share of the HF
    continuation's tokens that the GGUF reproduces before the first difference — how far
    the two stay together when they do part.
    """
    if len(gguf_outputs) != len(hf_outputs):
        raise ValueError("greedy_agreement needs one GGUF output per HF output")
    same, prefixes, examples = 0, [], []
    for ours, theirs in zip(gguf_outputs, hf_outputs, strict=True):
        if ours == theirs:
            same += 1
            prefixes.append(1.0)
            continue
        a = hf_tokenizer.encode(ours, add_special_tokens=False)
        b = hf_tokenizer.encode(theirs, add_special_tokens=False)
        common = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                      min(len(a), len(b)))
        prefixes.append(common / max(len(b), 1))
        if len(examples) < 3:
            examples.append({"llama_cpp": ours[:160], "hf": theirs[:160]})
    n = len(hf_outputs)
    return {"prompts": n, "identical": same,
            "agreement": same / n if n else float("nan"),
            "prefix_share": sum(prefixes) / n if n else float("nan"),
            "disagreements": examples}
