"""Does ggml's 16-bit GELU table explain the F32 GGUF's distance from transformers?

    python benchmarks/bench_f32_gelu.py --profile gemma-270m           # the packaged base model
    python benchmarks/bench_f32_gelu.py --model runs/gemma-270m/2E/model --name gemma-270m-2E

Why: 2C gates the F32 GGUF in llama.cpp at max KL 1e-6 nats against transformers ("rounding
only"). gemma-270m's 2E model missed it (9.1e-6 at stop 23) while tiny's Llama passes, and
bench_f32_rounding.py showed float32 rounding alone reaches 3.7e-11 on that model. Gemma's MLP
is GELU-gated (tanh GELU); llama.cpp's CPU backend computes GELU on float32 tensors through a
table indexed by the input rounded to float16, whose entries are float16
(ggml/src/ggml-cpu/vec.h: GGML_GELU_FP16 is defined unconditionally; ggml_vec_gelu_f32 and
ggml_vec_geglu_f32 read ggml_table_gelu_f16 for |x| < 10).

The F32 export is compared, teacher-forced on the same token ids through 2C's own
`teacher_forced_agreement`, with transformers twice: as it is, and with every MLP's activation
replaced by that table's arithmetic (input to float16, tanh GELU in float32, output to
float16; 0 below -10, x above 10). If the table is the cause, the second distance is of
float32 rounding's order. Texts: the README's paragraphs longer than 400 characters, cut to
--tokens tokens.

Writes benchmarks/results/f32_gelu_<name>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cogumi.provenance import provenance  # noqa: E402 - needs ROOT on the path


def ggml_gelu_f16_table(x):
    """What llama.cpp's CPU backend returns for GELU(x) on a float32 tensor (vec.h)."""
    import torch

    x16 = x.to(torch.float16).to(torch.float32)
    y = torch.nn.functional.gelu(x16, approximate="tanh").to(torch.float16).to(x.dtype)
    y = torch.where(x <= -10.0, torch.zeros_like(x), y)
    return torch.where(x >= 10.0, x, y)


def _ggml_gelu_module():
    """An nn.Module computing ggml_gelu_f16_table (an MLP's act_fn must be a module)."""
    import torch

    class GGMLGelu(torch.nn.Module):
        def forward(self, x):
            return ggml_gelu_f16_table(x)

    return GGMLGelu()


def _summary(result: dict) -> dict:
    keep = ("sequences", "positions", "top1_agreement", "top1_disagreements", "mean_kl", "median_kl", "max_kl",
            "worst_positions", "kv_cache", "n_batch", "error")
    return {k: result[k] for k in keep if k in result}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--profile", help="the profile's base model, as its package ships it")
    where.add_argument("--model", help="an HF model folder written by a phase (its model/)")
    ap.add_argument("--name", help="names the result file (default: the profile's name)")
    ap.add_argument("--texts", type=int, default=12)
    ap.add_argument("--tokens", type=int, default=77)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    name = args.name or args.profile
    if name is None:
        ap.error("--model needs --name")

    from cogumi.compression.common import load_hf_model, save_hf_model
    from cogumi.compression.gguf_export import convert_to_gguf, teacher_forced_agreement
    from cogumi.models import load_base_model, model_location
    from cogumi.profile import load_profile

    work = Path(tempfile.mkdtemp(prefix="bench-f32-gelu-"))
    vocab_gguf, add_bos = None, None
    if args.profile:
        profile = load_profile(args.profile)
        loaded = load_base_model(profile.model, ROOT)
        folder = work / "model"
        save_hf_model(loaded, folder)
        if profile.model.from_gguf:  # as 2C does: the source GGUF's own tokenizer
            src, extra = model_location(profile.model, ROOT)
            vocab_gguf, add_bos = Path(src) / extra["gguf_file"], profile.model.add_bos
    else:
        folder = Path(args.model)
        loaded = load_hf_model(folder)
    model = loaded.model.float().eval()
    acts = [m for m in model.modules()
            if "gelu" in type(getattr(m, "act_fn", None)).__name__.lower()]
    if not acts:
        ap.error(f"{folder}: no MLP with a GELU activation (act_fn): nothing to test")
    kinds = sorted({type(m.act_fn).__name__ for m in acts})
    gguf = work / "model-F32.gguf"
    convert_to_gguf(folder, gguf, "F32", work / "convert.log", vocab_gguf, add_bos)

    tok = loaded.tokenizer
    paragraphs = [p for p in (ROOT / "README.md").read_text().split("\n\n") if len(p) > 400]
    sequences = []
    for text in paragraphs[:args.texts]:
        ids = tok(text, add_special_tokens=False).input_ids[:args.tokens]
        if loaded.add_bos and tok.bos_token_id is not None:
            ids = [tok.bos_token_id, *ids][:args.tokens]
        sequences.append(ids)

    def compare() -> dict:
        return _summary(teacher_forced_agreement(model, sequences, gguf, n_ctx=args.tokens,
                                                 threads=args.threads, quantized=False,
                                                 log_path=work / "llama.log"))

    as_is = compare()
    originals = [m.act_fn for m in acts]
    for m in acts:
        m.act_fn = _ggml_gelu_module()
    emulated = compare()
    for m, fn in zip(acts, originals, strict=True):
        m.act_fn = fn

    result = {
        **provenance(["torch", "transformers", "llama-cpp-python", "gguf"]),
        "what": "F32 GGUF in llama.cpp against transformers (float32) on the same token ids: "
                "transformers as it is, and with its MLP activation computed as llama.cpp's "
                "CPU backend does (16-bit GELU table)",
        "model": args.profile and f"profile {args.profile} base model" or str(folder),
        "activations_replaced": {"modules": len(acts), "types": kinds},
        "texts": len(sequences), "tokens_per_text": args.tokens,
        "transformers_as_is": as_is,
        "transformers_with_ggml_gelu_table": emulated,
        "max_kl_ratio": (as_is["max_kl"] / emulated["max_kl"]
                         if emulated.get("max_kl") else None),
    }
    out = ROOT / "benchmarks" / "results" / f"f32_gelu_{name}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    for label, r in (("as is", as_is), ("with ggml's GELU table", emulated)):
        print(f"{label}: top-1 {r['top1_agreement']:.4f}, mean KL {r['mean_kl']:.3g}, "
              f"max KL {r['max_kl']:.3g} over {r.get('positions')} positions")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
