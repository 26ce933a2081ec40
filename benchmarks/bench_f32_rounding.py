"""How far float32 rounding alone moves a model's next-token distributions: transformers in
float32 against the same weights in float64, on the same token ids.

    python benchmarks/bench_f32_rounding.py --model runs/gemma-270m/2E/model --name gemma-270m

Why: 2C's `gguf.base.max_kl` gate holds the F32 GGUF in llama.cpp to 1e-6 nats against
transformers, a bound derived as "rounding only". When a model misses it (gemma-270m's 2E
model: 9.1e-6 at stop 23), this says whether float32 rounding on that model reaches such a
figure at all. Texts: the README's paragraphs longer than 400 characters, each cut to
--tokens tokens (the length of 2C's teacher-forced sequences). KL(float64 || float32) in
nats, softmax over the full vocabulary, through 2C's own `next_token_agreement`.

Writes benchmarks/results/f32_rounding_<name>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cogumi.provenance import provenance  # noqa: E402 - needs ROOT on the path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="an HF model folder (a phase's model/)")
    ap.add_argument("--name", required=True, help="names the result file")
    ap.add_argument("--texts", type=int, default=12)
    ap.add_argument("--tokens", type=int, default=77)
    args = ap.parse_args()

    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cogumi.compression.gguf_export import next_token_agreement

    folder = Path(args.model)
    if not (folder / "config.json").is_file():
        ap.error(f"--model {folder}: no config.json there (an HF model folder is needed)")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    paragraphs = [p for p in (ROOT / "README.md").read_text().split("\n\n") if len(p) > 400]
    texts = paragraphs[:args.texts]
    f32 = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    f64 = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64).eval()
    kls, same, worst_logit = [], [], 0.0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt").input_ids[:, :args.tokens]
            exact = f64(ids).logits[0].double().numpy()
            rounded = f32(ids).logits[0].double().numpy()
            r = next_token_agreement(exact, rounded)
            kls.append(r["kl"])
            same.append(r["same_top1"])
            worst_logit = max(worst_logit, float(np.abs(exact - rounded).max()))
    kl, agree = np.concatenate(kls), np.concatenate(same)
    result = {**provenance(("torch", "transformers")),
              "benchmark": "float32 rounding alone: transformers float32 vs float64, same ids",
              "model": str(folder), "texts": len(texts), "tokens_per_text": args.tokens,
              "positions": int(len(kl)), "top1_agreement": float(agree.mean()),
              "mean_kl": float(kl.mean()), "max_kl": float(kl.max()),
              "max_abs_logit_difference": worst_logit,
              "gate_compared": "gates/phase2c.toml gguf.base.max_kl <= 1e-6"}
    out = ROOT / "benchmarks" / "results" / f"f32_rounding_{args.name}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("positions", "top1_agreement", "mean_kl",
                                             "max_kl", "max_abs_logit_difference")}))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
