"""``evaluate(backend, tasks, settings)``: generate, verify, and report how every number
was computed, item by item.

Each task is generated in one ``backend.generate`` call (the backend batches), scored by
its verifier (math-verify, the letter, the code sandbox), and summarised into flat metrics
named ``<task>.<metric>``. Every item (malformed ones included) is in ``items.jsonl`` with
its prompt, generations, extracted answers, verdicts and failure reasons.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cogumi.artifacts import atomic_write_text

from . import answers as A
from . import bfcl
from .backends.base import Backend
from .metrics import agreement, majority, mean, pass_at_k
from .sandbox import REASONS as SANDBOX_REASONS
from .sandbox import CodeJob, Sandbox
from .settings import (
    GenerationOutput,
    GenerationRequest,
    GenerationSettings,
    LoglikelihoodRequest,
    derive_seed,
)
from .tasks import MC_ANSWER_PREFIX, Item, Task

#: Bump when scoring changes: part of the run cache key.
# 2: the MMLU answer prefix is rendered inside the assistant turn; 3: code tests are judged
# in the harness, the candidate called over a plain-data channel; 4: tool calls (BFCL's
# checker) and final-number math answers (GSM8K)
SCORING_VERSION = "4"

#: Why a generation can fail, besides the sandbox's reasons.
REASONS = {
    "correct": "the verifier accepted the answer",
    "wrong_answer": "an answer was extracted and the verifier rejected it",
    "no_answer": "no final answer could be extracted",
    "no_answer_truncated": "no final answer could be extracted and generation hit max_new_tokens",
    "empty_generation": "the model produced no text",
    "invalid_utf8": "the backend returned bytes that are not UTF-8",
    "generation_error": "the backend reported an error for this request (see detail)",
    "malformed_item": "the benchmark line was malformed (see detail); counted as a failure",
    **{k: v for k, v in SANDBOX_REASONS.items() if k not in ("passed", "wrong_answer")},
    "passed": "code: every test passed in the sandbox",
}

DEFINITIONS = {
    "{task}.accuracy": "math/mmlu/tool_call: share of all generations (n items x k samples) "
    "whose extracted final answer the verifier accepts (math: math-verify equivalence with "
    "the reference; GSM8K: the final number of the extracted answer equals the reference "
    "number; mmlu: letter equals the reference; tool_call: BFCL's decoder reads a list of "
    "calls and BFCL's AST checker accepts it against the possible answers). With k=1 this "
    "is plain accuracy.",
    "{task}.accuracy_loglik": "mmlu: share of items whose highest log-likelihood option, "
    f"scored as the continuation ' X' after the chat prompt with the answer begun as "
    f"'{MC_ANSWER_PREFIX}' inside the assistant turn (the per-item loglik_context), is "
    "the reference (needs a backend with log-likelihoods).",
    "{task}.pass@k": "unbiased pass@k (Chen et al. 2021) over n=k_samples generations per "
    "item: mean over items of 1 - C(n-c,k)/C(n,k). code: a generation passes when the "
    "item's tests run to the end in the sandbox.",
    "{task}.maj@k": "share of items whose majority answer (largest cluster of equivalent "
    "answers among the k samples; first cluster wins ties) is correct.",
    "{task}.consistency": "share of items whose k sampled final answers all agree pairwise "
    "(math: math-verify equivalence; mmlu: same letter; code: same AST; tool_call: the same "
    "decoded calls). A missing answer agrees with nothing. Only with samples >= 2.",
    "{task}.pairwise_agreement": "mean over items of (agreeing answer pairs / C(k,2)).",
    "{task}.consistency/{category}": "consistency restricted to one category (math: MATH "
    "'type'; mmlu: subject; code: 'code').",
    "{task}.accuracy/{category}": "accuracy restricted to one category.",
    "{task}.n_items": "items evaluated (malformed ones included, as failures).",
    "consistency": "samples >= 2: share of all items, pooled over every task in the run, "
    "whose k sampled final answers all agree (the per-task rule above).",
    "{task}.failure_rate/{reason}": "share of generations that failed for this reason.",
    "{task}.verdicts_unverified": "code: share of generations whose verdict is not verified: "
    "decided by tests that ran inside the sandbox (tasks whose tests pass the candidate "
    "non-data arguments or inspect it; the program could forge that verdict) or run under "
    "the opt-in 'weak-unsafe' isolation. 0 means every verdict came from the trusted judge.",
    "{task}.pass@k_unverified": "code under 'weak-unsafe' isolation only: what pass@k would "
    "read. {task}.pass@k itself is then undefined (NaN), so gates on it fail.",
}


@dataclass
class EvalReport:
    metrics: dict[str, float]
    records: list[dict[str, Any]]
    settings: dict[str, Any]
    backend: dict[str, Any]
    tasks: list[dict[str, Any]]
    sandbox: dict[str, Any] | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    definitions: dict[str, str] = field(default_factory=lambda: dict(DEFINITIONS))
    reasons: dict[str, str] = field(default_factory=lambda: dict(REASONS))
    cached: bool = False

    def eval_json(self) -> dict[str, Any]:
        return {
            "metrics": self.metrics,
            "definitions": self.definitions,
            "reasons": self.reasons,
            "settings": self.settings,
            "backend": self.backend,
            "tasks": self.tasks,
            "sandbox": self.sandbox,
            "summary": self.summary,
            "scoring_version": SCORING_VERSION,
        }

    def write(self, out_dir: str | Path) -> Path:
        """Write ``items.jsonl`` and ``eval.json`` atomically; returns ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in self.records)
        atomic_write_text(out / "items.jsonl", lines)
        atomic_write_text(out / "eval.json", json.dumps(self.eval_json(), indent=2, sort_keys=True,
                                                    default=str) + "\n")
        return out

    @classmethod
    def load(cls, out_dir: str | Path) -> EvalReport:
        out = Path(out_dir)
        meta = json.loads((out / "eval.json").read_text())
        records = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines() if line]
        return cls(
            metrics=meta["metrics"], records=records, settings=meta["settings"],
            backend=meta["backend"], tasks=meta["tasks"], sandbox=meta.get("sandbox"),
            summary=meta.get("summary", {}), definitions=meta.get("definitions", {}),
            reasons=meta.get("reasons", {}),
        )

    def limits(self) -> list[str]:
        """What a reader of these numbers must be told (code verdicts that are unverified),
        one line per task; every report that uses the numbers states them."""
        return [line for v in self.summary.values() if isinstance(v, dict)
                for line in v.get("limits", [])]

    def task_records(self, task: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["task"] == task]


def evaluate(
    backend: Backend,
    tasks: Sequence[Task] | Task,
    settings: GenerationSettings | None = None,
    limit: int | None = None,
    *,
    sandbox: Sandbox | None = None,
    workers: int = 2,
    loglikelihood: bool = True,
    cache_dir: str | Path | None = None,
) -> EvalReport:
    """Run every task on ``backend`` and return the report.

    ``limit`` keeps the first N items of each task. ``sandbox`` runs code tasks (a default
    :class:`Sandbox` is made when needed); ``workers`` programs run at once. With
    ``cache_dir``, each task's result is stored under a key of (model digest, task digest,
    settings, limit, scoring version) and reused when the key matches.
    """
    settings = settings or GenerationSettings()
    if isinstance(tasks, Task):
        tasks = [tasks]
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"task names must be unique in one evaluation, got {names}")
    if any(t.kind == "code" for t in tasks) and sandbox is None:
        sandbox = Sandbox()
    t0 = time.monotonic()
    identity = backend.identity()
    metrics: dict[str, float] = {}
    records: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    task_info = []
    any_cached, all_cached = False, True
    for task in tasks:
        settings_here = (settings if task.max_new_tokens is None
                         else replace(settings, max_new_tokens=task.max_new_tokens))
        key = None
        if cache_dir is not None:
            key = run_cache_key(identity, task, settings_here, limit, loglikelihood,
                                sandbox.describe() if (sandbox and task.kind == "code") else None)
            hit = _cache_load(Path(cache_dir), key)
            if hit is not None:
                m, recs, summ = hit
                metrics.update(m)
                records.extend(recs)
                summary[task.name] = {**summ, "cache": "hit", "cache_key": key}
                task_info.append(_task_info(task, limit))
                any_cached = True
                continue
        all_cached = False
        m, recs, summ = _evaluate_task(backend, task, settings_here, limit, sandbox, workers,
                                       loglikelihood)
        if key is not None:
            _cache_store(Path(cache_dir), key, m, recs, summ)
            summ = {**summ, "cache": "miss", "cache_key": key}
        metrics.update(m)
        records.extend(recs)
        summary[task.name] = summ
        task_info.append(_task_info(task, limit))
    if settings.samples >= 2:
        pooled = [float(r["all_agree"]) for r in records if "all_agree" in r]
        if pooled:
            metrics["consistency"] = mean(pooled)
    summary["wall_s"] = time.monotonic() - t0
    summary["created"] = _dt.datetime.now(_dt.UTC).isoformat()
    return EvalReport(
        metrics=metrics, records=records,
        settings={**settings.to_dict(), "limit": limit, "loglikelihood": loglikelihood},
        backend=identity, tasks=task_info,
        sandbox=sandbox.describe() if sandbox and any(t.kind == "code" for t in tasks) else None,
        summary=summary, cached=any_cached and all_cached,
    )


def _task_info(task: Task, limit: int | None) -> dict[str, Any]:
    n = len(task.items) if limit is None else min(limit, len(task.items))
    own = {} if task.max_new_tokens is None else {"max_new_tokens": task.max_new_tokens}
    return {"name": task.name, "kind": task.kind, "path": task.path, "digest": task.digest,
            "n_items": n, **own, **task.meta}


def run_cache_key(identity: dict[str, Any], task: Task, settings: GenerationSettings,
                  limit: int | None, loglikelihood: bool, sandbox: dict[str, Any] | None) -> str:
    blob = json.dumps({
        "model": identity.get("model_digest"),
        "backend": {k: v for k, v in identity.items() if k != "model_digest"},
        "task": task.digest, "task_name": task.name, "settings": settings.to_dict(),
        "limit": limit, "loglikelihood": loglikelihood, "sandbox": sandbox,
        "scoring": SCORING_VERSION,
    }, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def _cache_load(cache_dir: Path, key: str):
    d = cache_dir / key
    try:
        meta = json.loads((d / "task.json").read_text())
        recs = [json.loads(line) for line in (d / "items.jsonl").read_text().splitlines() if line]
    except (OSError, json.JSONDecodeError):
        return None
    return meta["metrics"], recs, meta["summary"]


def _cache_store(cache_dir: Path, key: str, metrics, records, summary) -> None:
    d = cache_dir / key
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_text(d / "items.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    atomic_write_text(d / "task.json", json.dumps({"metrics": metrics, "summary": summary}, sort_keys=True,
                                              default=str))


# ---------------------------------------------------------------------- one task
def _text_of(out: GenerationOutput) -> tuple[str, str | None]:
    """(text, failure reason or None) for a generation, before any answer extraction."""
    if out.error:
        return (out.text if isinstance(out.text, str) else ""), "generation_error"
    text = out.text
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            return bytes(text).decode("utf-8", "replace"), "invalid_utf8"
    if not isinstance(text, str):
        return "", "generation_error"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: not representable as UTF-8
        return text.encode("utf-8", "replace").decode("utf-8"), "invalid_utf8"
    if not text.strip():
        return text, "empty_generation"
    return text, None


def build_program(item: Item, code: str) -> str:
    """The program the sandbox runs: the HumanEval prompt, the completion, the tests, and
    ``check(entry_point)``. A completion that defines the entry point itself (a full
    function) replaces the prompt's stub: it follows everything in the prompt before that
    stub (imports, helper functions). Otherwise it is a body that continues the prompt, as
    in HumanEval's own harness."""
    f = item.fields
    entry = f["entry_point"]
    prompt = f["prompt"]
    def_re = re.compile(rf"^[ \t]*def\s+{re.escape(entry)}\s*\(", re.MULTILINE)
    if def_re.search(code):
        stubs = list(def_re.finditer(prompt))
        header = prompt[: stubs[-1].start()] if stubs else prompt + "\n"
        body = header + code
    else:
        body = prompt + code
    return f"{body}\n\n{f['test']}\n\ncheck({entry})\n"


def build_job(item: Item, code: str) -> CodeJob:
    """What the sandbox judges: the candidate (the program of :func:`build_program` without
    its tests) runs in the sandbox; the prelude (the prompt before the entry point's stub:
    imports and the helpers some tests call, e.g. HumanEval/32's ``poly``) and the tests run
    in the harness. Both come from the benchmark file, never from the model."""
    f = item.fields
    entry = f["entry_point"]
    prompt = f["prompt"]
    def_re = re.compile(rf"^[ \t]*def\s+{re.escape(entry)}\s*\(", re.MULTILINE)
    stubs = list(def_re.finditer(prompt))
    prelude = prompt[: stubs[-1].start()] if stubs else ""
    if def_re.search(code):
        candidate = (prelude if stubs else prompt + "\n") + code
    else:
        candidate = prompt + code
    return CodeJob(candidate=candidate, tests=f["test"], entry_point=entry, prelude=prelude,
                   program=build_program(item, code))


def _evaluate_task(backend, task, settings, limit, sandbox, workers, use_ll):
    items = task.items if limit is None else task.items[:limit]
    k = settings.samples
    valid = [it for it in items if it.malformed is None]
    requests, owners = [], []
    for it in valid:
        msgs = task.messages(it)
        for s in range(k):
            requests.append(GenerationRequest(
                messages=msgs, max_new_tokens=settings.max_new_tokens,
                temperature=settings.temperature, top_p=settings.top_p,
                seed=derive_seed(settings.seed, task.name, it.id, s), stop=settings.stop))
            owners.append(it.id)
    tg = time.monotonic()
    outs = backend.generate(requests) if requests else []
    gen_s = time.monotonic() - tg
    if len(outs) != len(requests):
        raise RuntimeError(f"backend returned {len(outs)} outputs for {len(requests)} requests")
    by_item: dict[str, list[GenerationOutput]] = defaultdict(list)
    for owner, out in zip(owners, outs, strict=True):
        by_item[owner].append(out)

    ll_scores: dict[str, list[float]] = {}
    ll_contexts: dict[str, str] = {}
    if task.kind == "mmlu" and use_ll and backend.supports_loglikelihood and valid:
        ll_req, ll_owner = [], []
        for it in valid:
            ctx = ll_contexts[it.id] = backend.render(task.messages(it), answer_prefix=MC_ANSWER_PREFIX)
            for i in range(len(it.fields["choices"])):
                ll_req.append(LoglikelihoodRequest(continuation=" " + A.LETTERS[i], context=ctx))
                ll_owner.append(it.id)
        for owner, o in zip(ll_owner, backend.loglikelihood(ll_req), strict=True):
            ll_scores.setdefault(owner, []).append(o.logprob)

    # Per generation: text -> extracted answer -> verdict/reason.
    records = []
    programs: list[tuple[int, int, str]] = []
    for it in items:
        rec: dict[str, Any] = {"task": task.name, "kind": task.kind, "item_id": it.id,
                               "line": it.line, "category": it.category}
        if it.malformed is not None:
            rec.update(prompt=None, reference=None, generations=[], extracted=[],
                       extraction_rules=[], verdicts=[False] * k, reasons=["malformed_item"] * k,
                       details=[it.malformed] * k, finish_reasons=[], item_reason="malformed_item")
            records.append(rec)
            continue
        gens = by_item[it.id]
        rec["prompt"] = gens[0].prompt_text or backend.render(task.messages(it))
        rec["reference"] = it.reference if task.kind != "code" else it.fields.get("entry_point")
        texts, extracted, rules, verdicts, reasons, details = [], [], [], [], [], []
        for s, out in enumerate(gens):
            text, bad = _text_of(out)
            texts.append(text)
            details.append(out.error or "")
            if bad:
                extracted.append(None)
                rules.append("none")
                verdicts.append(False)
                reasons.append(bad)
                continue
            calls = None
            if task.kind == "math":
                ex = A.extract_math_answer(text)
                if task.answer_type == "number":
                    ex = A.final_number(ex)
            elif task.kind == "mmlu":
                ex = A.extract_choice_letter(text, len(it.fields["choices"]))
            elif task.kind == "tool_call":
                calls, why = bfcl.decode(text, it.category)
                ex = A.Extracted(None if calls is None else bfcl.canonical(calls), "bfcl_decoder")
                details[-1] = details[-1] or why
            else:
                ex = A.extract_code(text)
            extracted.append(ex.answer)
            rules.append(ex.rule)
            if ex.answer is None:
                verdicts.append(False)
                reasons.append("no_answer_truncated" if out.finish_reason == "length" else "no_answer")
                continue
            if task.kind == "tool_call":
                ok, why = bfcl.check(it, calls)
                verdicts.append(ok)
                reasons.append("correct" if ok else "wrong_answer")
                details[-1] = details[-1] or why
            elif task.kind == "math" and task.answer_type == "number":
                ok = A.numbers_equal(it.reference, ex.answer)
                verdicts.append(ok)
                reasons.append("correct" if ok else "wrong_answer")
            elif task.kind == "math":
                ok = A.math_equivalent(it.reference, ex.answer)
                verdicts.append(ok)
                reasons.append("correct" if ok else "wrong_answer")
            elif task.kind == "mmlu":
                ok = ex.answer == A.LETTERS[it.reference]
                verdicts.append(ok)
                reasons.append("correct" if ok else "wrong_answer")
            else:
                verdicts.append(False)  # decided by the sandbox below
                reasons.append("pending")
                programs.append((len(records), s, build_job(it, ex.answer)))
        if task.kind == "code":
            rec["judges"] = [None] * len(gens)
        rec.update(generations=texts, extracted=extracted, extraction_rules=rules,
                   verdicts=verdicts, reasons=reasons, details=details,
                   finish_reasons=[o.finish_reason for o in gens],
                   completion_tokens=[o.completion_tokens for o in gens],
                   prompt_tokens=[o.prompt_tokens for o in gens])
        if any("token_logprobs" in o.extra for o in gens):
            rec["token_logprobs"] = [o.extra.get("token_logprobs", []) for o in gens]
        if it.id in ll_scores:
            sc = ll_scores[it.id]
            best = max(range(len(sc)), key=lambda i: sc[i])
            rec["loglik_context"] = ll_contexts[it.id]
            rec["loglik"] = sc
            rec["loglik_choice"] = A.LETTERS[best]
            rec["loglik_correct"] = best == it.reference
        records.append(rec)

    ts = time.monotonic()
    if programs:
        results = sandbox.run_many([p for _, _, p in programs], workers=workers)
        for (ri, s, _), res in zip(programs, results, strict=True):
            rec = records[ri]
            rec["verdicts"][s] = res.passed
            rec["reasons"][s] = res.reason
            rec["details"][s] = res.detail
            rec["judges"][s] = res.judge if res.verified else f"{res.judge}, unverified"
    sandbox_s = time.monotonic() - ts

    metrics = _task_metrics(task, records, k, settings)
    limits = []
    if task.kind == "code" and records:
        judged = [(r, s) for r in records for s, j in enumerate(r.get("judges") or []) if j]
        unverified = [(r, s) for r, s in judged if "unverified" in r["judges"][s]]
        metrics[f"{task.name}.verdicts_unverified"] = len(unverified) / max(1, len(judged))
        if sandbox is not None and not sandbox.verified:
            limits.append(f"{task.name}: code ran under '{sandbox.isolation}' isolation: every "
                          "verdict is unverified and pass@k is reported as undefined")
            for key in [m for m in metrics if m.startswith(f"{task.name}.pass@")]:
                metrics[key + "_unverified"] = metrics[key]
                metrics[key] = float("nan")
        elif unverified:
            ids = sorted({r["item_id"] for r, _ in unverified})
            limits.append(f"{task.name}: {len(unverified)} of {len(judged)} verdicts were "
                          "reported by the sandboxed program itself, which could forge them "
                          "(its tests pass the candidate non-data arguments or inspect it): "
                          + ", ".join(ids[:20]) + (" ..." if len(ids) > 20 else ""))
    reasons = Counter(r for rec in records for r in rec["reasons"])
    summ = {
        "n_items": len(items), "n_malformed": len(items) - len(valid), "samples": k,
        "reasons": dict(reasons), "limits": limits,
        "generation_s": gen_s, "sandbox_s": sandbox_s,
        "prompt_tokens": sum(o.prompt_tokens for o in outs),
        "completion_tokens": sum(o.completion_tokens for o in outs),
    }
    return metrics, records, summ


def _agree_fn(kind: str):
    if kind == "math":
        return A.math_answers_agree
    if kind == "code":
        return lambda a, b: a is not None and b is not None and A.normalise_code(a) == A.normalise_code(b)
    return lambda a, b: a is not None and b is not None and a == b


def _task_metrics(task: Task, records: list[dict], k: int, settings: GenerationSettings) -> dict[str, float]:
    name = task.name
    m: dict[str, float] = {f"{name}.n_items": float(len(records))}
    if not records:
        return m
    per_item_acc = [sum(r["verdicts"]) / k for r in records]
    by_cat: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_cat[r["category"]].append(i)

    if task.kind in ("math", "mmlu", "tool_call"):
        m[f"{name}.accuracy"] = mean(per_item_acc)
        for cat, idx in sorted(by_cat.items()):
            m[f"{name}.accuracy/{cat}"] = mean([per_item_acc[i] for i in idx])
    for kk in sorted(set(settings.pass_k) | {1}):
        if kk <= k:
            m[f"{name}.pass@{kk}"] = mean([pass_at_k(k, sum(r["verdicts"]), kk) for r in records])
    if task.kind == "mmlu" and any("loglik_correct" in r for r in records):
        m[f"{name}.accuracy_loglik"] = mean([float(r.get("loglik_correct", False)) for r in records])

    total = sum(len(r["reasons"]) for r in records)
    for reason, n in sorted(Counter(x for r in records for x in r["reasons"]).items()):
        if reason not in ("correct", "passed"):
            m[f"{name}.failure_rate/{reason}"] = n / total

    if k >= 2:
        agree = _agree_fn(task.kind)
        all_ok, pair = [], []
        for r in records:
            if r.get("item_reason") == "malformed_item":
                a, p = False, 0.0
            else:
                a, p = agreement(r["extracted"], agree)
            r["all_agree"], r["pairwise_agreement"] = a, p
            all_ok.append(float(a))
            pair.append(p)
            if task.kind in ("math", "mmlu", "tool_call"):
                j = majority(r["extracted"], agree)
                r["majority_correct"] = bool(j is not None and r["verdicts"][j])
        m[f"{name}.consistency"] = mean(all_ok)
        m[f"{name}.pairwise_agreement"] = mean(pair)
        for cat, idx in sorted(by_cat.items()):
            m[f"{name}.consistency/{cat}"] = mean([all_ok[i] for i in idx])
        if task.kind in ("math", "mmlu", "tool_call"):
            m[f"{name}.maj@{k}"] = mean([float(r.get("majority_correct", False)) for r in records])
    return m
