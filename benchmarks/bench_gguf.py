"""GGUF on CPU: the shipped Q5_K_M in llama.cpp against the uncompressed model in
transformers, and the K-quant trade-off table (size, tokens/s, accuracy retained).

    python -m benchmarks.bench_gguf --profile tiny
    python -m benchmarks.bench_gguf --profile gemma-270m

Writes benchmarks/results/gguf_inference_<profile>.json and gguf_kquants_<profile>.json.
Each engine runs in its own fresh process (memory is that process's peak RSS and its growth
over the imports), on the same prompt, with the same thread count, one after another in one
run, so the ratios compare like with like on this machine at this moment.

The GGUFs are made by phase 2C's own code (`cogumi.compression.gguf_export`) from the
profile's base model. Quality is measured in llama.cpp for every file with the evaluation
suite (MMLU by option log-likelihood, and MATH by greedy answer where affordable); "retained"
is each file's score over the unquantized GGUF's (same runtime, same tokenizer, so only the
weights differ).

Every file's prompt is decoded in batches (n_batch=512), with llama-cpp-python as the
project's install builds it (cogumi/llama_cpp_build.py: this CPU's instruction sets, AMX off;
a native AMX build crashed here in batched decoding of quantized models, issue 13); the
shipped file is measured one token per decode call as well, the way the project decoded
prompts before, so the JSON shows what batching changes. Each llama.cpp run records the
build's features (llama.cpp's system info line).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PROMPT_TOKENS = 128
GEN_TOKENS = 64
THREADS = 2
N_BATCH = 512  # llama.cpp's default: a whole prompt of PROMPT_TOKENS in one decode call
REPEATS = int(os.environ.get("COGUMI_BENCH_REPEATS", 5))
LOAD_AT_START: list[float] = []
PROMPT_TEXT = ("Cogumi compresses a language model step by step: pruning, quantization, export "
               "to GGUF and packing, each measured against the model before it. ") * 20


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    # VmHWM, not getrusage's ru_maxrss: Linux keeps ru_maxrss across exec, so a child would
    # report the parent's peak at fork time.
    return _status_mb("VmHWM")


# ------------------------------------------------------------------ child: one engine run


def child_transformers(model_dir: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(THREADS)
    base = rss_mb()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = tok(PROMPT_TEXT, return_tensors="pt", add_special_tokens=False).input_ids[:, :PROMPT_TOKENS]
    prompt_rates, gen_rates = [], []
    with torch.inference_mode():
        model(ids[:, :8])  # warm-up
        for _ in range(REPEATS):
            t = time.perf_counter()
            model(ids)
            prompt_s = time.perf_counter() - t
            t = time.perf_counter()
            out = model.generate(ids, max_new_tokens=GEN_TOKENS, min_new_tokens=GEN_TOKENS,
                                 do_sample=False, pad_token_id=tok.eos_token_id)
            total_s = time.perf_counter() - t
            n_gen = out.shape[1] - ids.shape[1]
            # generate() reads the prompt once more; its decode time is the rest.
            prompt_rates.append(ids.shape[1] / prompt_s)
            gen_rates.append(n_gen / max(total_s - prompt_s, 1e-9))
    return {"engine": "transformers", "dtype": "float32", "prompt_tokens": int(ids.shape[1]),
            "generated_tokens": int(n_gen), **_rates(prompt_rates, gen_rates),
            "rss_before_load_mb": base, "peak_rss_mb": peak_rss_mb(),
            "rss_growth_mb": peak_rss_mb() - base}


def _rates(prompt: list[float], gen: list[float]) -> dict:
    """Medians over the repeats (a shared 2-core machine stalls now and then), and all runs."""
    return {"prompt_tokens_per_s": statistics.median(prompt),
            "generation_tokens_per_s": statistics.median(gen),
            "repeats": {"prompt_tokens_per_s": prompt, "generation_tokens_per_s": gen}}


def child_llamacpp(gguf: str, n_batch: int, prompt_ids: list[int]) -> dict:
    import llama_cpp
    from llama_cpp import Llama

    base = rss_mb()
    # logits_all: the greedy loop below reads the last row of llama.scores.
    llama = Llama(model_path=gguf, n_ctx=512, n_threads=THREADS, n_batch=n_batch, verbose=False,
                  seed=0, logits_all=True)
    ids = prompt_ids[:PROMPT_TOKENS]
    llama.eval(ids[:8])  # warm-up
    llama_cpp.llama_perf_context_reset(llama.ctx)
    prompt_rates, gen_rates = [], []
    for _ in range(REPEATS):
        llama.reset()
        t = time.perf_counter()
        llama.eval(ids)
        prompt_rates.append(len(ids) / (time.perf_counter() - t))
        t = time.perf_counter()
        for _ in range(GEN_TOKENS):  # greedy, ignoring EOS so every engine makes GEN_TOKENS
            llama.eval([int(llama.scores[llama.n_tokens - 1].argmax())])
        gen_rates.append(GEN_TOKENS / (time.perf_counter() - t))
    perf = llama_cpp.llama_perf_context(llama.ctx)
    return {"engine": "llama.cpp", "file": Path(gguf).name, "n_batch": n_batch,
            "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode().strip(),
            "prompt_tokens": len(ids), "generated_tokens": GEN_TOKENS,
            **_rates(prompt_rates, gen_rates),
            "llama_cpp_timings_ms": {"prompt_eval": perf.t_p_eval_ms, "n_prompt_eval": perf.n_p_eval,
                                     "eval": perf.t_eval_ms, "n_eval": perf.n_eval},
            "rss_before_load_mb": base, "peak_rss_mb": peak_rss_mb(),
            "rss_growth_mb": peak_rss_mb() - base}


def run_child(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_gguf", "--child", *args],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-800:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------- parent


def prepare(profile_name: str, work: Path) -> tuple[Path, Path | None, bool, object]:
    """The profile's base model as an HF folder (+ source GGUF for its tokenizer)."""
    from cogumi.compression.common import save_hf_model
    from cogumi.models import load_base_model, model_location
    from cogumi.profile import load_profile

    profile = load_profile(profile_name)
    hf = work / "hf"
    vocab = None
    if profile.model.from_gguf:
        where, extra = model_location(profile.model, ROOT)
        vocab = Path(where) / extra["gguf_file"]
    if not (hf / "config.json").exists():
        save_hf_model(load_base_model(profile.model, ROOT), hf, phase="benchmark")
    return hf, vocab, profile.model.add_bos, profile


def quality(path: Path, tasks, limit: int, max_new_tokens: int, n_batch: int) -> dict:
    from cogumi.evaluation import GenerationSettings, LlamaCppBackend, evaluate

    backend = LlamaCppBackend(path, n_ctx=1024, n_threads=THREADS, n_batch=n_batch)
    report = evaluate(backend, tasks, GenerationSettings(max_new_tokens=max_new_tokens),
                      limit=limit)
    keep = ("mmlu.accuracy_loglik", "math.accuracy")
    return {k: v for k, v in report.metrics.items() if k in keep}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--work", default=None)
    ap.add_argument("--quality-limit", type=int, default=None,
                    help="items per task for the K-quant accuracy (default: 40 tiny, 20 else)")
    ap.add_argument("--repeats", type=int, default=REPEATS)
    ap.add_argument("--child", nargs="+")
    args = ap.parse_args()
    os.environ["COGUMI_BENCH_REPEATS"] = str(args.repeats)  # children read it
    if args.child:
        kind, *rest = args.child
        if kind == "transformers":
            print(json.dumps(child_transformers(rest[0])))
        else:
            print(json.dumps(child_llamacpp(rest[0], int(rest[1]), json.loads(rest[2]))))
        return

    from cogumi.compression import gguf_export as G
    from cogumi.evaluation import load_task

    work = Path(args.work or f"/tmp/cogumi-bench-gguf-{args.profile}")
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    global LOAD_AT_START
    LOAD_AT_START = list(os.getloadavg())  # a shared machine: say how busy it was
    hf, vocab, add_bos, profile = prepare(args.profile, work)
    base_type = "F32"
    files = {base_type: work / f"model-{base_type}.gguf"}
    if not files[base_type].exists():
        G.convert_to_gguf(hf, files[base_type], base_type, work / "convert.log", vocab,
                          add_bos if vocab else None)
    for q in ("Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0"):
        files[q] = work / f"model-{q}.gguf"
        if not files[q].exists():
            G.quantize(files[base_type], files[q], q, THREADS, work / f"quantize-{q}.log")

    # One prompt, as token ids, for every engine (the GGUF's own tokenizer, which for
    # gemma-270m is the original Gemma one; transformers tokenizes the same text itself).
    from llama_cpp import Llama
    vocab_only = Llama(model_path=str(files["Q5_K_M"]), vocab_only=True, verbose=False)
    prompt_ids = list(vocab_only.tokenize(PROMPT_TEXT.encode(), add_bos=True))[:PROMPT_TOKENS]
    del vocab_only

    ship = profile.gguf.ship_type
    runs = {"transformers (uncompressed, float32)": run_child("transformers", str(hf))}
    for q, path in files.items():
        runs[f"llama.cpp {q} n_batch={N_BATCH}"] = run_child(
            "llamacpp", str(path), str(N_BATCH), json.dumps(prompt_ids))
    # The shipped file as the project decoded prompts before batching was restored.
    runs[f"llama.cpp {ship} n_batch=1"] = run_child(
        "llamacpp", str(files[ship]), "1", json.dumps(prompt_ids))
    hf_run = runs["transformers (uncompressed, float32)"]
    shipped = runs[f"llama.cpp {ship} n_batch={N_BATCH}"]
    ratios = {}
    if "error" not in hf_run and "error" not in shipped:
        ratios = {
            "generation_tokens_per_s": shipped["generation_tokens_per_s"] / hf_run["generation_tokens_per_s"],
            "prompt_tokens_per_s": shipped["prompt_tokens_per_s"] / hf_run["prompt_tokens_per_s"],
            "rss_growth": shipped["rss_growth_mb"] / hf_run["rss_growth_mb"],
            "peak_rss": shipped["peak_rss_mb"] / hf_run["peak_rss_mb"],
        }
    from cogumi.provenance import provenance
    prov = provenance(("torch", "transformers", "llama_cpp_python", "gguf"))
    prov["machine"].update({"threads": THREADS,
                            "load_average_1_5_15_at_start": LOAD_AT_START,
                            "load_average_1_5_15_at_end_of_speed_runs": list(os.getloadavg())})
    inference = {
        **prov,
        "benchmark": "CPU inference: shipped GGUF in llama.cpp vs uncompressed model in "
                     "transformers", "profile": args.profile, "shipped_type": ship,
        "prompt_tokens": PROMPT_TOKENS, "generated_tokens": GEN_TOKENS,
        "runs": runs, "ratios_shipped_gguf_over_transformers": ratios,
        "notes": [f"llama.cpp prompts are decoded in batches of {N_BATCH} (n_batch) for every "
                  f"file; the shipped file also one token per decode call (n_batch=1), as the "
                  f"project did before issue 13; the ratios use the batched run",
                  f"generation: greedy, {GEN_TOKENS} tokens each, EOS ignored, KV cache on both; "
                  f"every rate is the median of {args.repeats} repeats in one process (all listed)",
                  "memory: each engine in a fresh process; rss_growth_mb = peak RSS minus "
                  "RSS after imports, before loading the model",
                  "the machine is shared (2 cores): ratios are from one run, back to back"],
    }

    RESULTS.mkdir(parents=True, exist_ok=True)
    inference_path = RESULTS / f"gguf_inference_{args.profile}.json"
    inference_path.write_text(json.dumps(inference, indent=2) + "\n")  # before the long part
    print(f"wrote {inference_path}")

    # K-quant table: size, speed (from the runs above), accuracy retained vs the F32 GGUF.
    ev = profile.eval
    tasks = [load_task("mmlu", ROOT / ev.mmlu)]
    limit, new_tokens = (40, 64) if args.profile == "tiny" else (20, 1)
    limit = args.quality_limit or limit
    if args.profile == "tiny":
        tasks.append(load_task("math", ROOT / ev.math))
    scores = {q: quality(path, tasks, limit, new_tokens, N_BATCH) for q, path in files.items()}
    table = []
    n_params = int(G.tensor_types(files[base_type], None)["quantizable_parameters"])
    for q, path in files.items():
        r = runs[f"llama.cpp {q} n_batch={N_BATCH}"]
        kinds = G.tensor_types(path, q if q in G.QUANT_TYPES else None)
        retained = {k: (v / scores[base_type][k] if scores[base_type].get(k) else None)
                    for k, v in scores[q].items()}
        used = [v for v in retained.values() if v is not None]
        table.append({
            "type": q, "bytes": path.stat().st_size, "mb": path.stat().st_size / 1e6,
            "bits_per_quantizable_parameter": path.stat().st_size * 8 / n_params,
            "intended_share": kinds["intended_share"], "fallback_tensors": kinds["fallback_tensors"],
            "parameter_share_by_type": kinds["parameter_share_by_type"],
            "generation_tokens_per_s": r.get("generation_tokens_per_s"),
            "prompt_tokens_per_s": r.get("prompt_tokens_per_s"),
            "prompt_n_batch": N_BATCH,
            "accuracy": scores[q], "retained_vs_F32": retained,
            "retained_mean": sum(used) / len(used) if used else None})
    kquants = {
        **prov,
        "benchmark": "K-quant trade-off: size, tokens/s, accuracy retained", "profile": args.profile,
        "quality": {"tasks": [t.name for t in tasks], "limit_per_task": limit,
                    "max_new_tokens": new_tokens, "reference": f"{base_type} GGUF, same runtime",
                    "metrics": "mmlu.accuracy_loglik (option log-likelihood), math.accuracy "
                               "(greedy, verified with math-verify) where listed"},
        "table": table, "wall_s": time.time() - started,
    }
    kquants_path = RESULTS / f"gguf_kquants_{args.profile}.json"
    kquants_path.write_text(json.dumps(kquants, indent=2) + "\n")
    print(f"wrote {kquants_path}")


if __name__ == "__main__":
    main()
