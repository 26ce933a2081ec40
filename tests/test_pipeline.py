"""The walking skeleton end to end on the tiny profile: run, gate, sign off, refuse.

Phase 0 tests are fast (fixture data only). The 1A test trains the fixture model for real on
CPU (about a minute) and checks that the sign-off report shows before and after.
"""

import json
import time

import pytest

from cogumi import cli, ledger
from cogumi.ledger import State

from .conftest import ROOT, profile_with


def _cogumi(*args):
    return cli.main(list(args))


@pytest.fixture
def runs(tmp_path):
    return tmp_path / "runs"


def test_phase0_signs_off_and_accounts_for_every_record(runs):
    assert _cogumi("run", "0", "--runs", str(runs)) == 0
    folder = runs / "tiny" / "0"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["records.in"] == (metrics["records.kept"] + metrics["records.removed"]
                                     + metrics["records.quarantined"])
    assert metrics["dedup.exact_removed"] > 0  # the fixtures plant exact duplicates
    removed = [json.loads(line) for line in (folder / "removed.jsonl").read_text().splitlines()]
    assert all(r["reason"] for r in removed)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["outputs"]) >= {"curated.jsonl", "metrics.json", "removed.jsonl"}
    for key in ("git_commit", "versions", "seed", "wall_time_s", "peak_rss_mb",
                "estimated_cost_usd", "profile_sha256"):
        assert key in manifest
    assert ledger.check_signoff(runs / "tiny", "0", manifest["config_sha256"]).ok
    report = (runs / "tiny" / "reports" / "phase0.md").read_text()
    assert "SIGNED OFF" in report and "| accounting.unbalanced | 0 |" in report
    assert (runs / "tiny" / "reports" / "phase0.junit.xml").exists()


def test_second_run_skips_fast(runs, capsys):
    assert _cogumi("run", "0", "--runs", str(runs)) == 0
    start = time.perf_counter()
    assert _cogumi("run", "0", "--runs", str(runs)) == 0
    assert time.perf_counter() - start < 10
    assert "signed off" in capsys.readouterr().out


def test_one_changed_byte_refuses_downstream(runs, capsys):
    assert _cogumi("run", "0", "--runs", str(runs)) == 0
    curated = runs / "tiny" / "0" / "curated.jsonl"
    data = bytearray(curated.read_bytes())
    data[10] ^= 1
    curated.write_bytes(bytes(data))
    capsys.readouterr()
    assert _cogumi("run", "1A", "--runs", str(runs)) == 2
    out = capsys.readouterr().out
    assert "refusing phase 1A" in out and "curated.jsonl: changed after sign-off" in out


def test_out_of_order_is_refused(runs, capsys):
    assert _cogumi("run", "1A", "--no-inputs", "--runs", str(runs)) == 2
    assert "refusing phase 1A: input phase 0 has no sign-off" in capsys.readouterr().out


@pytest.fixture
def unbuilt_5b(monkeypatch):
    """Phase 5B as if no issue had built it (every phase of the plan is built now): the
    registry's table and lookups, and the modules that imported the table, see it so."""
    import dataclasses

    from cogumi import cli, gates, registry
    unbuilt = dataclasses.replace(registry.get_phase("5B"), entry=None)
    phases = tuple(unbuilt if p.id == "5B" else p for p in registry.PHASES)
    for module in (registry, cli, gates):
        monkeypatch.setattr(module, "PHASES", phases)
    monkeypatch.setitem(registry._BY_ID, "5B", unbuilt)


def test_unimplemented_phase_refuses(runs, capsys, unbuilt_5b):
    assert _cogumi("run", "5B", "--no-inputs", "--runs", str(runs)) == 2
    assert "not implemented" in capsys.readouterr().out


def test_plan_only_profile_refuses_to_run(runs, capsys):
    assert _cogumi("run", "0", "--profile", "llama-3.1-8b", "--runs", str(runs)) == 2
    out = capsys.readouterr().out  # the preflight refuses before phase 0 starts
    assert "refusing to start phases 0 on profile llama-3.1-8b: dataset Open-Orca/OpenOrca" in out
    assert "is not in the local Hugging Face cache" in out


def test_failing_gate_exits_1_and_does_not_sign_off(tmp_path, runs, capsys):
    profile, path = profile_with(tmp_path, "")
    text = path.read_text().replace("min_response_chars = 1", "min_response_chars = 100000")
    path.write_text(text)  # every record is now "too short": nothing is kept
    assert _cogumi("run", "0", "--profile", str(path), "--runs", str(runs)) == 1
    out = capsys.readouterr().out
    assert "records.kept" in out and "FAIL" in out
    check = ledger.check_signoff(runs / profile.name, "0", "x")
    assert check.state is State.FAILED


def test_status_and_plan_render(runs, capsys, unbuilt_5b):
    assert _cogumi("run", "0", "--runs", str(runs)) == 0
    capsys.readouterr()
    assert _cogumi("status", "--runs", str(runs)) == 0
    out = capsys.readouterr().out
    assert "signed off" in out and "not implemented" in out
    assert _cogumi("plan", "--profile", "llama-3.1-8b") == 0
    out = capsys.readouterr().out
    assert "1A" in out and "220" in out and "estimated total" in out


@pytest.mark.slow
def test_tiny_pipeline_through_1a(tmp_path, runs):
    # The plumbing, not the scores: 20 items per task instead of the profile's 150 keep the
    # two evaluations to a minute on 2 cores. The seed's preference claims against the
    # served fixture teacher are measured and reported, never blocking (claim = true).
    text = (ROOT / "cogumi" / "profiles" / "tiny.toml").read_text()
    assert text.count("\nlimit = 150\n") == 1
    path = tmp_path / "tiny.toml"
    path.write_text(text.replace("\nlimit = 150\n", "\nlimit = 20\n"))
    assert _cogumi("run", "1A", "--profile", str(path), "--runs", str(runs)) == 0
    metrics = json.loads((runs / "tiny" / "1A" / "metrics.json").read_text())
    assert metrics["sft.heldout_loss_after"] < metrics["sft.heldout_loss_before"]
    for key in ("math.accuracy", "mmlu.accuracy", "code.pass@1"):
        assert key in metrics and f"before.{key}" in metrics
    for task in ("math", "code", "mmlu"):  # the fixture teacher answered the same 20 items
        assert 0 <= metrics[f"{task}.preference_vs_reference"] <= 1
        assert metrics[f"{task}.wins_vs_reference"] + metrics[f"{task}.losses_vs_reference"] \
            + 20 * metrics[f"{task}.ties_vs_reference"] == pytest.approx(20)
    folder = runs / "tiny" / "1A"
    assert (folder / "adapter" / "adapter_model.safetensors").exists()
    assert (folder / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    report = (runs / "tiny" / "reports" / "phase1a.md").read_text()
    assert "Before and after" in report and "Against its input (the base model)" in report
    assert "Against the reference model (tiny-teacher)" in report
    assert (folder / "reference_eval" / "items.jsonl").is_file()
    assert "95% interval" in report
    assert "(seed claim: measured, never blocking)" in report
    assert report.count("| **CLAIM ") == 3  # met or not, the three preference claims are shown


def test_force_rebuilds_a_tampered_phase(runs, capsys):
    assert _cogumi("run", "0", "--runs", str(runs)) == 0
    curated = runs / "tiny" / "0" / "curated.jsonl"
    curated.write_bytes(curated.read_bytes() + b"\n")
    assert _cogumi("run", "0", "--runs", str(runs)) == 2
    assert _cogumi("run", "0", "--force", "--runs", str(runs)) == 0
    manifest = json.loads((runs / "tiny" / "0" / "manifest.json").read_text())
    assert ledger.check_signoff(runs / "tiny", "0", manifest["config_sha256"]).ok


def test_changed_gate_regates_the_same_artifact_without_rebuilding(tmp_path, runs, capsys):
    profile, path = profile_with(tmp_path, "")
    assert _cogumi("run", "0", "--profile", str(path), "--runs", str(runs)) == 0
    manifest = (runs / profile.name / "0" / "manifest.json").read_bytes()
    path.write_text(path.read_text() + '\n[[gate_overrides]]\nphase = "0"\n'
                    'metric = "records.kept"\nwaive = true\n'
                    'why = "a changed gate: the artifact is the same"\n')
    capsys.readouterr()
    assert _cogumi("run", "0", "--profile", str(path), "--runs", str(runs)) == 0
    out = capsys.readouterr().out
    assert "re-gating the same" in out and "WAIVED" in out
    assert (runs / profile.name / "0" / "manifest.json").read_bytes() == manifest  # not rebuilt


def test_keep_going_measures_past_a_failed_gate_and_never_signs_off(tmp_path, runs, capsys,
                                                                   monkeypatch):
    """`run --keep-going`: a phase that fails its gates does not stop the chain, but what is
    built on it is marked as such, reported, and never signed off, even when its own gates
    pass. Phase 1A's function is replaced by one that reports passing metrics: this tests
    the sequencing, not the training."""
    from cogumi import runner
    from cogumi.gates import resolve_gates

    profile, path = profile_with(tmp_path, "")
    # Every record is now "too short": phase 0 keeps nothing and fails records.kept > 0.
    path.write_text(path.read_text().replace("min_response_chars = 1",
                                             "min_response_chars = 100000"))
    from cogumi.profile import load_profile
    profile = load_profile(str(path))
    nudge = {">=": 0, "<=": 0, ">": 1, "<": -1, "==": 0}
    passing = {g.metric: g.threshold + nudge[g.op] for g in resolve_gates("1A", profile)}
    real = runner._phase_function
    built = []

    def fake_1a(ctx):
        built.append(ctx.phase.id)
        assert ctx.input_dir("0").joinpath("curated.jsonl").is_file()
        return dict(passing)

    monkeypatch.setattr(runner, "_phase_function",
                        lambda phase: fake_1a if phase.id == "1A" else real(phase))
    args = ("--profile", str(path), "--runs", str(runs))
    assert _cogumi("run", "1A", *args) == 1  # stops at 0, as always
    assert built == [] and not (runs / profile.name / "1A").exists()

    capsys.readouterr()
    assert _cogumi("run", "1A", "--keep-going", *args) == 1
    out = " ".join(capsys.readouterr().out.split())  # rich wraps at the terminal width
    assert built == ["1A"] and "2 phase(s) not signed off" in out
    assert "phase 1A not signed off: built on 0, whose gates failed" in out
    manifest = json.loads((runs / profile.name / "1A" / "manifest.json").read_text())
    assert manifest["inputs"]["0"]["gates_failed"] is True
    last = ledger.latest(runs / profile.name, "1A")
    assert last["built_on_failed_inputs"] == ["0"] and not last["passed"]
    assert all(g["passed"] or g.get("waived") for g in last["gates"]), last["gates"]  # its own gates pass: still not signed off
    report = (runs / profile.name / "reports" / "phase1a.md").read_text()
    assert "NOT SIGNED OFF" in report and "Built on phase 0, which failed its gates" in report

    # Again: both failed artifacts are intact and current, so neither is rebuilt.
    capsys.readouterr()
    assert _cogumi("run", "1A", "--keep-going", *args) == 1
    out = " ".join(capsys.readouterr().out.split())  # rich wraps at the terminal width
    assert built == ["1A"] and out.count("using its artifact") == 2
    assert "phase 1A: last gate run failed (built on failed phase 0)" in out


def test_progress_prints_plain_lines_where_the_console_is_no_terminal(monkeypatch):
    """rich draws nothing on a log file until a bar ends: a run under nohup or CI would be
    silent for the 25 minutes of a real model's evaluation. LoggedProgress says where it is."""
    import io

    from rich.console import Console

    from cogumi.runner import LoggedProgress

    def lines(terminal: bool, every_s: float) -> list[str]:
        buf = io.StringIO()
        monkeypatch.setattr(LoggedProgress, "every_s", every_s)
        with LoggedProgress(console=Console(file=buf, force_terminal=terminal, width=100)) as p:
            bar = p.add_task("generating (3 requests)", total=3)
            for _ in range(3):
                p.advance(bar)
        return [x for x in buf.getvalue().splitlines() if x.startswith("generating (3 requests):")]

    every = lines(False, 0.0)
    assert [x.split(",")[0] for x in every] == ["generating (3 requests): 1/3",
                                                "generating (3 requests): 2/3",
                                                "generating (3 requests): 3/3"]
    # At most one line a minute while running, and always the end.
    assert [x.split(",")[0] for x in lines(False, 3600.0)] == ["generating (3 requests): 3/3"]
    assert lines(True, 0.0) == []  # a terminal has the bar itself
