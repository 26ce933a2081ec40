"""`cogumi serve` against llama-cpp-python's own server on the same base GGUF.

    python -m benchmarks.bench_serve --tiny                  # builds the tiny bundle first
    python -m benchmarks.bench_serve --bundle runs/tiny/5A/bundle

Both servers run as their own processes on loopback, with the same thread count, and are
asked the same prompts (the fixture benchmarks' first items, as the evaluation suite words
them) by the same clients: `--clients` threads at once, each with its own official `openai`
client, each sending `--requests` chat completions in turn, greedy, `--max-tokens` each. The
servers take turns, `--rounds` times (A B A B ...), so a change in the machine's load
falls on both.

What is compared (issue 16's target: at most 10 % added p50 latency, at least 90 % of the
tokens/s, for routing and adapter selection without escalation):
- `llama_cpp.server` (`python -m llama_cpp.server --model model.gguf`): the base alone.
- `cogumi serve`, model "cogumi/base": the same base through cogumi's server (no router, no
  adapter): the server's own overhead.
- `cogumi serve`, model "cogumi": the routed system (the router on every request, the
  chosen modifier's adapter set on the context) with escalation off (the bundle's
  thresholds are left out), so no request leaves the machine. Its modifiers answer
  differently from the base, so its answers have other lengths: tokens/s and the latency
  per completion token compare like with like, the p50 per request only roughly.

Writes benchmarks/results/serve_<name>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def prompts(n: int) -> list[list[dict]]:
    """The first items of the fixture's math, code and MMLU benchmarks, round robin."""
    sys.path.insert(0, str(ROOT))
    from cogumi.evaluation import load_task
    tasks = [load_task(k, ROOT / "fixtures" / "benchmarks" / f"{k}.jsonl")
             for k in ("math", "code", "mmlu")]
    out = []
    i = 0
    while len(out) < n:
        task = tasks[i % len(tasks)]
        out.append(task.messages(task.items[i // len(tasks)]))
        i += 1
    return out


def tiny_bundle(work: Path) -> Path:
    """The tests' tiny bundle: the fixture Llama as F32 GGUF (2C's converter), two
    random-weight LoRAs, a router on a handful of queries; no escalation."""
    from cogumi.compression.gguf_export import convert_to_gguf
    from cogumi.serving.bundle import write_bundle
    from tests.serving_bundle import FIXTURE_MODEL, build_parts, fit_router

    gguf = work / "f32.gguf"
    convert_to_gguf(FIXTURE_MODEL, gguf, "F32", work / "convert.log")
    parts = build_parts(work / "parts", gguf)
    out = work / "bundle"
    write_bundle(out, router_dir=fit_router(work / "router"), escalation=None,
                 thresholds=None, teacher=None,
                 serving={"n_ctx": 1024, "n_threads": 1, "stop": [], "max_tokens": 64},
                 card="# bench bundle\n", **parts)
    return out


def without_escalation(bundle: Path, work: Path) -> Path:
    """A copy of the bundle with no threshold: the routed system never escalates."""
    from cogumi.serving.bundle import load_bundle, write_manifest
    copy = work / "bundle-no-escalation"
    shutil.copytree(bundle, copy)
    manifest = load_bundle(copy).manifest
    system = dict(manifest["system"])
    for key in ("thresholds", "escalation"):
        rel = system.pop(key, None)
        if rel:
            (copy / rel).unlink()
    extra = {k: v for k, v in manifest.items() if k not in ("format", "system", "files")}
    write_manifest(copy, system, extra)
    return copy


def _wait(url: str, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    import httpx
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}) before answering {url}")
        try:
            if httpx.get(url + "/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout_s} s")


class CogumiServer:
    def __init__(self, bundle: Path, threads: int, log: Path) -> None:
        from cogumi.teacher import free_loopback_port
        self.port = free_loopback_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.cmd = [sys.executable, "-m", "cogumi", "serve", str(bundle), "--port",
                    str(self.port), "--threads", str(threads), "--log-level", "warning"]
        self.log = log

    def __enter__(self):
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=ROOT, start_new_session=True)
        _wait(self.url, self.proc)
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def load(url: str, model: str, chats: list[list[dict]], clients: int, per_client: int,
         max_tokens: int) -> dict:
    import openai

    def work(c: int) -> list[dict]:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
        out = []
        for k in range(per_client):
            msgs = chats[(c * per_client + k) % len(chats)]
            t0 = time.monotonic()
            try:
                r = client.chat.completions.create(model=model, messages=msgs, temperature=0,
                                                   max_tokens=max_tokens, seed=0)
                out.append({"latency_s": time.monotonic() - t0, "id": r.id,
                            "completion_tokens": r.usage.completion_tokens,
                            "text": r.choices[0].message.content, "prompt": c * per_client + k})
            except openai.OpenAIError as e:
                out.append({"latency_s": time.monotonic() - t0, "error": str(e)})
        client.close()
        return out

    t0 = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        rows = [r for rs in pool.map(work, range(clients)) for r in rs]
    wall = time.monotonic() - t0
    ok = [r for r in rows if "error" not in r]
    tokens = sum(r["completion_tokens"] for r in ok)
    per_token = [r["latency_s"] / r["completion_tokens"] for r in ok if r["completion_tokens"]]
    return {"requests": len(rows), "errors": len(rows) - len(ok), "wall_s": wall,
            "completion_tokens": tokens, "tokens_per_s": tokens / wall,
            "latency_p50_s": statistics.median(r["latency_s"] for r in ok),
            "latency_p95_s": float(__import__("numpy").percentile(
                [r["latency_s"] for r in ok], 95)),
            "latency_per_token_p50_s": statistics.median(per_token) if per_token else None,
            "answers": {r["prompt"]: r["text"] for r in ok}}


def _summary(runs: list[dict]) -> dict:
    """Per configuration: the median over rounds of each round's figures."""
    keys = ("tokens_per_s", "latency_p50_s", "latency_p95_s", "latency_per_token_p50_s",
            "wall_s")
    return {k: statistics.median(r[k] for r in runs) for k in keys} | {
        "errors": sum(r["errors"] for r in runs), "requests": sum(r["requests"] for r in runs),
        "rounds": len(runs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--bundle", type=Path, help="a 5A bundle folder")
    src.add_argument("--tiny", action="store_true", help="build the tests' tiny bundle")
    ap.add_argument("--name", default=None, help="result file suffix (default: tiny / the "
                    "bundle's profile)")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--requests", type=int, default=4, help="per client")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from cogumi.artifacts import sha256_file
    from cogumi.provenance import provenance
    from cogumi.serving.bundle import load_bundle
    from cogumi.teacher import LlamaCppServer

    load_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    bundle = tiny_bundle(work) if args.tiny else args.bundle
    b = load_bundle(bundle)
    name = args.name or ("tiny" if args.tiny else str(b.manifest.get("profile", "bundle")))
    served = without_escalation(bundle, work)
    base_gguf = b.path(b.base)
    n_ctx = int(b.serving.get("n_ctx", 2048))
    chats = prompts(args.clients * args.requests)
    configs = {"llama_cpp.server": None, "cogumi serve, cogumi/base": "cogumi/base",
               "cogumi serve, cogumi (routed)": "cogumi"}
    runs: dict[str, list[dict]] = {k: [] for k in configs}
    for _ in range(args.rounds):
        with LlamaCppServer(base_gguf, model_alias="base", n_ctx=n_ctx,
                            n_threads=args.threads, log_path=work / "llama-server.log") as srv:
            runs["llama_cpp.server"].append(load(srv.base_url, "base", chats, args.clients,
                                                 args.requests, args.max_tokens))
        with CogumiServer(served, args.threads, work / "cogumi-serve.log") as srv:
            for label, model in configs.items():
                if model is not None:
                    runs[label].append(load(srv.url, model, chats, args.clients,
                                            args.requests, args.max_tokens))
    summary = {k: _summary(v) for k, v in runs.items()}
    ref = summary["llama_cpp.server"]
    for s in summary.values():
        s["p50_latency_overhead"] = s["latency_p50_s"] / ref["latency_p50_s"] - 1
        s["tokens_per_s_share"] = s["tokens_per_s"] / ref["tokens_per_s"]
        if s["latency_per_token_p50_s"] and ref["latency_per_token_p50_s"]:
            s["per_token_latency_overhead"] = (s["latency_per_token_p50_s"]
                                               / ref["latency_per_token_p50_s"] - 1)
    same = [runs["cogumi serve, cogumi/base"][0]["answers"].get(i) ==
            runs["llama_cpp.server"][0]["answers"].get(i) for i in range(len(chats))]
    result = {
        **provenance(("llama-cpp-python", "fastapi", "uvicorn", "openai")),
        "benchmark": "cogumi serve against llama-cpp-python's server on the same base GGUF",
        "bundle": "tests' tiny bundle (fixture Llama F32, two random-weight LoRAs, router)"
                  if args.tiny else str(bundle),
        "base_gguf_sha256": sha256_file(base_gguf), "n_ctx": n_ctx,
        "clients": args.clients, "requests_per_client": args.requests,
        "max_tokens": args.max_tokens, "rounds": args.rounds, "threads": args.threads,
        "prompts": "first items of fixtures/benchmarks/{math,code,mmlu}.jsonl, round robin",
        "load_average_at_start": load_start, "load_average_at_end": os.getloadavg(),
        "target": {"p50_latency_overhead_at_most": 0.10, "tokens_per_s_share_at_least": 0.90},
        "base_answers_equal_to_llama_cpp_server": f"{sum(same)}/{len(same)}",
        "summary": summary,
        "runs": {k: [{kk: vv for kk, vv in r.items() if kk != "answers"} for r in v]
                 for k, v in runs.items()},
    }
    out = args.out or RESULTS / f"serve_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: {kk: round(vv, 4) if isinstance(vv, float) else vv
                          for kk, vv in s.items()} for k, s in summary.items()}, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
