"""Phase 5B: end-to-end validation of the bundle, through HTTP only.

`cogumi serve` is started on 5A's bundle on a loopback port, with the profile's teacher
(cogumi.teacher.teacher_backend: a served GGUF or an endpoint) as its escalation target, and
everything below is asked through /v1/chat/completions with the official `openai` client
(cogumi.serving.client.ServedBackend); nothing is cached.

- **Quality.** The suite (the [eval] tasks and each modifier's benchmark, as phase 3 judges
  them) is answered by the routed system ("cogumi"), by the shipped base alone
  ("cogumi/base") and by the teacher, on the same items, greedy, verified by the same
  verifiers. Per task: each score, and the paired differences system - base and
  system - teacher with their 95 % intervals (cogumi.stats.paired_difference).
- **The seed's claim**, "beats GPT-4 on 3 domains": for each of code, reasoning and
  automation, the system's own answers ("cogumi/local": routed, never escalated; with
  escalation the system answers as the teacher wherever it escalates, so the claim would
  hold by escalating everything) against the teacher on the benchmark of that domain's modifier
  (its modifier.json task), gated on the paired interval's lower bound: the claim holds on a
  domain only where the data show the system at least as good. A domain without a modifier
  in the bundle has no figure, and its gate fails.
- **Routing and escalation as measured offline.** Every report-split query of 4A
  (route_outcomes.jsonl) is sent to "cogumi" with 4A's generation settings; the route the
  response reports is compared with 4A's router decision, and the escalation decision
  (p_wrong >= threshold, whether or not the teacher then answered) with 4B's p_wrong at 4C's
  threshold. Equal decisions on every query make the API's routing accuracy and escalation
  rate equal to 4A's and 4C's figures; the counts of differing decisions are gated at 0.
- **Load.** LOAD_CLIENTS clients, each sending LOAD_REQUESTS_PER_CLIENT requests one after
  another, all at once, replaying the system's benchmark requests: every request answered
  (no error, none lost, no response id twice), each locally generated answer equal to the
  same request's answer without load (greedy: anything else is a mix-up), latency p50 / p95
  and completion tokens per second over the whole test.
- **Size**: the download 5A measured (sizes.json).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cogumi.artifacts import sha256_file, write_json
from cogumi.runner import PhaseContext, PhaseInputError

LOAD_CLIENTS = 4
LOAD_REQUESTS_PER_CLIENT = 4
"""The bounded load test: 4 concurrent clients x 4 requests each (the server answers one
generation at a time, so more clients only lengthen the queue; 16 requests give a p95 that
is not the maximum of a handful)."""
SEED_DOMAINS = ("code", "reasoning", "automation")
"""The seed's three domains of "beats GPT-4 on 3 domains" (checklist 3A-3C, 5B)."""
SYSTEM, LOCAL, BASE = "cogumi", "cogumi/local", "cogumi/base"


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise PhaseInputError(f"{path}: missing")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise PhaseInputError(f"{path}:{n}: not JSON ({e.msg})") from None
    return rows


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise PhaseInputError(f"{path}: missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PhaseInputError(f"{path}: not JSON (line {e.lineno}: {e.msg})") from None


def _metrics_of(folder: Path) -> dict:
    path = folder / "metrics.json"
    if not path.is_file():
        return {}
    m = json.loads(path.read_text())
    return m.get("metrics", m)


# ---------------------------------------------------------------------- quality
def quality(system_dir: Path, base_dir: Path, teacher_dir: Path) -> tuple[dict, list[dict]]:
    """Per suite score: system, base and teacher, and the paired differences of the system
    against each (same items). Returns (metrics, rows for the report)."""
    from cogumi.evaluation.paired import SUITE, item_scores
    from cogumi.stats import paired_difference

    sys_s, base_s, teach_s = (item_scores(d) for d in (system_dir, base_dir, teacher_dir))
    m: dict[str, float] = {}
    rows = []
    for score, task in SUITE.items():
        if task not in sys_s:
            continue
        row = {"score": score, "task": task, "n": len(sys_s[task])}
        for who, scores in (("system", sys_s), ("base", base_s), ("teacher", teach_s)):
            vals = list(scores[task].values())
            m[f"{who}.{score}"] = row[who] = sum(vals) / len(vals) if vals else math.nan
        for prefix, other in (("vs_base", base_s), ("vs_teacher", teach_s)):
            iv = paired_difference(other[task], sys_s[task])
            m[f"{prefix}.{score}.delta"] = iv.point
            m[f"{prefix}.{score}.delta_lower"] = iv.lower
            m[f"{prefix}.{score}.delta_upper"] = iv.upper
            row[prefix] = iv.to_dict()
        rows.append(row)
    uppers = [r["vs_base"]["upper"] for r in rows]
    m["vs_base.worst_delta_upper"] = min(uppers) if uppers else math.nan
    return m, rows


def claim(rows: list[dict], modifiers: dict[str, dict]) -> tuple[dict, list[dict]]:
    """The seed's "beats GPT-4 on 3 domains": per seed domain, the system against the
    teacher on its modifier's benchmark."""
    from cogumi.evaluation.paired import SUITE
    by_task = {r["task"]: r for r in rows}
    m: dict[str, float] = {}
    out = []
    for domain in SEED_DOMAINS:
        info = modifiers.get(domain)
        task = (info or {}).get("task")
        row = by_task.get(task)
        if row is None:
            out.append({"domain": domain, "task": task, "why": "no modifier in the bundle"
                        if info is None else f"task {task!r} was not evaluated"})
            continue
        iv = row["vs_teacher"]
        m[f"claim.{domain}.system_minus_teacher"] = iv["point"]
        m[f"claim.{domain}.system_minus_teacher_lower"] = iv["lower"]
        m[f"claim.{domain}.system_minus_teacher_upper"] = iv["upper"]
        if row["teacher"] > 0:
            m[f"claim.{domain}.system_over_teacher"] = row["system"] / row["teacher"]
        score = next(s for s, t in SUITE.items() if t == task)
        out.append({"domain": domain, "task": task, "score": score, "system": row["system"],
                    "teacher": row["teacher"], **iv})
    m["claim.domains_at_least_teacher"] = float(sum(
        m.get(f"claim.{d}.system_minus_teacher_lower", -1) >= 0 for d in SEED_DOMAINS))
    return m, out


# ---------------------------------------------------------------------- routing
def compare_decisions(rows: list[dict], offline_p: dict[str, float],
                      threshold: float | None) -> tuple[dict, list[dict]]:
    """The API's decisions against 4A's and 4B/4C's, query by query. Each row: 4A's
    route_outcomes row plus "api" (the response's cogumi field, or {"error"})."""
    per_query = []
    for r in rows:
        api = r["api"] or {}
        route = api.get("route")
        p = api.get("p_wrong")
        th = api.get("threshold")
        api_esc = p is not None and th is not None and p >= th
        off_p = offline_p.get(r["id"])
        off_esc = off_p is not None and threshold is not None and off_p >= threshold
        per_query.append({
            "id": r["id"], "domain": r["domain"], "label": r.get("label"),
            "offline_route": r["router"]["route"], "api_route": route,
            "offline_p_wrong": off_p, "api_p_wrong": p, "offline_escalates": off_esc,
            "api_escalates": api_esc, "teacher_answered": bool(api.get("escalated")),
            "teacher_error": api.get("teacher_error"), "error": api.get("error")})
    n = len(per_query)
    m: dict[str, float] = {"routing.queries": float(n)}
    if not n:
        return m, per_query
    m["routing.decisions_differing_from_4a"] = float(sum(
        q["api_route"] != q["offline_route"] for q in per_query))
    m["routing.api_accuracy"] = sum(q["api_route"] == q["label"] for q in per_query) / n
    m["routing.offline_accuracy_recomputed"] = sum(
        q["offline_route"] == q["label"] for q in per_query) / n
    m["escalation.decisions_differing_from_4c"] = float(sum(
        q["api_escalates"] != q["offline_escalates"] for q in per_query))
    m["escalation.api_rate"] = sum(q["api_escalates"] for q in per_query) / n
    m["escalation.offline_rate_recomputed"] = sum(q["offline_escalates"] for q in per_query) / n
    decided = [q for q in per_query if q["api_escalates"]]
    if decided:
        m["escalation.teacher_answered_share"] = sum(
            q["teacher_answered"] for q in decided) / len(decided)
    diffs = [abs(q["api_p_wrong"] - q["offline_p_wrong"]) for q in per_query
             if q["api_p_wrong"] is not None and q["offline_p_wrong"] is not None]
    if diffs:
        m["escalation.max_p_wrong_difference"] = max(diffs)
    return m, per_query


def routing_check(ctx: PhaseContext, url: str, digest: str) -> tuple[dict, list[dict]]:
    """4A's report-split queries through the API, as 4A asked them."""
    from cogumi.phases.route import generation_settings, routing_tasks
    from cogumi.routing.outcomes import qualified_id
    from cogumi.serving.client import ServedBackend

    rows = [r for r in _read_jsonl(ctx.input_dir("4A") / "route_outcomes.jsonl")
            if r.get("split") == "report"]
    messages = {}
    for task in routing_tasks(ctx):
        for it in task.items:
            if it.malformed is None:
                messages[qualified_id(task, it.id)] = task.messages(it)
    missing = [r["id"] for r in rows if r["id"] not in messages]
    if missing:
        raise PhaseInputError(f"{ctx.input_dir('4A') / 'route_outcomes.jsonl'}: "
                              f"{len(missing)} report queries are not in [routing] queries "
                              f"({', '.join(missing[:3])}): the queries changed since 4A?")
    signals = _read_jsonl(ctx.input_dir("4B") / "signals.jsonl")
    offline_p = {s["id"]: float(s["p_wrong"]) for s in signals}
    threshold = _read_json(ctx.input_dir("4C") / "thresholds.json").get("threshold")
    settings = generation_settings(ctx)
    client = ServedBackend(url, SYSTEM, bundle_digest=digest)
    try:
        for r in rows:
            got = client.ask(messages[r["id"]], max_tokens=settings.max_new_tokens,
                             temperature=0.0, seed=ctx.seed, stop=settings.stop)
            r["api"] = got["cogumi"] if got["error"] is None else {"error": got["error"]}
    finally:
        client.close()
    m, per_query = compare_decisions(rows, offline_p, threshold)
    off4a, off4c = _metrics_of(ctx.input_dir("4A")), _metrics_of(ctx.input_dir("4C"))
    if "routing.accuracy" in off4a:
        m["routing.offline_accuracy"] = float(off4a["routing.accuracy"])
    if "operating_point.escalated_share" in off4c:
        m["escalation.offline_rate"] = float(off4c["operating_point.escalated_share"])
    return m, per_query


# ---------------------------------------------------------------------- load
def load_test(url: str, digest: str, answers: list[dict], clients: int,
              per_client: int) -> tuple[dict, list[dict]]:
    """`clients` threads, each with its own openai client, each sending `per_client`
    requests in turn, all threads at once. `answers`: the system's unloaded answers
    (ServedBackend.answers), replayed round robin."""
    from cogumi.serving.client import ServedBackend

    usable = [a for a in answers if a["error"] is None]
    if not usable:
        raise PhaseInputError("no benchmark request of the system was answered: nothing to "
                              "replay under load")
    plan = [[usable[(c * per_client + k) % len(usable)] for k in range(per_client)]
            for c in range(clients)]

    def work(c: int) -> list[dict]:
        backend = ServedBackend(url, SYSTEM, bundle_digest=digest)
        out = []
        try:
            for k, ref in enumerate(plan[c]):
                p = ref["params"]
                got = backend.ask(ref["messages"], **p)
                out.append({"client": c, "request": k, "reference": ref, **got})
        finally:
            backend.close()
        return out

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = [r for rs in pool.map(work, range(clients)) for r in rs]
    wall = time.monotonic() - t0
    sent = clients * per_client
    ok = [r for r in results if r["error"] is None]
    ids = [r["id"] for r in ok]
    local = [r for r in ok if not (r["cogumi"] or {}).get("escalated")
             and not (r["reference"]["cogumi"] or {}).get("escalated")]
    lat = sorted(r["latency_s"] for r in ok)
    tokens = sum(int(r["usage"].get("completion_tokens", 0)) for r in ok)
    m = {"load.clients": float(clients), "load.requests_per_client": float(per_client),
         "load.requests": float(sent), "load.errors": float(len(results) - len(ok)),
         "load.lost": float(sent - len(results)),
         "load.duplicated": float(len(ids) - len(set(ids))),
         "load.local_answers_compared": float(len(local)),
         "load.local_answers_differing": float(sum(
             r["text"] != r["reference"]["text"] for r in local)),
         "load.wall_s": wall, "load.completion_tokens": float(tokens),
         "load.tokens_per_s": tokens / wall if wall > 0 else math.nan}
    if lat:
        m["load.latency_p50_s"] = statistics.median(lat)
        m["load.latency_p95_s"] = _percentile(lat, 95)
    rows = [{k: v for k, v in r.items() if k != "reference"} | {
        "same_as_unloaded": r["text"] == r["reference"]["text"]} for r in results]
    return m, rows


def _percentile(sorted_values: list[float], q: float) -> float:
    import numpy as np
    return float(np.percentile(sorted_values, q))


# ---------------------------------------------------------------------- run
def bundle_modifiers(bundle: Path) -> dict[str, dict]:
    from cogumi.serving.bundle import load_bundle
    return {name: dict(m.info) for name, m in load_bundle(bundle).modifiers.items()}


def run(ctx: PhaseContext) -> dict[str, float]:
    from cogumi.evaluation import evaluate
    from cogumi.evaluation.paired import capability
    from cogumi.phases.common import eval_cache, greedy_settings
    from cogumi.phases.modifier import suite_tasks
    from cogumi.serving.app import RunningServer, create_app
    from cogumi.serving.bundle import MANIFEST, verify_bundle
    from cogumi.serving.client import ServedBackend
    from cogumi.teacher import teacher_backend

    bundle = ctx.input_dir("5A") / "bundle"
    problems = verify_bundle(bundle, load=False)
    if problems:
        raise PhaseInputError(f"{bundle}: does not verify: {problems[0]}"
                              + (f" (and {len(problems) - 1} more)" if len(problems) > 1
                                 else ""))
    if ctx.profile.teacher is None:
        raise PhaseInputError(f"{ctx.profile.source_file}: no [teacher]: 5B compares the "
                              f"system with the teacher on the same items")
    digest = sha256_file(bundle / MANIFEST)
    modifiers = bundle_modifiers(bundle)
    tasks = suite_tasks(ctx)
    settings = greedy_settings(ctx)
    limit = ctx.profile.eval.limit
    out = ctx.out_dir
    metrics: dict[str, float] = {}
    with teacher_backend(ctx.profile.teacher, cache_dir=ctx.runs_dir / ".teacher-cache",
                         log_dir=ctx.work_dir) as teacher:
        # The teacher first: a bundle's escalated answers then come from a teacher whose
        # answers to the same benchmark items are already measured.
        evaluate(teacher, tasks, settings, limit=limit, loglikelihood=False,
                 cache_dir=eval_cache(ctx)).write(out / "eval_teacher")
        with RunningServer(create_app(bundle, teacher_url=teacher.base_url)) as srv:
            url = f"{srv.url}/v1"
            backends = {}
            for model, folder in ((SYSTEM, "eval_system"), (LOCAL, "eval_local"),
                                  (BASE, "eval_base")):
                backend = backends[model] = ServedBackend(url, model, bundle_digest=digest)
                # No cache: every answer comes from the server now.
                evaluate(backend, tasks, settings, limit=limit,
                         loglikelihood=False).write(out / folder)
                backend.close()
            errors = sum(a["error"] is not None for b in backends.values() for a in b.answers)
            answered = backends[SYSTEM].answers
            metrics["benchmarks.api_requests"] = float(sum(len(b.answers)
                                                           for b in backends.values()))
            metrics["benchmarks.api_errors"] = float(errors)
            metrics["benchmarks.escalated_share"] = (sum(
                bool((a["cogumi"] or {}).get("escalated")) for a in answered)
                / len(answered)) if answered else math.nan
            route_m, per_query = routing_check(ctx, url, digest)
            load_m, load_rows = load_test(url, digest, _with_params(answered, settings),
                                          LOAD_CLIENTS, LOAD_REQUESTS_PER_CLIENT)
    q_m, q_rows = quality(out / "eval_system", out / "eval_base", out / "eval_teacher")
    # The claim on the system's own answers (routed, never escalated): with escalation the
    # system answers what the teacher answers wherever it escalates, and "beats the teacher"
    # would hold by sending it everything.
    _, local_rows = quality(out / "eval_local", out / "eval_base", out / "eval_teacher")
    c_m, c_rows = claim(local_rows, modifiers)
    for row in local_rows:
        c_m[f"local.{row['score']}"] = row["system"]
    # A claim means something only where the system's own score does: above chance.
    able, _ = capability(out / "eval_local")
    for row in c_rows:
        if "score" in row:
            c_m[f"claim.{row['domain']}.system_lower95_above_chance"] = \
                able[f"{row['score']}.lower95_above_chance"]
    sizes = _read_json(ctx.input_dir("5A") / "sizes.json")
    metrics.update(q_m)
    metrics.update(c_m)
    metrics.update(route_m)
    metrics.update(load_m)
    metrics["system.size_mb"] = float(sizes["download_mb"])
    if errors:
        first = next(a["error"] for b in backends.values() for a in b.answers if a["error"])
        ctx.notes.append(f"{errors} benchmark requests failed through the API; first: {first}")
    with open(out / "routing_api.jsonl", "w") as f:
        for q in per_query:
            f.write(json.dumps(q, sort_keys=True) + "\n")
    with open(out / "load.jsonl", "w") as f:
        for r in load_rows:
            f.write(json.dumps(r, sort_keys=True, default=str) + "\n")
    write_json(out / "validation.json", {
        "bundle_manifest_sha256": digest, "teacher": ctx.profile.teacher.model,
        "quality": q_rows, "claim": c_rows, "size_mb": sizes,
        "load": {"clients": LOAD_CLIENTS, "requests_per_client": LOAD_REQUESTS_PER_CLIENT},
        "metrics": metrics})
    _report(ctx, metrics, q_rows, c_rows, limit)
    return metrics


def _with_params(answers: list[dict], settings) -> list[dict]:
    """The system's benchmark requests with the parameters they were sent with (greedy,
    the suite's budget and stop strings)."""
    return [{**a, "params": {"max_tokens": settings.max_new_tokens, "temperature": 0.0,
                             "stop": tuple(settings.stop)}} for a in answers]


def _f(v, fmt=".3f") -> str:
    return "missing" if v is None or (isinstance(v, float) and math.isnan(v)) else \
        format(v, fmt)


def _report(ctx: PhaseContext, m: dict, q_rows: list[dict], c_rows: list[dict],
            limit: int | None) -> None:
    lines = [f"`cogumi serve` on 5A's bundle, asked through /v1/chat/completions with the "
             f"openai client; teacher: {ctx.profile.teacher.model}. Greedy, the first "
             f"{limit} items of each task." if limit else "", "",
             "| task | items | system | base alone | teacher | system - base [95%] | "
             "system - teacher [95%] |", "|---|---|---|---|---|---|---|"]
    for r in q_rows:
        b, t = r["vs_base"], r["vs_teacher"]
        lines.append(f"| {r['score']} | {r['n']} | {r['system']:.3f} | {r['base']:.3f} | "
                     f"{r['teacher']:.3f} | {b['point']:+.3f} [{b['lower']:+.3f}, "
                     f"{b['upper']:+.3f}] | {t['point']:+.3f} [{t['lower']:+.3f}, "
                     f"{t['upper']:+.3f}] |")
    lines += ["", "The seed's claim, \"beats GPT-4 on 3 domains\" (system >= teacher, shown by "
              "the paired interval's lower bound >= 0):", "",
              "| domain | benchmark | system | teacher | system - teacher [95%] | holds |",
              "|---|---|---|---|---|---|"]
    for c in c_rows:
        if "point" not in c:
            lines.append(f"| {c['domain']} | {c['task'] or '—'} | — | — | — | no: "
                         f"{c['why']} |")
            continue
        lines.append(f"| {c['domain']} | {c['score']} | {c['system']:.3f} | "
                     f"{c['teacher']:.3f} | {c['point']:+.3f} [{c['lower']:+.3f}, "
                     f"{c['upper']:+.3f}] | {'yes' if c['lower'] >= 0 else 'no'} |")
    lines += ["", f"Routing through the API on {_f(m.get('routing.queries'), '.0f')} report-split "
              f"queries of 4A: accuracy {_f(m.get('routing.api_accuracy'))} (4A offline: "
              f"{_f(m.get('routing.offline_accuracy'))}), "
              f"{_f(m.get('routing.decisions_differing_from_4a'), '.0f')} decisions differ from "
              f"4A's router. Escalation rate {_f(m.get('escalation.api_rate'))} (4C offline: "
              f"{_f(m.get('escalation.offline_rate'))}), "
              f"{_f(m.get('escalation.decisions_differing_from_4c'), '.0f')} decisions differ; "
              f"largest p_wrong difference {_f(m.get('escalation.max_p_wrong_difference'), '.2e')}.",
              "", f"Load: {LOAD_CLIENTS} clients x {LOAD_REQUESTS_PER_CLIENT} requests at once: "
              f"{_f(m['load.errors'], '.0f')} errors, {_f(m['load.lost'], '.0f')} lost, "
              f"{_f(m['load.duplicated'], '.0f')} duplicated, "
              f"{_f(m['load.local_answers_differing'], '.0f')} of "
              f"{_f(m['load.local_answers_compared'], '.0f')} local answers differ from the "
              f"same request without load; latency p50 {_f(m.get('load.latency_p50_s'))} s, "
              f"p95 {_f(m.get('load.latency_p95_s'))} s; {_f(m['load.tokens_per_s'], '.1f')} "
              f"completion tokens/s.", "",
              f"Size (5A's download): {m['system.size_mb']:.3f} MB; benchmark answers "
              f"escalated: {_f(m.get('benchmarks.escalated_share'))}."]
    ctx.write_report("\n".join(lines))
