"""The walking skeleton end to end on the tiny profile: run, gate, sign off, refuse.

Phase 0 tests are fast (fixture data only). The 1A test trains the fixture model for real on
CPU (about a minute) and checks that the sign-off report shows before and after.
"""

import json
import time

import pytest

from cogumi import cli, ledger
from cogumi.ledger import State

from .conftest import profile_with


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


def test_unimplemented_phase_refuses(runs, capsys):
    assert _cogumi("run", "5B", "--no-inputs", "--runs", str(runs)) == 2
    assert "not implemented" in capsys.readouterr().out


def test_plan_only_profile_refuses_to_run(runs, capsys):
    assert _cogumi("run", "0", "--profile", "llama-3.1-8b", "--runs", str(runs)) == 2
    assert "not runnable on this machine" in capsys.readouterr().out


def test_failing_gate_exits_1_and_does_not_sign_off(tmp_path, runs, capsys):
    profile, path = profile_with(tmp_path, "")
    text = path.read_text().replace("min_response_chars = 1", "min_response_chars = 100000")
    path.write_text(text)  # every record is now "too short": nothing is kept
    assert _cogumi("run", "0", "--profile", str(path), "--runs", str(runs)) == 1
    out = capsys.readouterr().out
    assert "records.kept" in out and "FAIL" in out
    check = ledger.check_signoff(runs / profile.name, "0", "x")
    assert check.state is State.FAILED


def test_status_and_plan_render(runs, capsys):
    assert _cogumi("run", "0", "--runs", str(runs)) == 0
    capsys.readouterr()
    assert _cogumi("status", "--runs", str(runs)) == 0
    out = capsys.readouterr().out
    assert "signed off" in out and "not implemented" in out
    assert _cogumi("plan", "--profile", "llama-3.1-8b") == 0
    out = capsys.readouterr().out
    assert "1A" in out and "220" in out and "estimated total" in out


@pytest.mark.slow
def test_tiny_pipeline_through_1a(runs):
    assert _cogumi("run", "1A", "--runs", str(runs)) == 0
    metrics = json.loads((runs / "tiny" / "1A" / "metrics.json").read_text())
    assert metrics["sft.heldout_loss_after"] < metrics["sft.heldout_loss_before"]
    for key in ("math.accuracy", "mmlu.accuracy", "code.pass@1"):
        assert key in metrics and f"before.{key}" in metrics
    folder = runs / "tiny" / "1A"
    assert (folder / "adapter" / "adapter_model.safetensors").exists()
    assert (folder / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    report = (runs / "tiny" / "reports" / "phase1a.md").read_text()
    assert "Before and after" in report and "profile tiny (override" in report


def test_force_rebuilds_a_tampered_phase(runs, capsys):
    assert _cogumi("run", "0", "--runs", str(runs)) == 0
    curated = runs / "tiny" / "0" / "curated.jsonl"
    curated.write_bytes(curated.read_bytes() + b"\n")
    assert _cogumi("run", "0", "--runs", str(runs)) == 2
    assert _cogumi("run", "0", "--force", "--runs", str(runs)) == 0
    manifest = json.loads((runs / "tiny" / "0" / "manifest.json").read_text())
    assert ledger.check_signoff(runs / "tiny", "0", manifest["config_sha256"]).ok
