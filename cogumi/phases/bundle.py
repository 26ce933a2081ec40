"""Phase 5A: the deployable bundle (cogumi/serving/bundle.py's layout), its model card,
its size against the seed's 668 MB, `cogumi bundle verify`, and a smoke test of
`cogumi serve` on it through the official openai client.

Inputs (the artifact contracts): 2C's model.gguf (the shipped base), 2D's model.gguf.zst,
each modifier phase's adapter.gguf and modifier.json (3A, 3B, 3C), 4A's router/, 4B's
escalation.json, 4C's thresholds.json; the profile's [teacher] becomes teacher.json
(an environment variable name for a key, never a key).
"""

from __future__ import annotations

import json
from pathlib import Path

from cogumi.artifacts import write_json
from cogumi.gates import gate_mark
from cogumi.runner import PhaseContext, PhaseInputError
from cogumi.serving.bundle import MANIFEST, SYSTEM_MODEL, verify_bundle, write_bundle

MB = 1_000_000
MODIFIER_PHASES = ("3A", "3B", "3C")
SEED_SIZES_MB = {"base": 520, "modifiers": 3 * 50, "system": 668}
"""The seed's figures (a 520 MB base, 3 x 40-50 MB modifiers, 668 MB in all)."""


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise PhaseInputError(f"{path}: missing ({what})")
    return path


def _modifiers(ctx: PhaseContext, base_sha: str) -> dict[str, tuple[Path, dict]]:
    """Each modifier phase's adapter.gguf and modifier.json, checked against each other and
    against the base they are bundled with. A phase that ships no modifier.json gives no
    route (4A's rule, so the router and the bundle agree), and the report says so."""
    from cogumi.artifacts import sha256_file
    out = {}
    for pid in MODIFIER_PHASES:
        folder = ctx.input_dir(pid)
        info_path = folder / "modifier.json"
        if not info_path.is_file():
            ctx.notes.append(f"phase {pid} ships no modifier ({info_path.name} absent): "
                             f"no route in the bundle")
            continue
        try:
            info = json.loads(info_path.read_text())
        except json.JSONDecodeError as e:
            raise PhaseInputError(f"{info_path}: not JSON (line {e.lineno}: {e.msg})") from None
        name = info.get("name")
        if not isinstance(name, str) or not name:
            raise PhaseInputError(f"{info_path}: key 'name' is missing")
        if name in out:
            raise PhaseInputError(f"{info_path}: key 'name' {name!r} is taken")
        adapter = _need(folder / "adapter.gguf", f"phase {pid}'s GGUF LoRA")
        want = info.get("adapter_gguf_sha256")
        if want is not None and sha256_file(adapter) != want:
            raise PhaseInputError(f"{info_path}: key 'adapter_gguf_sha256' does not match "
                                  f"{adapter}")
        if info.get("base_gguf_sha256") not in (None, base_sha):
            raise PhaseInputError(f"{info_path}: key 'base_gguf_sha256' is not 2C's "
                                  f"model.gguf (the adapter was made for another base)")
        out[name] = (adapter, info)
    return out


def teacher_settings(ctx: PhaseContext) -> dict:
    t = ctx.profile.teacher
    if t is None:
        return {}
    return {"source": t.source, "model": t.model, "base_url": t.base_url,
            "api_key_env": t.api_key_env, "timeout_s": t.timeout_s,
            "served_gguf": t.parts or getattr(t, "path", None)}


def size_table(bundle: Path) -> dict:
    """What is shipped, by part, in MB: the download counts the packed base, not both."""
    files = json.loads((bundle / MANIFEST).read_text())["files"]
    parts = {"base (model.gguf.zst)": 0, "base unpacked (model.gguf)": 0, "modifiers": 0,
             "router": 0, "escalation, threshold, teacher, card": 0}
    for rel, entry in files.items():
        key = ("base (model.gguf.zst)" if rel == "model.gguf.zst" else
               "base unpacked (model.gguf)" if rel == "model.gguf" else
               "modifiers" if rel.startswith("modifiers/") else
               "router" if rel.startswith("router/") else "escalation, threshold, teacher, card")
        parts[key] += entry["bytes"]
    mb = {k: v / MB for k, v in parts.items()}
    download = sum(v for k, v in mb.items() if k != "base unpacked (model.gguf)")
    return {"parts_mb": mb, "download_mb": download, "folder_mb": sum(mb.values()),
            "seed_mb": SEED_SIZES_MB}


def gate_runs(runs_dir: Path, phase_ids: list[str]) -> list[dict]:
    """Each phase's latest gate run from the ledger (runs/<profile>/ledger.jsonl, as
    cogumi.summary reads it), when it judged the artifact on disk now (its manifest's
    sha256): {"phase", "state", "gates": [...]}; "state" says why a phase has no gates."""
    from cogumi import ledger
    from cogumi.artifacts import MANIFEST as PHASE_MANIFEST
    out = []
    for pid in phase_ids:
        folder = runs_dir / pid
        entry = ledger.latest(runs_dir, pid)
        if not (folder / PHASE_MANIFEST).is_file():
            out.append({"phase": pid, "state": "no artifact in this run", "gates": []})
        elif entry is None or entry.get("manifest_sha256") != ledger.manifest_digest(folder):
            out.append({"phase": pid, "state": "no gate run of the artifact in this run",
                        "gates": []})
        else:
            state = "signed off" if entry.get("passed") else "gates failed"
            if entry.get("built_on_failed_inputs"):
                state += " (built on failed phase " + ", ".join(
                    entry["built_on_failed_inputs"]) + ")"
            out.append({"phase": pid, "state": state, "gated_at": entry.get("at"),
                        "gates": [{k: g.get(k) for k in ("metric", "op", "threshold",
                                                         "value", "passed", "waived", "claim")}
                                  for g in entry.get("gates", [])]})
    return out


def _verdict(g: dict) -> str:
    return gate_mark(g)


def _num(v) -> str:
    return "missing" if v is None else f"{v:.4g}" if isinstance(v, int | float) else str(v)


def gates_markdown(runs: list[dict]) -> list[str]:
    lines = ["| phase | state | gates passed |", "|---|---|---:|"]
    for r in runs:
        passed = sum(bool(g.get("passed")) for g in r["gates"])
        count = f"{passed}/{len(r['gates'])}" if r["gates"] else "—"
        lines.append(f"| {r['phase']} | {r['state']} | {count} |")
    lines.append("")
    for r in runs:
        if not r["gates"]:
            continue
        lines += [f"### {r['phase']}: {r['state']}", "",
                  "| gate | threshold | value | verdict |", "|---|---|---:|---|"]
        lines += [f"| {g['metric']} | {g['op']} {_num(g['threshold'])} | {_num(g['value'])} | "
                  f"{_verdict(g)} |" for g in r["gates"]]
        lines.append("")
    return lines


def model_card(ctx: PhaseContext, modifiers: dict, sizes: dict, results: list[dict],
               runs: list[dict]) -> str:
    import yaml

    profile = ctx.profile
    base_model = profile.model.hub_id or profile.model.path or profile.model.parts or \
        profile.model.package
    front = {"license": "other", "base_model": base_model, "library_name": "llama.cpp",
             "tags": ["gguf", "lora", "llama.cpp", "cogumi", "routing", "text-generation"],
             "model-index": [{"name": f"cogumi-{profile.name}", "results": results}]}
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# cogumi system ({profile.name})", "",
             "A base model with domain modifiers, a router and an escalation rule, served as "
             "one OpenAI-compatible endpoint.", "", "## Serve it", "", "```bash",
             "cogumi bundle verify .", "cogumi serve . --port 8000   # then open "
             "http://127.0.0.1:8000/", "```", "",
             f"Models: `{SYSTEM_MODEL}` (routed, escalates to the teacher) and the fixed routes "
             + ", ".join(f"`{SYSTEM_MODEL}/{r}`" for r in ("base", *modifiers)) + ".", "",
             "## Size", "", "| part | MB |", "|---|---:|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in sizes["parts_mb"].items()]
    lines += [f"| **download** (packed base + the rest) | **{sizes['download_mb']:.3f}** |",
              f"| the seed's system (8B base) | {SEED_SIZES_MB['system']} |"]
    lines.append("")
    if "budget_mb" in sizes:
        lines += [f"Budget for this model: {_num(sizes['budget_mb'])} MB "
                  f"({sizes['budget_source']}).", ""]
    lines += [
              "## Every gate of the run", "",
              "Each phase of the pipeline before this one, with its latest gate run on the "
              "artifact in this run (runs/<profile>/ledger.jsonl). Phase 5A's own gates and "
              "5B's end-to-end validation are judged after this card is written: see their "
              "reports.", ""]
    lines += gates_markdown(runs)
    lines += ["## Measured in this run", ""]
    for pid in ctx.inputs:
        mpath = ctx.input_dir(pid) / "metrics.json"
        if not mpath.is_file():
            continue
        metrics = json.loads(mpath.read_text())
        metrics = metrics.get("metrics", metrics)
        lines += [f"### {pid}", "", "| metric | value |", "|---|---:|"]
        lines += [f"| {k} | {_num(v)} |" for k, v in sorted(metrics.items())]
        lines.append("")
    return "\n".join(lines) + "\n"


def _metrics_of(ctx: PhaseContext, pid: str) -> dict:
    mpath = ctx.input_dir(pid) / "metrics.json"
    if not mpath.is_file():
        return {}
    metrics = json.loads(mpath.read_text())
    return metrics.get("metrics", metrics)


def _results(ctx: PhaseContext, modifiers: dict) -> list[dict]:
    """model-index entries (the Hub's schema: task, dataset, metrics): each modifier's score
    on its benchmark, with the base and the teacher on the same items (3X's metrics), and
    the router's accuracy (4A's)."""
    out = []
    for pid in MODIFIER_PHASES:
        info = next((i for _, i in modifiers.values() if i.get("phase") == pid), None)
        m = _metrics_of(ctx, pid)
        if info is None or "task.score" not in m:
            continue
        values = [{"type": "accuracy", "name": f"{name} on {info.get('task')}",
                   "value": float(m[key])}
                  for key, name in (("task.score", f"with the {info['name']} modifier"),
                                    ("task.base_score", "base alone"),
                                    ("teacher.score", "teacher")) if key in m]
        out.append({"task": {"type": "text-generation", "name": f"{info['name']} ({pid})"},
                    "dataset": {"type": str(info.get("task")),
                                "name": f"{info.get('task')} ({ctx.profile.name} profile)"},
                    "metrics": values})
    m = _metrics_of(ctx, "4A")
    if "routing.accuracy" in m:
        out.append({"task": {"type": "text-classification", "name": "routing (4A)"},
                    "dataset": {"type": "routing-queries", "name": "4A report split"},
                    "metrics": [{"type": "accuracy", "name": "routing accuracy",
                                 "value": float(m["routing.accuracy"])}]})
    return out


def smoke(bundle: Path, notes: list[str]) -> bool:
    """Every listed model answers the openai client, streamed and not; the page is served."""
    import httpx
    import openai

    from cogumi.serving.app import RunningServer, create_app
    ok = True
    with RunningServer(create_app(bundle)) as srv:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)
        names = [m.id for m in client.models.list().data]
        for name in names:
            msg = [{"role": "user", "content": "What is 2 + 2?"}]
            try:
                resp = client.chat.completions.create(model=name, messages=msg, temperature=0,
                                                      max_tokens=8)
                streamed = "".join(
                    ev.choices[0].delta.content or "" for ev in client.chat.completions.create(
                        model=name, messages=msg, temperature=0, max_tokens=8, stream=True)
                    if ev.choices)
                if resp.usage.completion_tokens < 1 or "cogumi" not in resp.model_extra:
                    raise RuntimeError("no tokens or no route in the response")
                if not resp.model_extra["cogumi"]["escalated"] and \
                        streamed != resp.choices[0].message.content:
                    raise RuntimeError("the stream differs from the greedy answer")
            except Exception as e:  # noqa: BLE001 - each failure is reported
                ok = False
                notes.append(f"smoke: model {name}: {type(e).__name__}: {e}")
        page = httpx.get(srv.url + "/")
        if page.status_code != 200 or "<html" not in page.text:
            ok = False
            notes.append(f"smoke: the chat page answered {page.status_code}")
    return ok


def size_budget(ctx: PhaseContext) -> tuple[float, str]:
    """The threshold in force for bundle.size_mb (the seed's 668 MB, scaled by the gate
    file's rule where the profile uses rules) and where it comes from."""
    from cogumi.gates import resolve_gates
    gate = next(g for g in resolve_gates("5A", ctx.profile, ctx.root, ctx.runs_dir)
                if g.metric == "bundle.size_mb")
    return gate.threshold, gate.source


def run(ctx: PhaseContext) -> dict[str, float]:
    from cogumi.artifacts import sha256_file
    from cogumi.registry import implemented_phases
    from cogumi.serving.bundle import file_table

    base = _need(ctx.input_dir("2C") / "model.gguf", "2C's shipped base")
    packed = _need(ctx.input_dir("2D") / "model.gguf.zst", "2D's packed base")
    modifiers = _modifiers(ctx, sha256_file(base))
    router = _need(ctx.input_dir("4A") / "router", "4A's router")
    escalation = _need(ctx.input_dir("4B") / "escalation.json", "4B's escalation model")
    thresholds = _need(ctx.input_dir("4C") / "thresholds.json", "4C's threshold")
    cfg = ctx.profile.gguf
    serving = {"n_ctx": cfg.n_ctx, "n_threads": cfg.threads,
               "stop": list(ctx.profile.model.stop),
               "max_tokens": ctx.profile.eval.max_new_tokens,
               "chat_template": ctx.profile.model.chat_template}
    out = ctx.out_dir / "bundle"
    write_bundle(out, base_gguf=base, packed=packed, modifiers=modifiers, router_dir=router,
                 escalation=escalation, thresholds=thresholds,
                 teacher=teacher_settings(ctx) or None, serving=serving,
                 card="", extra={"profile": ctx.profile.name})
    budget_mb, budget_source = size_budget(ctx)
    # Every phase of the run, not only 5A's inputs: 2F (calibration) and the rest are gates
    # the system passed or failed on its way here.
    runs = gate_runs(ctx.runs_dir, [p.id for p in implemented_phases()
                                    if p.id not in ("5A", "5B")])
    results = _results(ctx, modifiers)
    # The card shows the sizes, and its own bytes are part of them: rewrite it until the
    # table it prints is the table of the bundle it is in (two passes at 3 decimals).
    card = ""
    for _ in range(4):
        manifest = json.loads((out / MANIFEST).read_text())
        manifest["files"] = file_table(out)
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        sizes = size_table(out)
        sizes.update(budget_mb=budget_mb, budget_source=budget_source)
        new = model_card(ctx, modifiers, sizes, results, runs)
        if new == card:
            break
        card = new
        (out / "README.md").write_text(card)
    write_json(ctx.out_dir / "sizes.json", sizes)
    write_json(ctx.out_dir / "gate_runs.json", runs)
    problems = verify_bundle(out)
    ctx.notes.extend(f"verify: {p}" for p in problems)
    smoke_ok = smoke(out, ctx.notes) if not problems else False
    ctx.write_report("\n".join(
        ["Bundle `bundle/` (a Hugging Face model repository layout; `cogumi serve bundle/`).",
         "", "| part | MB |", "|---|---:|",
         *(f"| {k} | {v:.3f} |" for k, v in sizes["parts_mb"].items()),
         f"| download | {sizes['download_mb']:.3f} |",
         f"| budget: {budget_source} | {budget_mb:.3f} |", "",
         f"Routes: base, {', '.join(modifiers) or 'no modifier'}. Gates of the run in the "
         f"card: {sum(len(r['gates']) for r in runs)} over {len(runs)} phases "
         f"({sum(not r['gates'] for r in runs)} without a gate run on the artifact bundled).",
         "",
         f"cogumi bundle verify: {'passes' if not problems else f'{len(problems)} problems'}; "
         f"API smoke test: {'passes' if smoke_ok else 'fails'}."]))
    return {"bundle.size_mb": sizes["download_mb"], "bundle.folder_mb": sizes["folder_mb"],
            "bundle.files": float(len(manifest["files"])),
            "bundle.verified": float(not problems), "api.smoke_ok": float(smoke_ok)}
