"""Teacher requests on this CPU: a concurrency limit against one at a time, and a rerun that
the content cache answers (issue 14's performance items for phase 1C).

    python benchmarks/bench_teacher_requests.py --gguf fixtures/tiny-teacher/model.gguf \
        [--requests 16] [--concurrency 2] [--max-tokens 64] [--threads 2]
    python benchmarks/bench_teacher_requests.py --base-url http://127.0.0.1:8000/v1 --model m

The same requests (the first `--requests` problems of fixtures/benchmarks/math_dev.jsonl,
as phase 1C asks them: the MATH prompt, greedy) go through cogumi.distillation's
ask_teacher (what generate_examples sends; the verifier is timed apart) three times: one at a time into an empty cache, `--concurrency` at a time
into another empty cache, and again into that second cache (the rerun: every answer a cache
hit, nothing sent, nothing spent). A GGUF is served by llama-cpp-python's OpenAI-compatible
server on a loopback port for the run (cogumi.teacher.LlamaCppServer) and reached over HTTP,
as the pipeline reaches its teacher. Prices: `--price-in` / `--price-out` dollars per
million tokens (default 0, a local model).

Writes benchmarks/results/teacher_requests.json: per run, wall time, requests sent, cache
hits, tokens, cost, requests per second and completion tokens per second, answers kept by
the verifier; and the machine and settings. One uncounted warm-up request goes first. One run, not
repeated: the numbers carry the noise of a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = ROOT / "benchmarks" / "results" / "teacher_requests.json"
POOL = ROOT / "fixtures" / "benchmarks" / "math_dev.jsonl"


def requests_for(n: int) -> list[dict]:
    from cogumi.distillation import check_for_item
    from cogumi.evaluation import load_task
    task = load_task("math", POOL)
    out = []
    for it in task.items[:n]:
        user = task.messages(it)[0]["content"]
        out.append({"id": it.id, "domain": "math", "prompt": user,
                    "check": check_for_item(task, it)})
    return out


def measure(backend, requests, cache_dir: Path, concurrency: int, prices) -> dict:
    """The requests alone are timed (cogumi.distillation.ask_teacher: cache, budget, HTTP);
    the verifier runs after, timed on its own (its first call imports math-verify)."""
    from cogumi.distillation import ExampleVerifier, ask_teacher
    t0 = time.monotonic()
    got = ask_teacher(backend, requests, cache_dir=cache_dir, prices=prices,
                      concurrency=concurrency)
    wall = time.monotonic() - t0
    t1 = time.monotonic()
    verdicts = ExampleVerifier()([(r, got.answers[r["id"]]["text"]) for r in requests
                                  if r["id"] in got.answers])
    verify_s = time.monotonic() - t1
    u = got.usage
    return {"concurrency": concurrency, "wall_s": round(wall, 3), "requests": len(requests),
            "sent": u["sent"], "cache_hits": u["cache_hits"], "http_calls": u["http_calls"],
            "prompt_tokens": u["prompt_tokens"], "completion_tokens": u["completion_tokens"],
            "cost_usd": u["cost_usd"], "failures": u["failures"],
            "requests_per_s": round(len(requests) / wall, 3) if wall else None,
            "completion_tokens_per_s": round(u["completion_tokens"] / wall, 2) if wall else None,
            "verify_s": round(verify_s, 3), "kept": sum(v.ok for v in verdicts)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--gguf", help="a GGUF to serve with llama-cpp-python's server")
    where.add_argument("--base-url", help="a running OpenAI-compatible endpoint (…/v1)")
    ap.add_argument("--model", default="teacher", help="model name sent with each request")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="server threads (served GGUF)")
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--price-in", type=float, default=0.0)
    ap.add_argument("--price-out", type=float, default=0.0)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()

    from cogumi.evaluation.backends.openai_backend import OpenAIBackend
    from cogumi.teacher import LlamaCppServer

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    requests = requests_for(args.requests)
    for r in requests:
        r["max_tokens"] = args.max_tokens
    prices = (args.price_in, args.price_out)
    server = None
    if args.gguf:
        server = LlamaCppServer(ROOT / args.gguf if not Path(args.gguf).is_absolute()
                                else args.gguf, model_alias=args.model, n_ctx=args.n_ctx,
                                n_threads=args.threads)
        server.start()
        base_url = server.base_url
    else:
        base_url = args.base_url
    results = {}
    try:
        # One uncounted request first, so the first measured run does not pay for a cold
        # server (model pages, first-batch allocations).
        from cogumi.evaluation import GenerationRequest
        warm = OpenAIBackend(base_url, args.model, timeout_s=600, on_failure="raise")
        warm.generate([GenerationRequest(messages=({"role": "user", "content": "Hello."},),
                                         max_new_tokens=8)])
        warm.close()
        with tempfile.TemporaryDirectory(prefix="bench-teacher-") as tmp:
            for label, conc, cache in (("one_at_a_time", 1, "serial"),
                                       ("concurrent", args.concurrency, "concurrent"),
                                       ("rerun_cached", args.concurrency, "concurrent")):
                be = OpenAIBackend(base_url, args.model, concurrency=conc, timeout_s=600,
                                   on_failure="raise", model_digest=(
                                       f"bench:{args.gguf}" if args.gguf else None))
                try:
                    results[label] = measure(be, requests, Path(tmp) / cache, conc, prices)
                finally:
                    be.close()
                print(label, json.dumps(results[label]))
    finally:
        if server is not None:
            server.stop()
    from cogumi.provenance import provenance
    serial, conc = results["one_at_a_time"], results["concurrent"]
    out = {
        **provenance(("llama-cpp-python", "httpx", "math-verify", "fastapi", "uvicorn")),
        "what": "teacher requests through cogumi.distillation.generate_examples: one at a "
                "time, with a concurrency limit, and a rerun answered by the cache",
        "teacher": {"gguf": args.gguf, "base_url": None if args.gguf else base_url,
                    "model": args.model, "server_threads": args.threads if args.gguf else None,
                    "startup_s": round(server.startup_s, 2) if server and server.startup_s
                    else None},
        "settings": {"requests": args.requests, "max_tokens": args.max_tokens,
                     "concurrency": args.concurrency, "prices_usd_per_mtok": list(prices),
                     "prompts": f"first {args.requests} of {POOL.relative_to(ROOT)}, greedy"},
        "runs": results,
        "speedup_concurrent_over_serial": (round(serial["wall_s"] / conc["wall_s"], 3)
                                           if conc["wall_s"] else None),
        "rerun": {"sent": results["rerun_cached"]["sent"],
                  "cache_hits": results["rerun_cached"]["cache_hits"],
                  "cost_usd": results["rerun_cached"]["cost_usd"],
                  "target": "0 requests, $0"},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
