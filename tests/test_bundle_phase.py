"""Phase 5A on small real parts: the tiny fixture's F32 GGUF as 2C's base, its zstd copy as
2D's, two random-weight LoRAs converted by llama.cpp's converter as 3A's and 3B's modifiers
(3C ships none), a router and an escalation model fitted on real generations as 4A's and
4B's (tests/serving_bundle.py), and a ledger with gate runs for some of the phases. The
bundle's layout, manifest, model card and `cogumi bundle verify` are checked on what
5A's run(ctx) writes; its smoke test starts `cogumi serve` on it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("fastapi")
pytest.importorskip("sklearn")

from rich.console import Console  # noqa: E402

from cogumi import ledger  # noqa: E402
from cogumi.artifacts import sha256_file  # noqa: E402
from cogumi.serving.bundle import MANIFEST, verify_bundle  # noqa: E402
from tests.serving_bundle import ROOT  # noqa: E402

SECRET = "sk-test-this-must-never-reach-the-bundle"
GATES_3A = [{"metric": "gain_lower", "op": ">", "threshold": 0.0, "value": 0.05,
             "passed": True, "waived": False},
            {"metric": "teacher_relative", "op": ">=", "threshold": 1.15, "value": 0.4,
             "passed": False, "waived": False}]
GATES_4A = [{"metric": "routing.accuracy", "op": ">=", "threshold": 0.9, "value": 0.93,
             "passed": True, "waived": False}]


def _phase_folder(runs, pid: str, metrics: dict) -> None:
    folder = runs / pid
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    # The ledger binds a gate run to the artifact's manifest digest; any bytes stand in here.
    (folder / "manifest.json").write_text(json.dumps({"phase": pid, "outputs": {}}))


def _gate(runs, pid: str, gates: list[dict], digest: str | None = None) -> None:
    ledger.append(runs, {"event": "gate-run", "phase": pid,
                         "manifest_sha256": digest or ledger.manifest_digest(runs / pid),
                         "passed": all(g["passed"] for g in gates), "gates": gates})


@pytest.fixture(scope="module")
def built(bundle_parts, routed_parts, tmp_path_factory):
    """runs/ with every input of 5A, then 5A's run(ctx) on it: (ctx, metrics)."""
    from cogumi.phases import bundle as phase
    from cogumi.profile import load_profile
    from cogumi.registry import get_phase
    from cogumi.runner import PhaseContext

    tmp = tmp_path_factory.mktemp("phase5a")
    runs = tmp / "runs"
    base_sha = sha256_file(bundle_parts["base_gguf"])
    _phase_folder(runs, "2C", {"size_mb": 32.0})
    shutil.copyfile(bundle_parts["base_gguf"], runs / "2C" / "model.gguf")
    _phase_folder(runs, "2D", {"size_mb": 30.0})
    shutil.copyfile(bundle_parts["packed"], runs / "2D" / "model.gguf.zst")
    for pid, (name, (gguf, _)) in zip(("3A", "3B"), bundle_parts["modifiers"].items(),
                                      strict=True):
        _phase_folder(runs, pid, {"task.score": 0.5, "task.base_score": 0.4,
                                  "teacher.score": 0.6, "gain_lower": 0.05})
        shutil.copyfile(gguf, runs / pid / "adapter.gguf")
        (runs / pid / "modifier.json").write_text(json.dumps({
            "name": name, "phase": pid, "domain": name, "task": "code" if pid == "3A" else "math",
            "adapter_gguf_sha256": sha256_file(gguf), "base_gguf_sha256": base_sha,
            "lora_rank": 4, "lora_alpha": 8.0}))
    _phase_folder(runs, "3C", {})  # no modifier.json: 3C ships no modifier
    _phase_folder(runs, "4A", {"routing.accuracy": 0.93})
    shutil.copytree(routed_parts["router_dir"], runs / "4A" / "router")
    _phase_folder(runs, "4B", {})
    shutil.copyfile(routed_parts["escalation"], runs / "4B" / "escalation.json")
    _phase_folder(runs, "4C", {"threshold": 0.7})
    (runs / "4C" / "thresholds.json").write_text(json.dumps({"threshold": 0.7}))
    _gate(runs, "3A", GATES_3A)
    _gate(runs, "4A", GATES_4A)
    _gate(runs, "2D", GATES_4A, digest="0" * 64)  # a gate run of another artifact

    profile = load_profile("tiny")
    out = tmp / "stage"
    out.mkdir()
    ctx = PhaseContext(profile, get_phase("5A"), out, runs, Console(quiet=True))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(profile.teacher.api_key_env or "OPENAI_API_KEY", SECRET)
        metrics = phase.run(ctx)
    return ctx, metrics


def test_the_bundle_is_laid_out_as_a_model_repository(built):
    ctx, m = built
    bundle = ctx.out_dir / "bundle"
    files = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    for rel in ("model.gguf", "model.gguf.zst", "modifiers/code.gguf",
                "modifiers/reasoning.gguf", "escalation.json", "thresholds.json",
                "teacher.json", "README.md", MANIFEST, "router/router.json"):
        assert rel in files, rel
    assert not any(f.startswith("modifiers/automation") for f in files)
    assert any("3C ships no modifier" in n for n in ctx.notes)
    # The base is 2C's bytes, the modifiers 3A's and 3B's.
    assert sha256_file(bundle / "model.gguf") == sha256_file(ctx.runs_dir / "2C" / "model.gguf")
    assert sha256_file(bundle / "modifiers" / "code.gguf") == sha256_file(
        ctx.runs_dir / "3A" / "adapter.gguf")
    assert m["bundle.verified"] == 1 and m["api.smoke_ok"] == 1, ctx.notes


def test_the_manifest_lists_every_file_with_its_digest(built):
    ctx, m = built
    bundle = ctx.out_dir / "bundle"
    manifest = json.loads((bundle / MANIFEST).read_text())
    on_disk = {p.relative_to(bundle).as_posix(): p for p in bundle.rglob("*")
               if p.is_file() and p.name != MANIFEST}
    assert set(manifest["files"]) == set(on_disk)
    for rel, path in on_disk.items():  # the card included: it was written before the manifest
        assert manifest["files"][rel] == {"sha256": sha256_file(path),
                                          "bytes": path.stat().st_size}, rel
    assert m["bundle.files"] == len(on_disk)
    download = sum(e["bytes"] for r, e in manifest["files"].items() if r != "model.gguf")
    assert m["bundle.size_mb"] == pytest.approx(download / 1e6)


def test_teacher_settings_name_the_key_variable_never_the_key(built):
    ctx, _ = built
    bundle = ctx.out_dir / "bundle"
    teacher = json.loads((bundle / "teacher.json").read_text())
    assert teacher["model"] == ctx.profile.teacher.model
    assert teacher["api_key_env"] == (ctx.profile.teacher.api_key_env or teacher["api_key_env"])
    for path in bundle.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_the_model_card_has_front_matter_sizes_and_every_gate_of_the_run(built):
    import yaml
    ctx, m = built
    card = (ctx.out_dir / "bundle" / "README.md").read_text()
    assert card.startswith("---\n")
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["license"] and front["base_model"] and "gguf" in front["tags"]
    results = front["model-index"][0]["results"]
    names = [r["task"]["name"] for r in results]
    assert names == ["code (3A)", "reasoning (3B)", "routing (4A)"]
    code = results[0]["metrics"]
    assert [x["value"] for x in code] == [0.5, 0.4, 0.6]  # modifier, base, teacher
    # Every gate of every input phase, with its verdict; phases without a gate run on the
    # bundled artifact say so rather than being left out.
    assert "| gain_lower | > 0 | 0.05 | PASS |" in card
    assert "| teacher_relative | >= 1.15 | 0.4 | FAIL |" in card
    assert "| routing.accuracy | >= 0.9 | 0.93 | PASS |" in card
    assert "| 3A | gates failed | 1/2 |" in card
    assert "| 4A | signed off | 1/1 |" in card
    assert "| 2D | no gate run of the artifact in this run | — |" in card
    assert "| 1A | no artifact in this run | — |" in card
    runs = json.loads((ctx.out_dir / "gate_runs.json").read_text())
    from cogumi.registry import implemented_phases
    assert [r["phase"] for r in runs] == [p.id for p in implemented_phases()
                                          if p.id not in ("5A", "5B")]
    # The size table is the bundle's own (the card's bytes included) and names the budget.
    assert f"**{m['bundle.size_mb']:.3f}**" in card
    assert "Budget for this model" in card
    assert "cogumi serve ." in card


def test_bundle_verify_names_a_changed_and_an_unlisted_file(built, tmp_path):
    ctx, _ = built
    copy = tmp_path / "bundle"
    shutil.copytree(ctx.out_dir / "bundle", copy)
    assert verify_bundle(copy, load=False) == []
    with open(copy / "thresholds.json", "a") as f:
        f.write(" ")
    (copy / "router" / "extra.bin").write_bytes(b"x")
    problems = verify_bundle(copy, load=False)
    assert any("thresholds.json" in p and "manifest says" in p for p in problems), problems
    assert any("extra.bin: not listed" in p for p in problems), problems
    done = subprocess.run([sys.executable, "-m", "cogumi", "bundle", "verify", str(copy),
                           "--digests-only"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 1 and "thresholds.json" in done.stdout


def test_an_adapter_made_for_another_base_is_refused(built, tmp_path):
    from cogumi.phases import bundle as phase
    from cogumi.runner import PhaseContext, PhaseInputError
    ctx, _ = built
    runs = tmp_path / "runs"
    shutil.copytree(ctx.runs_dir, runs)
    info = json.loads((runs / "3B" / "modifier.json").read_text())
    info["base_gguf_sha256"] = "f" * 64
    (runs / "3B" / "modifier.json").write_text(json.dumps(info))
    (tmp_path / "out").mkdir()
    with pytest.raises(PhaseInputError, match="3B/modifier.json: key 'base_gguf_sha256'"):
        phase.run(PhaseContext(ctx.profile, ctx.phase, tmp_path / "out", runs,
                               Console(quiet=True)))
