"""GGUF export and K-quants with llama.cpp's own tools, and checks that the files are right.

- `convert_to_gguf`: a Hugging Face model folder -> F32/F16/BF16 GGUF with llama.cpp's
  converter (fetched at first use from the pinned llama-cpp-python sdist into the user's
  cache: `converter.py`), in a child process (`_convert_child.py` says why).
- `quantize`: that GGUF -> Q4_K_M / Q5_K_M / Q6_K / Q8_0 with llama.cpp's quantizer, through
  llama-cpp-python (`llama_model_quantize`), collecting its log.
- `tensor_types`: every tensor's type read back from the file (gguf's GGUFReader). K-quants
  need rows that are a multiple of 256 wide; llama.cpp otherwise quantizes the tensor to
  another type and only says so in its log. A file is never reported as Q5_K_M without the
  share of its weights that really is in Q5_K_M's types.
- `tokenizer_agreement`: the GGUF's tokenizer in llama.cpp against the HF tokenizer.
- `teacher_forced_agreement`: the same token ids fed to the HF model and to the GGUF in
  llama.cpp; at every position, whether the two argmaxes agree and KL(HF || GGUF).
"""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from cogumi.compression.converter import ensure_converter

CHILD = Path(__file__).with_name("_convert_child.py")
LOGITS_CHILD = Path(__file__).with_name("_logits_child.py")
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
    folder = ensure_converter()  # ConverterUnavailable (one line, with the fix) if it cannot
    cmd = [sys.executable, str(CHILD), str(folder), str(model_dir), str(out), base_type.lower(),
           str(decision)]
    if vocab_gguf is not None:
        cmd += [str(vocab_gguf), "true" if add_bos else "false"]
    _run_converter(cmd, out, log_path, f"llama.cpp's converter could not export {model_dir}")
    found = json.loads(decision.read_text())
    decision.unlink()
    return found


def convert_lora_to_gguf(adapter_dir: Path, base_dir: Path, out: Path, outtype: str,
                         log_path: Path) -> Path:
    """A PEFT LoRA adapter folder -> a GGUF LoRA adapter with llama.cpp's own
    convert_lora_to_gguf.py (from the same cache as the HF converter; phase 3's export).
    `base_dir` is the base model's folder (its config is all the converter reads);
    `outtype` is f32, f16, bf16 or q8_0. It imports the cached gguf-py beside it."""
    script = ensure_converter() / "convert_lora_to_gguf.py"
    out, log_path = Path(out), Path(log_path)
    cmd = [sys.executable, str(script), str(adapter_dir), "--base", str(base_dir),
           "--outfile", str(out), "--outtype", outtype]
    _run_converter(cmd, out, log_path,
                   f"llama.cpp's LoRA converter could not export {adapter_dir}")
    return out


def _run_converter(cmd: list[str], out: Path, log_path: Path, failure: str) -> None:
    """Run one of llama.cpp's converter scripts, keeping its whole log; a failure (or no
    output file) is one error with the log's last lines."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log_path.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not out.exists():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-6:])
        raise GGUFExportError(f"{failure} (exit {proc.returncode}; full log {log_path}):\n"
                              f"{tail}")


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


# ------------------------------------------------------------- teacher-forced agreement


def next_token_agreement(hf_logits, gguf_logits) -> dict:
    """Per position, the two next-token distributions of the same token ids compared.

    `hf_logits`, `gguf_logits`: (positions, vocabulary) arrays of raw logits. Returns
    `same_top1` (both argmaxes equal) and `kl`: KL(HF || GGUF) = sum_v p_HF(v) (log p_HF(v) -
    log p_GGUF(v)) in nats, softmax over the full vocabulary, in float64 (the direction of
    llama.cpp's perplexity tool: the unquantized model is the reference distribution).
    """
    import numpy as np

    p = np.asarray(hf_logits, dtype=np.float64)
    q = np.asarray(gguf_logits, dtype=np.float64)
    if p.ndim != 2 or p.shape != q.shape:
        raise ValueError(f"next_token_agreement needs two (positions, vocabulary) arrays of one "
                         f"shape; got {p.shape} (HF) and {q.shape} (GGUF)")
    lp = _log_softmax(p)
    lq = _log_softmax(q)
    kl = (np.exp(lp) * (lp - lq)).sum(axis=1)
    return {"same_top1": p.argmax(axis=1) == q.argmax(axis=1), "kl": kl,
            "hf_top1": p.argmax(axis=1), "gguf_top1": q.argmax(axis=1),
            "hf_p_top1": np.exp(lp.max(axis=1))}


def _log_softmax(x):
    import numpy as np

    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def summarize_agreement(per_sequence: list[dict]) -> dict:
    """Pooled over every position of every sequence: top-1 agreement (share of positions
    whose argmaxes agree), mean / median / max KL(HF || GGUF) in nats."""
    import numpy as np

    same = np.concatenate([r["same_top1"] for r in per_sequence]) if per_sequence else []
    kl = np.concatenate([r["kl"] for r in per_sequence]) if per_sequence else np.array([])
    n = len(kl)
    return {"sequences": len(per_sequence), "positions": n,
            "top1_agreement": float(np.mean(same)) if n else float("nan"),
            "top1_disagreements": int(n - np.sum(same)) if n else 0,
            "mean_kl": float(kl.mean()) if n else float("nan"),
            "median_kl": float(np.median(kl)) if n else float("nan"),
            "max_kl": float(kl.max()) if n else float("nan")}


class LlamaCppCrashed(GGUFExportError):
    """The llama.cpp child process died (a SIGSEGV is a negative exit code) or sent no data."""


class LlamaCppLogits:
    """A GGUF's logits at every position of a token sequence, computed in a child process
    (`_logits_child.py` says why). `n_batch`: tokens per decode call; `kv_f32`: an F32 KV
    cache instead of llama.cpp's F16 one."""

    def __init__(self, path: Path, *, n_ctx: int, threads: int, n_batch: int, kv_f32: bool,
                 log_path: Path) -> None:
        self.path, self.log_path, self.n_ctx = Path(path), Path(log_path), n_ctx
        self._log = open(log_path, "wb")
        self._proc = subprocess.Popen(
            [sys.executable, str(LOGITS_CHILD), str(path), str(n_ctx), str(threads),
             str(n_batch), "f32" if kv_f32 else "default"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log)

    def __call__(self, ids: list[int]):
        import numpy as np

        if len(ids) > self.n_ctx:
            raise GGUFExportError(f"{self.path.name}: a teacher-forced sequence of {len(ids)} "
                                  f"tokens does not fit n_ctx = {self.n_ctx} ([gguf] n_ctx)")
        try:
            self._proc.stdin.write((json.dumps([int(i) for i in ids]) + "\n").encode())
            self._proc.stdin.flush()
            head = self._proc.stdout.read(8)
            rows, vocab = (np.frombuffer(head, dtype="<i4") if len(head) == 8 else (0, 0))
            body = self._proc.stdout.read(int(rows) * int(vocab) * 4) if rows else b""
        except BrokenPipeError:
            head, body, rows, vocab = b"", b"", 0, 0
        if len(head) != 8 or len(body) != int(rows) * int(vocab) * 4 or rows != len(ids):
            raise LlamaCppCrashed(self._died())
        return np.frombuffer(body, dtype="<f4").reshape(int(rows), int(vocab))

    def _died(self) -> str:
        try:
            rc = self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            rc = self._proc.wait()
        self._log.flush()
        tail = "\n".join(self.log_path.read_text(errors="replace").strip().splitlines()[-4:])
        how = f"killed by signal {-rc}" if rc < 0 else f"exit {rc}"
        return (f"llama.cpp died computing logits of {self.path.name} ({how}; log "
                f"{self.log_path}){': ' + tail if tail else ''}")

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log.close()

    def __enter__(self) -> LlamaCppLogits:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def hf_greedy_sequence(model, prompt_ids: list[int], max_new_tokens: int,
                       pad_id: int | None) -> list[int]:
    """The prompt's ids followed by the HF model's greedy continuation (up to and including
    EOS if it stops first): the sequence both models are then fed, token for token."""
    import torch

    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=pad_id,
                             attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long))
    return [int(t) for t in out[0]]


def hf_logits(model, ids: list[int]):
    """The HF model's logits at every position of `ids`, float32, (positions, vocabulary)."""
    import torch

    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0].float().cpu().numpy()


def teacher_forced_agreement(model, sequences: list[list[int]], gguf_path: Path, *, n_ctx: int,
                             threads: int, quantized: bool, log_path: Path) -> dict:
    """The same token ids through transformers and llama.cpp; every position compared.

    Every file is decoded in batches of 512; an unquantized file with an F32 KV cache, so
    that only rounding separates it from the HF model. A crash is returned as `error` with
    NaN figures (what was compared before it is kept), so it fails the gates instead of
    ending the phase.
    """
    per_seq, worst, error = [], [], None
    n_batch = 512
    longest = max(map(len, sequences))
    if longest > n_ctx:
        raise GGUFExportError(f"{Path(gguf_path).name}: a teacher-forced sequence of {longest} "
                              f"tokens does not fit n_ctx = {n_ctx} ([gguf] n_ctx)")
    # llama-cpp-python keeps n_ctx x vocabulary float32 scores with logits_all: a context of
    # the longest sequence, not [gguf] n_ctx (2 GB for Gemma's 262k vocabulary at 2048).
    with LlamaCppLogits(gguf_path, n_ctx=longest, threads=threads, n_batch=n_batch,
                        kv_f32=not quantized, log_path=log_path) as gguf:
        for k, ids in enumerate(sequences):
            try:
                theirs = gguf(ids)
            except LlamaCppCrashed as exc:
                error = str(exc)
                break
            r = next_token_agreement(hf_logits(model, ids), theirs)
            per_seq.append(r)
            i = int(r["kl"].argmax())
            worst.append({"sequence": k, "position": i, "tokens": len(ids),
                          "kl": float(r["kl"][i]), "hf_top1": int(r["hf_top1"][i]),
                          "gguf_top1": int(r["gguf_top1"][i]),
                          "hf_p_top1": float(r["hf_p_top1"][i])})
    summary = summarize_agreement(per_seq)
    summary.update({"n_batch": n_batch, "kv_cache": "F16 (llama.cpp default)" if quantized
                    else "F32", "worst_positions": sorted(worst, key=lambda w: -w["kl"])[:3]})
    if error is not None:
        summary.update({"error": error, "sequences_compared": len(per_seq),
                        "top1_agreement": float("nan"), "mean_kl": float("nan"),
                        "median_kl": float("nan"), "max_kl": float("nan")})
    return summary
