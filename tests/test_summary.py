"""The README's figures are generated (`cogumi report --summary`) and every result file says
where it came from. Offline: everything is read from the committed benchmarks/results/."""

import json
import re
from pathlib import Path

import pytest

from cogumi import cli, provenance, summary
from cogumi.profile import ProfileError, load_profile
from cogumi.summary import Results, SummaryError, parse_blocks, render

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# Result files written before results recorded their provenance, and the keys each one
# could not recover from its own content or the git log (see each file's provenance_note).
# No file written since may use "unrecorded".
LEGACY_UNRECORDED = {
    "eval_generation.json": {"git_commit", "machine.cores"},
    "eval_gpu.json": {"git_commit", "machine.cpu", "machine.cores"},
    "eval_gpu_h200_cpu_sampling.json": {"git_commit", "machine.cpu", "machine.cores"},
    "gguf_inference_tiny.json": {"git_commit", "machine.cpu"},
    "gguf_inference_gemma-270m.json": {"git_commit", "machine.cpu"},
    "gguf_kquants_tiny.json": {"git_commit", "machine.cpu"},
    "gguf_kquants_gemma-270m.json": {"git_commit", "machine.cpu"},
    "train_backends.json": {"git_commit", "machine.cpu", "machine.cores"},
}
COMMIT = re.compile(r"^[0-9a-f]{40}(\+dirty)?$")
GPU = re.compile(r"cuda|NVIDIA", re.IGNORECASE)


# --------------------------------------------------------------------------- the drift test

def test_readme_matches_the_committed_results():
    text = (ROOT / "README.md").read_text()
    blocks = parse_blocks(text)
    assert {b.name.split(":")[0] for b in blocks} >= {"benchmarks", "dedup-speed"}
    _, changed = render(text, Results(RESULTS))
    assert not changed, ("README.md differs from benchmarks/results/ in "
                         + ", ".join(f"{b.name} (line {b.line})" for b in changed)
                         + "; run `python -m cogumi report --summary`")


def test_the_readme_quotes_every_pipeline_snapshot():
    """A block deleted from the README is drift the comparison above cannot see (it renders
    only the blocks there are): every committed pipeline snapshot keeps its table."""
    names = {b.name for b in parse_blocks((ROOT / "README.md").read_text())}
    snapshots = sorted(RESULTS.glob("pipeline_*.json"))
    assert snapshots
    for path in snapshots:
        profile = path.stem.removeprefix("pipeline_")
        assert f"pipeline:{profile}" in names, (
            f"README.md has no <!-- cogumi:summary:pipeline:{profile} --> block for "
            f"benchmarks/results/{path.name}")


def test_check_exits_1_naming_the_drifted_block(tmp_path, monkeypatch, capsys):
    readme = tmp_path / "README.md"
    text = (ROOT / "README.md").read_text()
    # A figure edited by hand inside a generated block.
    block = next(b for b in parse_blocks(text) if b.name == "dedup-speed")
    readme.write_text(text[:block.start] + "12.0× plain datasketch" + text[block.end:])
    monkeypatch.setattr(cli, "repo_root", lambda: tmp_path)
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "results").symlink_to(RESULTS)
    assert cli.main(["report", "--check"]) == 1
    assert "dedup-speed (line" in capsys.readouterr().out
    assert readme.read_text().count("12.0× plain datasketch") == 1  # --check writes nothing
    assert cli.main(["report", "--summary", "--runs", str(tmp_path / "no-runs")]) == 0
    assert "12.0×" not in readme.read_text()
    assert cli.main(["report", "--check"]) == 0


# --------------------------------------------------------------------------- block rewriting

def _results(tmp_path, **files) -> Results:
    for name, data in files.items():
        (tmp_path / name).write_text(json.dumps(data))
    return Results(tmp_path)


DEDUP = {"implementations": {p: {"records_per_second": v, "seconds_each_round": rounds}
                             for p, v, rounds in (("ours", 12043.8, [5.48, 5.6]),
                                                  ("rensa", 14765.1, [4.47, 4.4]),
                                                  ("datasketch", 3249.6, [20.3, 20.1]),
                                                  ("datatrove", 2630.5, [25.1, 25.2]))},
         "corpus": {"records": 66000}, "machine": {"cores": 2}, "rounds": 2,
         "targets": {"ours_at_least_as_fast_as_fastest_qualifying_peer": False,
                     "peers_at_precision_and_cluster_recall_0.95": ["datasketch", "rensa"]}}


def test_inline_and_whole_line_blocks_are_rewritten_in_place(tmp_path):
    r = _results(tmp_path, **{"dedup.json": DEDUP})
    text = ("Intro.\nSpeed: <!-- cogumi:summary:dedup-speed -->old<!-- "
            "/cogumi:summary:dedup-speed -->, then prose.\n"
            "<!-- cogumi:summary:dedup-speed -->\nstale\nlines\n"
            "<!-- /cogumi:summary:dedup-speed -->\nEnd.\n")
    new, changed = render(text, r)
    assert [b.line for b in changed] == [2, 3]
    line = ("records/s on 66,000 records, 2 cores: ours 12,044, rensa 14,765, datasketch "
            "3,250, datatrove 2,630 (median of 2 rounds; seconds per round: ours 5.48, 5.6; "
            "rensa 4.47, 4.4); the target (phase 0 at least as fast as the fastest peer "
            "at precision and cluster recall >= 0.95) is not met")
    assert new == (f"Intro.\nSpeed: <!-- cogumi:summary:dedup-speed -->{line}<!-- "
                   f"/cogumi:summary:dedup-speed -->, then prose.\n"
                   f"<!-- cogumi:summary:dedup-speed -->\n{line}\n"
                   f"<!-- /cogumi:summary:dedup-speed -->\nEnd.\n")
    assert render(new, r) == (new, [])  # idempotent: nothing drifts after a rewrite


@pytest.mark.parametrize("text, message", [
    ("a\n<!-- cogumi:summary:nonsense -->x<!-- /cogumi:summary:nonsense -->",
     "README.md:2: unknown block 'nonsense'"),
    ("a\nb\n<!-- cogumi:summary:dedup-speed -->\nx\n",
     "README.md:3: block 'dedup-speed' is never closed"),
    ("<!-- /cogumi:summary:dedup-speed -->", "README.md:1: closing marker of block "
                                              "'dedup-speed' without an opening one"),
    ("<!-- cogumi:summary:dedup-speed -->\n<!-- cogumi:summary:benchmarks -->",
     "README.md:2: block 'benchmarks' opens inside block 'dedup-speed'"),
    ("<!-- cogumi:summary:dedup-speed -->\n<!-- /cogumi:summary:benchmarks -->",
     "README.md:2: closing marker of block 'benchmarks', but block 'dedup-speed' (line 1)"),
    ("\n<!-- cogumi:summary:gates:tiny --><!-- /cogumi:summary:gates:tiny -->",
     "README.md:2: block 'gates:tiny' needs the form gates:PROFILE:PHASE"),
])
def test_bad_blocks_are_errors_naming_the_line(text, message):
    with pytest.raises(SummaryError, match=re.escape(message)):
        parse_blocks(text)


def test_a_missing_key_names_the_file_and_key(tmp_path):
    r = _results(tmp_path, **{"dedup.json": {**DEDUP, "targets": {}}})
    with pytest.raises(SummaryError, match=r"dedup\.json: no key 'targets\.ours_at_least_as_"
                                           r"fast_as_fastest_qualifying_peer'"):
        summary.dedup_speed(r)
    with pytest.raises(SummaryError, match=r"eval_sandbox\.json: missing"):
        r.load("eval_sandbox.json")


def test_a_multi_line_rendering_needs_its_own_lines(tmp_path):
    r = Results(RESULTS)
    with pytest.raises(SummaryError, match="README.md:1: block 'benchmarks' renders several"):
        render("<!-- cogumi:summary:benchmarks -->x<!-- /cogumi:summary:benchmarks -->", r)


# --------------------------------------------------------------------------- provenance

def _sections(name: str, data: dict) -> list[tuple[str, dict]]:
    if data.get("provenance_in"):
        assert data["provenance_in"] in data, f"{name}: provenance_in names a missing key"
        return [(f"{name} {data['provenance_in']}.{k}", v)
                for k, v in data[data["provenance_in"]].items()]
    return [(name, data)]


def _check_provenance(label: str, d: dict, allowed: set[str]) -> None:
    def value(path):
        out = d
        for part in path.split("."):
            out = out[part]
        return out

    for key in provenance.REQUIRED:
        assert key in d, f"{label}: no {key!r}"
    fields = ["command", "git_commit", "machine", "versions"]
    machine = d["machine"]
    if machine != provenance.UNRECORDED:
        assert isinstance(machine, dict), f"{label}: machine is not an object"
        fields += ["machine.cpu", "machine.cores"]
        for key in ("cpu", "cores"):
            assert key in machine, f"{label}: machine has no {key!r}"
    for path in fields:
        if value(path) == provenance.UNRECORDED:
            assert path in allowed, (f"{label}: {path} is 'unrecorded', allowed only for the "
                                     f"files listed in LEGACY_UNRECORDED")
    assert isinstance(d["command"], str) and d["command"]
    if d["git_commit"] != provenance.UNRECORDED:
        commits = d["git_commit"] if isinstance(d["git_commit"], list) else [d["git_commit"]]
        assert all(COMMIT.match(c) for c in commits), f"{label}: git_commit {d['git_commit']!r}"
    if d["versions"] != provenance.UNRECORDED:
        assert isinstance(d["versions"], dict) and d["versions"], f"{label}: versions"
    if isinstance(machine, dict) and machine.get("cores") != provenance.UNRECORDED:
        assert isinstance(machine["cores"], int) and machine["cores"] > 0, label


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.json")), ids=lambda p: p.name)
def test_every_result_records_command_commit_machine_and_versions(path):
    data = json.loads(path.read_text())
    allowed = LEGACY_UNRECORDED.get(path.name, set())
    for label, section in _sections(path.name, data):
        _check_provenance(label, section, allowed)
        if GPU.search(json.dumps(section.get("versions", "")) + json.dumps(
                {k: v for k, v in section.items() if k in ("device", "machine")})):
            assert section["machine"].get("device"), f"{label}: a GPU result names no device"


def test_every_benchmark_script_records_provenance():
    for script in sorted((ROOT / "benchmarks").glob("bench_*.py")):
        assert "provenance(" in script.read_text(), f"{script.name} does not use provenance()"


def test_provenance_has_the_required_keys():
    p = provenance.provenance(("pytest",), argv=["/usr/bin/python3", "-m", "cogumi", "plan"])
    assert p["command"] == "python -m cogumi plan"
    assert set(provenance.REQUIRED) <= set(p)
    assert p["versions"]["pytest"] and p["machine"]["cores"] >= 1
    assert COMMIT.match(p["git_commit"])  # the test suite runs in a checkout


# --------------------------------------------------------------------------- plan

def test_plan_reads_its_hours_from_the_result_file(capsys):
    data = json.loads((RESULTS / "seed_code_path_h200.json").read_text())
    step = load_profile("llama-3.1-8b").plan["1A"]
    assert step.hours.file == "benchmarks/results/seed_code_path_h200.json"
    hours = data
    for key in step.hours.key:
        hours = hours[key]
    assert cli.main(["plan", "--profile", "llama-3.1-8b"]) == 0
    out = capsys.readouterr().out
    assert f"1A: {hours:.3g} h projected from measurements on" in out
    assert "not measured" in out and "1B" in out


def test_plan_rejects_a_typed_estimate_and_names_a_bad_measurement(tmp_path):
    text = (ROOT / "cogumi/profiles/llama-3.1-8b.toml").read_text()
    typed = tmp_path / "typed.toml"
    typed.write_text(text.replace('[plan.1C]\nhardware = "H100-80GB"\n',
                                  '[plan.1C]\nhardware = "H100-80GB"\nhours = 3.0\n'))
    with pytest.raises(ProfileError, match="plan.1C.hours"):
        load_profile(str(typed))
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace('["projection", "1A", "hours"]', '["projection", "1A", "hourz"]'))
    step = load_profile(str(bad)).plan["1A"]
    with pytest.raises(ProfileError, match=r"seed_code_path_h200\.json: no key "
                                           r"'projection\.1A\.hourz'"):
        step.hours.read(ROOT)


# --------------------------------------------------------------------------- snapshots

@pytest.fixture(scope="module")
def phase0_runs(tmp_path_factory):
    """One real phase-0 run on tiny (a few seconds), shared by the snapshot tests."""
    runs = tmp_path_factory.mktemp("summary") / "runs"
    assert cli.main(["run", "0", "--runs", str(runs)]) == 0
    return runs


def test_snapshot_copies_the_gated_run_and_renders_from_it(tmp_path, phase0_runs):
    runs = phase0_runs
    results = tmp_path / "results"
    results.mkdir()
    written = summary.write_snapshots(runs, results)
    assert [p.name for p in written] == ["pipeline_tiny.json"]
    snap = json.loads(written[0].read_text())
    _check_provenance("pipeline_tiny.json", snap, set())
    phase0 = snap["phases"]["0"]
    assert phase0["metrics"] == json.loads((runs / "tiny/0/metrics.json").read_text())
    assert phase0["passed"] and phase0["state"] == "signed off"
    assert "curation_stats.json" in phase0["files"]
    m = phase0["metrics"]
    line = summary.phase0_accounting(Results(results), "tiny")
    assert line.startswith(f"records in {int(m['records.in'])} = kept {int(m['records.kept'])}")
    table = summary.gates_table(Results(results), "tiny", "0")
    assert "| records.kept | 333 | > 0 |" in table and table.count("\n") == len(
        phase0["gates"]) + 1
    with pytest.raises(SummaryError, match="no phase '1A'"):
        summary.gates_table(Results(results), "tiny", "1A")


def test_a_run_under_other_settings_than_the_shipped_profile_is_not_snapshotted(
        tmp_path, phase0_runs, monkeypatch):
    import cogumi.runner
    # As if tiny.toml's [data] had changed since the run: the artifact is stale.
    monkeypatch.setattr(cogumi.runner, "config_digest", lambda profile, phase_id: "other")
    assert summary.write_snapshots(phase0_runs, tmp_path) == []
    assert summary.snapshot("tiny", phase0_runs / "tiny") is None
