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


def _modifiers(ctx: PhaseContext) -> dict[str, tuple[Path, dict]]:
    out = {}
    for pid in MODIFIER_PHASES:
        folder = ctx.input_dir(pid)
        info_path = _need(folder / "modifier.json", f"phase {pid}'s modifier description")
        info = json.loads(info_path.read_text())
        name = info.get("name")
        if not isinstance(name, str) or not name:
            raise PhaseInputError(f"{info_path}: key 'name' is missing")
        out[name] = (_need(folder / "adapter.gguf", f"phase {pid}'s GGUF LoRA"), info)
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


def model_card(ctx: PhaseContext, modifiers: dict, sizes: dict, results: list[dict]) -> str:
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
              f"| seed | {SEED_SIZES_MB['system']} |", "", "## Measured in this run", ""]
    for pid in ctx.phase.inputs:
        mpath = ctx.input_dir(pid) / "metrics.json"
        if not mpath.is_file():
            continue
        metrics = json.loads(mpath.read_text())
        metrics = metrics.get("metrics", metrics)
        lines += [f"### {pid}", "", "| metric | value |", "|---|---:|"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, int | float) else f"| {k} | {v} |"
                  for k, v in sorted(metrics.items())]
        lines.append("")
    return "\n".join(lines) + "\n"


def _results(ctx: PhaseContext, modifiers: dict) -> list[dict]:
    """model-index entries: each modifier's measured score on its task, the router's
    accuracy (from their phases' metrics.json)."""
    out = []
    for pid in (*MODIFIER_PHASES, "4A"):
        mpath = ctx.input_dir(pid) / "metrics.json"
        if not mpath.is_file():
            continue
        metrics = json.loads(mpath.read_text())
        metrics = metrics.get("metrics", metrics)
        values = [{"type": k, "name": k, "value": float(v)} for k, v in sorted(metrics.items())
                  if isinstance(v, int | float) and ("accuracy" in k or "pass@" in k)]
        if values:
            out.append({"task": {"type": "text-generation", "name": f"phase {pid}"},
                        "dataset": {"type": ctx.profile.name, "name": f"{pid} evaluation"},
                        "metrics": values})
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


def run(ctx: PhaseContext) -> dict[str, float]:
    base = _need(ctx.input_dir("2C") / "model.gguf", "2C's shipped base")
    packed = _need(ctx.input_dir("2D") / "model.gguf.zst", "2D's packed base")
    modifiers = _modifiers(ctx)
    router = _need(ctx.input_dir("4A") / "router", "4A's router")
    escalation = _need(ctx.input_dir("4B") / "escalation.json", "4B's escalation model")
    thresholds = _need(ctx.input_dir("4C") / "thresholds.json", "4C's threshold")
    cfg = ctx.profile.gguf
    serving = {"n_ctx": cfg.n_ctx, "n_threads": cfg.threads,
               "stop": list(ctx.profile.model.stop),
               "max_tokens": ctx.profile.eval.max_new_tokens,
               "chat_template": ctx.profile.model.chat_template}
    out = ctx.out_dir / "bundle"
    # The card needs the sizes, the sizes need the files: lay the bundle out, measure, then
    # write the card and the manifest again over the final files.
    write_bundle(out, base_gguf=base, packed=packed, modifiers=modifiers, router_dir=router,
                 escalation=escalation, thresholds=thresholds,
                 teacher=teacher_settings(ctx) or None, serving=serving,
                 card="(model card follows)\n", extra={"profile": ctx.profile.name})
    sizes = size_table(out)
    (out / "README.md").write_text(model_card(ctx, modifiers, sizes, _results(ctx, modifiers)))
    from cogumi.serving.bundle import file_table
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["files"] = file_table(out)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    sizes = size_table(out)
    write_json(ctx.out_dir / "sizes.json", sizes)
    problems = verify_bundle(out)
    ctx.notes.extend(f"verify: {p}" for p in problems)
    smoke_ok = smoke(out, ctx.notes) if not problems else False
    ctx.write_report("\n".join(
        ["Bundle `bundle/` (a Hugging Face model repository layout; `cogumi serve bundle/`).",
         "", "| part | MB |", "|---|---:|",
         *(f"| {k} | {v:.3f} |" for k, v in sizes["parts_mb"].items()),
         f"| download | {sizes['download_mb']:.3f} |",
         f"| seed (8B) | {SEED_SIZES_MB['system']} |", "",
         f"cogumi bundle verify: {'passes' if not problems else f'{len(problems)} problems'}; "
         f"API smoke test: {'passes' if smoke_ok else 'fails'}."]))
    return {"bundle.size_mb": sizes["download_mb"], "bundle.folder_mb": sizes["folder_mb"],
            "bundle.files": float(len(manifest["files"])),
            "bundle.verified": float(not problems), "api.smoke_ok": float(smoke_ok)}
