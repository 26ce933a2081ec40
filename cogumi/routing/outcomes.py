"""Every route's verified answer to every held-out query, in llama.cpp.

A route is the shipped base GGUF alone ("base") or with one modifier's GGUF LoRA applied
(``Llama(lora_path=...)``, llama.cpp's own adapter loading): what a user's server runs. Each
route answers every query greedily through the evaluation suite (``evaluate``: the same
prompts, verifiers and sandbox as the benchmarks), with the chosen tokens' log-probabilities
recorded (the escalation signals).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from cogumi.artifacts import sha256_file
from cogumi.evaluation import EvalReport, GenerationSettings, LlamaCppBackend, evaluate
from cogumi.evaluation.splits import IdSplit
from cogumi.evaluation.tasks import Task
from cogumi.routing.escalation import serving_signals
from cogumi.routing.labels import BASE


def route_backend(base_gguf: Path, adapter_gguf: Path | None, *, n_ctx: int,
                  n_threads: int | None) -> LlamaCppBackend:
    """The base GGUF, with ``adapter_gguf`` applied when given, as an evaluation backend
    that records token log-probabilities."""
    from cogumi.llama_cpp_build import load_llama_cpp
    llama_cpp = load_llama_cpp("the routing phases")
    kwargs = {"lora_path": str(adapter_gguf)} if adapter_gguf is not None else {}
    llama = llama_cpp.Llama(model_path=str(base_gguf), n_ctx=n_ctx, n_threads=n_threads,
                            logits_all=True, verbose=False, seed=0, **kwargs)
    digest = sha256_file(base_gguf)
    if adapter_gguf is not None:
        digest += "+lora:" + sha256_file(adapter_gguf)
    return LlamaCppBackend(llama=llama, model_digest=digest, logprobs=True)


def query_text(task: Task, item) -> str:
    """What the router sees: the user's turn(s) of the item's chat (what a server receives)."""
    return "\n".join(m["content"] for m in task.messages(item) if m["role"] == "user")


def qualified_id(task: Task, item_id: str) -> str:
    return f"{task.name}:{item_id}"


def run_routes(routes: Mapping[str, Path | None], base_gguf: Path, tasks: Sequence[Task],
               settings: GenerationSettings, *, n_ctx: int, n_threads: int | None,
               limit: int | None = None, cache_dir: Path | None = None,
               log: Callable[[str], None] = print) -> dict[str, EvalReport]:
    """route name -> its evaluation report over every task (per item: verdict, tokens,
    token log-probabilities)."""
    reports = {}
    for name, adapter in routes.items():
        log(f"route {name}: {'base' if adapter is None else adapter.name} on "
            f"{sum(min(len(t.items), limit or len(t.items)) for t in tasks)} queries")
        backend = route_backend(base_gguf, adapter, n_ctx=n_ctx, n_threads=n_threads)
        try:
            reports[name] = evaluate(backend, list(tasks), settings, limit=limit,
                                     loglikelihood=False, cache_dir=cache_dir)
        finally:
            backend.llama.close()
    return reports


def outcome_rows(tasks: Sequence[Task], reports: Mapping[str, EvalReport], split: IdSplit,
                 limit: int | None = None) -> tuple[list[dict], list[dict]]:
    """(rows, excluded): one row per query answered by every route, in the contract's shape
    without the "router" field (the router is fitted on these rows); queries no route could
    be asked (malformed lines) are excluded with their reason."""
    by_route = {r: {(rec["task"], rec["item_id"]): rec for rec in rep.records}
                for r, rep in reports.items()}
    rows, excluded = [], []
    for task in tasks:
        items = task.items if limit is None else task.items[:limit]
        for it in items:
            qid = qualified_id(task, it.id)
            if it.malformed is not None:
                excluded.append({"id": qid, "reason": f"malformed_item: {it.malformed}"})
                continue
            outs = {}
            for route, recs in by_route.items():
                rec = recs.get((task.name, it.id))
                if rec is None:
                    raise RuntimeError(f"route {route} has no answer for {qid}")
                lps = (rec.get("token_logprobs") or [[]])[0]
                sig = serving_signals(lps, 1.0)
                outs[route] = {"correct": bool(rec["verdicts"][0]),
                               "mean_logprob": sig["mean_logprob"],
                               "min_logprob": sig["min_logprob"],
                               "completion_tokens": int((rec.get("completion_tokens")
                                                         or [0])[0]),
                               "reason": rec["reasons"][0]}
            rows.append({"id": qid, "split": "report" if split.is_heldout(qid) else "fit",
                         "domain": task.name, "query": query_text(task, it), "routes": outs})
    return rows, excluded


def route_names(modifiers: Sequence[dict]) -> tuple[str, ...]:
    return (BASE, *[m["name"] for m in modifiers])
