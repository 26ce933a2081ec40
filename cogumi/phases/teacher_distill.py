"""Phase 1C: teacher distillation on clustered failures, as the seed describes it.

1. Failure analysis: the 1B model answers a pool of prompts disjoint from every evaluation
   set ([distill] pools: phase 0's math records with a stated answer, train-split code
   tasks, ...), greedy, each answer judged by the evaluation suite's verifier. The pool is
   split by id (IdSplit: heldout_fraction, split_salt): the *fit* side is clustered and
   distilled on, the *held-out* side only measures.
2. Cluster and label: the fit side's failures, embedded by the 1B model itself (its last
   hidden state, mean-pooled over the prompt as its chat template renders it), clustered by
   k-means with k chosen by silhouette over the declared range
   (cogumi.distillation.clusters); each cluster named by the teacher from its members'
   prompts and the student's wrong answers (never a reference answer), with its size, its
   TF-IDF top terms and examples in the report.
3. Targeted distillation: for each cluster, the fit-side prompts nearest it (its failures
   first) are asked of the profile's [teacher] through the OpenAI-compatible backend
   (cogumi.teacher); each answer is kept only when the verifier accepts it against the
   item's reference, which the teacher never sees (cogumi.distillation). Every request is
   cached by content under runs/<profile>/.teacher-cache (a rerun sends none) and counted
   against [distill] budget_usd / budget_tokens at [teacher].price_usd_per_mtok; the phase
   stops, in one line, before a request would exceed the budget.
4. Train the 1B adapter further on the kept examples, and re-evaluate: the held-out pool
   items of each cluster (paired, before and after), the suite against 1B (paired), and the
   student's suite score over the teacher's on the same items (teacher_relative).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np

from cogumi.artifacts import atomic_write_text
from cogumi.distillation import (
    Budget,
    BudgetedTeacher,
    BudgetExceeded,
    ExampleVerifier,
    ask_teacher,
    check_for_item,
    generate_examples,
    import_batch_output,
    write_batch_file,
)
from cogumi.distillation.clusters import (
    choose_clusters,
    mean_pooled_embeddings,
    normalise,
    top_terms,
)
from cogumi.evaluation import GenerationSettings, Task, evaluate
from cogumi.evaluation.paired import SUITE, item_scores
from cogumi.evaluation.splits import IdSplit, prompt_text, split_by_id
from cogumi.phases.common import (
    curated_records,
    eval_cache,
    eval_tasks,
    evaluate_model,
    generation_backend,
    greedy_settings,
    judge_against_input,
    load_with_trainable_adapter,
    profile_task,
    refuse_evaluation_items,
    teacher_cache,
    train_adapter_further,
)
from cogumi.runner import PhaseContext, PhaseInputError
from cogumi.stats import exact_mcnemar

LABEL_MAX_TOKENS = 32


def pool_tasks(ctx: PhaseContext) -> list[Task]:
    """[distill] pools as tasks named pool_<task> (pool_<task>_<n> when a task repeats),
    refused if any item is an evaluation item (by id or text)."""
    dc = ctx.profile.distill
    tasks: list[Task] = []
    seen: Counter = Counter()
    for n, pool in enumerate(dc.pools):
        seen[pool.task] += 1
        name = f"pool_{pool.task}" + (f"_{seen[pool.task]}" if seen[pool.task] > 1 else "")
        if pool.source == "curated":
            from cogumi.phases.self_consistency import math_training_task
            task = math_training_task(curated_records(ctx), pool.limit or 10**9,
                                      "runs/0/curated.jsonl")
            task = replace(task, name=name)
        else:
            task = profile_task(ctx, pool.task, pool.source, f"[distill] pools[{n}].source",
                                name=name)
            if pool.limit is not None and len(task.items) > pool.limit:
                ctx.notes.append(f"reduced pool: the first {pool.limit} of {len(task.items)} "
                                 f"items of {name} ([distill] pools[{n}].limit)")
                task = replace(task, items=task.items[:pool.limit], digest=hashlib.sha256(
                    f"{task.digest}:first {pool.limit}".encode()).hexdigest())
        task = replace(task, items=[it for it in task.items if it.malformed is None])
        tasks.append(task)
    refuse_evaluation_items(ctx, ((it.id, prompt_text(it)) for t in tasks for it in t.items),
                            f"{ctx.profile.source_file}: [distill] pools")
    return tasks


def _sub_task(task: Task, items, side: str) -> Task:
    ids = ",".join(it.id for it in items)
    return replace(task, items=list(items), digest=hashlib.sha256(
        f"{task.digest}:{side}:{ids}".encode()).hexdigest())


def _user_and_system(task: Task, item) -> tuple[str, str | None]:
    msgs = task.messages(item)
    system = next((m["content"] for m in msgs if m["role"] == "system"), None)
    user = next(m["content"] for m in msgs if m["role"] == "user")
    return user, system


def _first_line(text: str, limit: int = 80) -> str:
    for line in text.splitlines():
        line = line.strip().strip("*#\"'`").strip()
        if line:
            return line[:limit]
    return ""


def run(ctx: PhaseContext) -> dict:
    profile = ctx.profile
    dc = profile.distill
    if dc is None:
        raise PhaseInputError(f"{profile.source_file}: missing table [distill]; phase 1C needs it")
    if profile.teacher is None:
        raise PhaseInputError(f"{profile.source_file}: missing table [teacher]; phase 1C "
                              f"distils from the teacher it names")
    from cogumi.teacher import teacher_backend

    loaded = load_with_trainable_adapter(ctx, "1B")
    tok = loaded.tokenizer
    greedy = greedy_settings(ctx)

    # 1. Failure analysis on the pool, split by id into fit and held-out sides.
    pools = pool_tasks(ctx)
    split = IdSplit(dc.heldout_fraction, dc.split_salt)
    sides = {}
    for t in pools:
        fit_items, held = split_by_id(t.items, split)
        sides[t.name] = (fit_items, held)
    ctx.console.print("1C.1 failure analysis: " + ", ".join(
        f"{len(t.items)} {t.name}" for t in pools))
    with generation_backend(ctx, loaded) as backend:
        before = evaluate(backend, pools, greedy, cache_dir=eval_cache(ctx))
    before.write(ctx.out_dir / "pool_before")
    correct_before = {(r["task"], r["item_id"]): bool(r["verdicts"] and r["verdicts"][0])
                      for r in before.records}
    answer_of = {(r["task"], r["item_id"]): (r["generations"] or [""])[0] for r in before.records}
    items = [(t, it, "heldout" if split.is_heldout(it.id) else "fit")
             for t in pools for it in t.items]

    # 2. Embed every pool prompt with the model itself; cluster the fit side's failures.
    texts = [tok.apply_chat_template(t.messages(it), tokenize=False, add_generation_prompt=True)
             if tok.chat_template else prompt_text(it) for t, it, _ in items]
    ctx.console.print(f"1C.2 embedding {len(texts)} pool prompts (mean-pooled last hidden state)")
    emb = mean_pooled_embeddings(loaded.model, tok, texts, dc.embed_batch_size,
                                 loaded.add_bos, profile.hardware.device)
    fail_rows = [i for i, (t, it, side) in enumerate(items)
                 if side == "fit" and not correct_before[(t.name, it.id)]]
    clustering = choose_clusters(emb[fail_rows], dc.clusters_min, dc.clusters_max, ctx.seed)
    k = clustering.k
    if k == 0:
        raise PhaseInputError("1C.1 the 1B model failed no fit-side pool item: nothing to "
                              "cluster or distil (see pool_before/)")
    assigned, distance = clustering.predict(emb)
    z = normalise(emb)
    for j, row in enumerate(fail_rows):  # k-means' own labels for the points it was fit on
        assigned[row] = clustering.labels[j]
        distance[row] = float(np.linalg.norm(z[row] - clustering.centroids[assigned[row]]))
    fail_texts = [prompt_text(items[i][1]) for i in fail_rows]
    terms = top_terms(fail_texts, clustering.labels, k)
    ctx.console.print(f"1C.2 {len(fail_rows)} fit-side failures in {k} clusters "
                      f"({clustering.criterion})")

    cfg_t = profile.teacher
    prices = tuple(cfg_t.price_usd_per_mtok)
    budget = Budget(max_usd=dc.budget_usd, max_tokens=dc.budget_tokens)
    cache = teacher_cache(ctx)
    members = defaultdict(list)  # cluster -> fit-side failure rows
    for row in fail_rows:
        members[int(assigned[row])].append(row)

    # 3. Label each cluster, then targeted examples, then the teacher on the suite.
    label_reqs = []
    for c in range(k):
        shown = sorted(members[c], key=lambda r: distance[r])[:dc.label_members]
        listing = "\n\n".join(
            f"Problem {n + 1}:\n{prompt_text(items[r][1])[:600]}\nStudent's answer (wrong):\n"
            f"{answer_of[(items[r][0].name, items[r][1].id)][:300]}"
            for n, r in enumerate(shown))
        label_reqs.append({"id": f"label:{c}", "domain": "label", "check": {"kind": "label"},
                           "max_tokens": LABEL_MAX_TOKENS, "prompt": (
            "A student model got each of these problems wrong. Name the skill or problem "
            "type they share in one short phrase (at most 8 words). Reply with the phrase "
            f"only.\n\n{listing}")})
    example_reqs, cluster_of_req = [], {}
    for c in range(k):
        rows = [i for i, (_, _, side) in enumerate(items) if side == "fit" and assigned[i] == c]
        rows.sort(key=lambda i: (correct_before[(items[i][0].name, items[i][1].id)],
                                 distance[i]))
        for i in rows[:dc.examples_per_cluster]:
            t, it, _ = items[i]
            user, system = _user_and_system(t, it)
            for s in range(dc.teacher_samples):
                rid = f"{t.name}:{it.id}:{s}"
                req = {"id": rid, "domain": t.kind, "prompt": user, "instruction": user,
                       "check": check_for_item(t, it), "seed": ctx.seed + s}
                if system:
                    req["system"] = system
                example_reqs.append(req)
                cluster_of_req[rid] = c
    defaults = {"max_tokens": dc.max_tokens, "temperature": dc.teacher_temperature,
                "seed": ctx.seed}
    if dc.batch_file:
        write_batch_file(example_reqs, ctx.out_dir / "teacher_batch.jsonl", model=cfg_t.model,
                         defaults=defaults)
    tasks = eval_tasks(ctx)
    teacher_settings = GenerationSettings(max_new_tokens=profile.eval.max_new_tokens,
                                          temperature=0.0, seed=ctx.seed, samples=1)
    ctx.console.print(f"1C.3 teacher {cfg_t.model}: {k} labels, {len(example_reqs)} example "
                      f"requests, the evaluation suite")
    stages = {}
    with teacher_backend(cfg_t, log_dir=ctx.work_dir) as teacher:
        labels_got = ask_teacher(teacher, label_reqs, cache_dir=cache, budget=budget,
                                 prices=prices, defaults={"temperature": 0.0})
        _stop_if_budget(labels_got.budget_stopped, budget, "the cluster labels")
        stages["labels"] = labels_got.usage
        if dc.batch_output:
            batch = import_batch_output(
                ctx.resolve(dc.batch_output), example_reqs, cache_dir=cache,
                model_digest=teacher.identity()["model_digest"],
                batch_prices=tuple(dc.batch_price_usd_per_mtok), defaults=defaults)
            # Already paid for: counted against the budget before anything live is sent.
            budget.settle(0, 0.0, batch["prompt_tokens"] + batch["completion_tokens"],
                          batch["cost_usd"])
            stages["batch"] = {"sent": 0, "cache_hits": 0, **batch,
                               "failed": len(batch["failed"]), "missing": len(batch["missing"])}
        with ctx.progress() as progress:
            bar = progress.add_task("teacher examples", total=len(example_reqs))
            result = generate_examples(
                teacher, example_reqs, verifier=ExampleVerifier(), cache_dir=cache,
                budget=budget, prices=prices, defaults=defaults,
                progress=lambda done, total: progress.update(bar, completed=done))
        stages["examples"] = result.usage
        _write_jsonl(ctx.out_dir / "teacher_examples.jsonl",
                     [{**e, "cluster": cluster_of_req[e["id"]]} for e in result.kept])
        _write_jsonl(ctx.out_dir / "teacher_rejected.jsonl",
                     [{**e, "cluster": cluster_of_req[e["id"]]}
                      for e in result.rejected + result.not_sent])
        _stop_if_budget(result.budget_stopped, budget,
                        f"the examples ({len(result.not_sent)} requests not sent)")
        scored = BudgetedTeacher(teacher, cache_dir=cache, budget=budget, prices=prices)
        try:
            teacher_eval = evaluate(scored, tasks, teacher_settings, limit=profile.eval.limit,
                                    cache_dir=eval_cache(ctx))
        except BudgetExceeded as e:
            raise PhaseInputError(f"1C.3 {e}") from None
        stages["teacher_eval"] = {**dict(scored.usage), "failures": dict(scored.failures)}
    teacher_eval.write(ctx.out_dir / "teacher_eval")
    labels = {}
    for c in range(k):
        got = labels_got.answers.get(f"label:{c}")
        labels[c] = _first_line(got["text"]) if got else ""
        labels[c] = labels[c] or f"(no label: {labels_got.errors.get(f'label:{c}', 'empty')})"
    if not result.kept:
        raise PhaseInputError(f"1C.3 the verifier accepted none of the teacher's "
                              f"{len(example_reqs)} answers (reasons: {result.reasons()}; see "
                              f"teacher_rejected.jsonl)")

    # 4. Train the 1B adapter further on the kept examples; re-evaluate.
    encoded = train_adapter_further(ctx, loaded, result.kept, epochs=dc.epochs,
                                    learning_rate=dc.learning_rate, step="1C.4",
                                    what="teacher examples",
                                    plot_title=f"1C teacher distillation — {profile.name}")

    held_tasks = [_sub_task(t, sides[t.name][1], "heldout") for t in pools if sides[t.name][1]]
    with generation_backend(ctx, loaded) as backend:
        after = evaluate(backend, held_tasks, greedy, cache_dir=eval_cache(ctx))
    after.write(ctx.out_dir / "pool_after")
    correct_after = {(r["task"], r["item_id"]): bool(r["verdicts"] and r["verdicts"][0])
                     for r in after.records}
    greedy_after = evaluate_model(ctx, loaded, ctx.out_dir / "eval_after")
    for note in before.limits() + after.limits() + teacher_eval.limits():
        if note not in ctx.notes:
            ctx.notes.append(note)

    # Records: every pool item, where it went, and what became of it.
    pool_rows, clustered = [], set(fail_rows)
    for i, (t, it, side) in enumerate(items):
        key_ = (t.name, it.id)
        pool_rows.append({"task": t.name, "item_id": it.id, "side": side,
                          "failed_before": not correct_before[key_],
                          "failed_after": (None if side == "fit" else not correct_after[key_]),
                          "cluster": int(assigned[i]), "distance": float(distance[i]),
                          "clustered": i in clustered})
    _write_jsonl(ctx.out_dir / "failure_pool.jsonl", pool_rows)

    metrics: dict[str, float] = {
        "failure_clusters": float(k),
        "failure_pool.items": float(len(items)),
        "failure_pool.fit_items": float(sum(1 for *_, s in items if s == "fit")),
        "failure_pool.heldout_items": float(sum(1 for *_, s in items if s == "heldout")),
        "failure_pool.fit_failures": float(len(fail_rows)),
        "failure_pool.failure_rate_before": float(np.mean([not v for v in
                                                           correct_before.values()])),
        "clusters.silhouette": clustering.silhouette.get(k, float("nan")),
        "teacher_examples": float(len(result.kept)),
        "teacher.requests": float(len(example_reqs)),
        "teacher.rejected": float(len(result.rejected)),
    }
    for stage, u in stages.items():
        for name in ("sent", "cache_hits", "prompt_tokens", "completion_tokens", "cost_usd"):
            metrics[f"teacher.{stage}.{name}"] = float(u.get(name, 0))
    for name in ("sent", "cache_hits", "prompt_tokens", "completion_tokens", "cost_usd"):
        metrics[f"teacher.{name}"] = float(sum(u.get(name, 0) for u in stages.values()))

    cluster_rows, drops = [], []
    for c in range(k):
        held = [(items[i][0].name, items[i][1].id) for i in range(len(items))
                if items[i][2] == "heldout" and assigned[i] == c]
        b = {f"{t}/{i}": float(correct_before[(t, i)]) for t, i in held}
        a = {f"{t}/{i}": float(correct_after[(t, i)]) for t, i in held}
        change = exact_mcnemar(b, a)  # a gain in the share right is a fall in failure rate
        fr_b = 1 - np.mean(list(b.values())) if b else float("nan")
        fr_a = 1 - np.mean(list(a.values())) if a else float("nan")
        metrics[f"cluster.{c}.size"] = float(len(members[c]))
        metrics[f"cluster.{c}.heldout_items"] = float(len(held))
        metrics[f"cluster.{c}.failure_rate_before"] = float(fr_b)
        metrics[f"cluster.{c}.failure_rate_after"] = float(fr_a)
        metrics[f"cluster.{c}.failure_drop"] = change.point
        metrics[f"cluster.{c}.failure_drop_lower"] = change.lower
        metrics[f"cluster.{c}.teacher_examples"] = float(
            sum(1 for e in result.kept if cluster_of_req[e["id"]] == c))
        drops.append(change.lower)
        cluster_rows.append({
            "cluster": c, "label": labels[c], "size": len(members[c]), "top_terms": terms[c],
            "examples": [prompt_text(items[r][1])[:200] for r in
                         sorted(members[c], key=lambda r: distance[r])[:3]],
            "teacher_requests": sum(1 for v in cluster_of_req.values() if v == c),
            "teacher_examples": int(metrics[f"cluster.{c}.teacher_examples"]),
            "heldout_items": len(held), "failure_rate_before": fr_b, "failure_rate_after": fr_a,
            "failure_drop": change.to_dict()})
    # Every cluster must fall: the smallest lower bound (NaN when a cluster has no held-out
    # item, which is no evidence and fails its gate).
    metrics["clusters.min_failure_drop_lower"] = (
        float("nan") if any(math.isnan(d) for d in drops) else min(drops))

    relative = teacher_relative(ctx.out_dir / "eval_after", ctx.out_dir / "teacher_eval")
    metrics.update(relative)
    metrics.update(greedy_after)
    metrics.update(judge_against_input(ctx, ctx.input_dir("1B") / "eval_after",
                                       ctx.out_dir / "eval_after", "1B"))

    atomic_write_text(ctx.out_dir / "clusters.json", json.dumps({
        "criterion": clustering.criterion, "declared_range": list(clustering.declared),
        "searched_range": list(clustering.searched) if clustering.searched else None,
        "silhouette": {str(kk): v for kk, v in clustering.silhouette.items()},
        "embedding": "the 1B model's last hidden state, mean-pooled over the prompt as its "
                     "chat template renders it, L2-normalised",
        "clusters": cluster_rows}, indent=2, default=float))
    atomic_write_text(ctx.out_dir / "teacher_usage.json", json.dumps({
        "teacher": cfg_t.model, "prices_usd_per_mtok": list(prices), "stages": stages,
        "budget": budget.to_dict(), "reject_reasons": result.reasons()}, indent=2))
    ctx.notes.append(f"1C.3 teacher examples: {len(result.kept)} kept of {len(example_reqs)} "
                     f"requests; rejected by reason {result.reasons()}; excluded at encoding: "
                     f"{dict(encoded.excluded)}")
    ctx.notes.append("the teacher answers fit-side pool prompts nearest each cluster (its "
                     "failures first); it sees the prompt the student sees, never the reference "
                     "answer, which only the verifier reads")
    ctx.write_report(_report(ctx, clustering, cluster_rows, stages, budget, result, relative,
                             metrics))
    return metrics


def teacher_relative(student_dir: Path, teacher_dir: Path) -> dict[str, float]:
    """The student's score over the teacher's on the same items: per suite task, items the
    student gets right over items the teacher gets right; pooled over every task."""
    s, t = item_scores(student_dir), item_scores(teacher_dir)
    out, num, den = {}, 0.0, 0.0
    for task in SUITE.values():
        if task not in s or task not in t:
            continue
        if set(s[task]) != set(t[task]):
            raise ValueError(f"teacher_relative: {task} has different items for the student "
                             f"and the teacher")
        ids = sorted(s[task])
        a, b = sum(s[task][i] for i in ids), sum(t[task][i] for i in ids)
        out[f"{task}.teacher_score"] = b / len(ids) if ids else float("nan")
        out[f"{task}.teacher_relative"] = a / b if b else float("nan")
        num, den = num + a, den + b
    out["teacher_relative"] = num / den if den else float("nan")
    return out


def _stop_if_budget(stopped: bool, budget: Budget, what: str) -> None:
    if stopped:
        raise PhaseInputError(
            f"1C.3 the teacher budget ([distill] budget_usd {budget.max_usd}, budget_tokens "
            f"{budget.max_tokens}) stopped {what} before it was exceeded: spent "
            f"${budget.spent_usd:.4f}, {budget.spent_tokens} tokens; answers so far are cached")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=float) + "\n"
                                    for r in rows))


def _fmt(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _report(ctx, clustering, rows, stages, budget, result, relative, metrics) -> str:
    lines = [f"### Failure clusters\n\n{int(metrics['failure_pool.fit_failures'])} failures of "
             f"the 1B model on the fit side of the pool ({int(metrics['failure_pool.fit_items'])}"
             f" items; {int(metrics['failure_pool.heldout_items'])} held out by id). Number of "
             f"clusters: {clustering.criterion}. Silhouette by k: "
             + (", ".join(f"{k}: {v:.3f}" for k, v in clustering.silhouette.items()) or "none")
             + ".\n",
             "| cluster | teacher's label | size | top terms (TF-IDF) | teacher examples kept | "
             "held-out items | failure rate before → after | drop, 95% interval |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        d = r["failure_drop"]
        lines.append(f"| {r['cluster']} | {r['label']} | {r['size']} | "
                     f"{', '.join(r['top_terms']) or '—'} | {r['teacher_examples']} of "
                     f"{r['teacher_requests']} | {r['heldout_items']} | "
                     f"{_fmt(r['failure_rate_before'])} → {_fmt(r['failure_rate_after'])} | "
                     f"{_fmt(d['point'])} [{_fmt(d['lower'])}, {_fmt(d['upper'])}] |")
    lines.append("\nExamples (the members nearest each cluster's centre):\n")
    for r in rows:
        shown = " / ".join(f"`{e.splitlines()[0][:100]}`" for e in r["examples"] if e.strip())
        lines.append(f"- cluster {r['cluster']} ({r['label']}): {shown}")
    lines.append("\n### Teacher cost\n\n| stage | requests sent | cache hits | prompt tokens | "
                 "completion tokens | cost (USD) | failed attempts by reason |\n"
                 "| --- | --- | --- | --- | --- | --- | --- |")
    for stage, u in stages.items():
        lines.append(f"| {stage} | {u.get('sent', 0)} | {u.get('cache_hits', 0)} | "
                     f"{u.get('prompt_tokens', 0)} | {u.get('completion_tokens', 0)} | "
                     f"{u.get('cost_usd', 0.0):.4f} | {u.get('failures') or '—'} |")
    lines.append(f"\nBudget: {budget.to_dict()}. Examples kept {len(result.kept)}, rejected "
                 f"{len(result.rejected)} ({result.reasons()}).")
    lines.append("\n### Student over teacher, same items\n\n| task | teacher score | "
                 "student / teacher |\n| --- | --- | --- |")
    for key, v in relative.items():
        if key.endswith(".teacher_relative"):
            task = key.rsplit(".", 1)[0]
            lines.append(f"| {task} | {_fmt(relative[f'{task}.teacher_score'])} | {_fmt(v)} |")
    lines.append(f"| pooled | | {_fmt(relative['teacher_relative'])} |")
    return "\n".join(lines)
