"""The threshold rule (issue 11): every threshold in force is the seed's number from gates/ or
the output of the gate file's declared rule, computed from what exists before the phase runs;
no shipped profile sets one, and none waives a capability gate."""

from __future__ import annotations

import json
import math
import struct
import tomllib

import pytest

from cogumi import thresholds
from cogumi.gates import _load_declared, gate_file_path, resolve_gates
from cogumi.profile import load_profile, profile_names
from cogumi.registry import get_phase, implemented_phases
from cogumi.signoff import GateResult, signoff_entry

from .conftest import ROOT


def write_safetensors(path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """A header-only-valid safetensors file: the rule reads names, dtypes and shapes."""
    sizes = {"F32": 4, "BF16": 2, "F16": 2}
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = sizes[dtype] * math.prod(shape)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * offset)


@pytest.fixture
def runs_with_2e_model(tmp_path):
    model = tmp_path / "2E" / "model"
    model.mkdir(parents=True)
    write_safetensors(model / "model.safetensors", {
        "model.embed_tokens.weight": ("F32", [1000, 64]),
        "model.layers.0.self_attn.q_proj.weight": ("F32", [64, 64]),
        "model.layers.0.mlp.down_proj.weight": ("F32", [64, 256]),
        "model.layers.0.input_layernorm.weight": ("F32", [64])})
    (model / "tokenizer.json").write_text("x" * 1000)
    return tmp_path


def test_format_budget_is_computed_from_parameter_counts(runs_with_2e_model):
    mb, how = thresholds.compute("format_budget_mb", {
        "model_from": "2E", "linear_bits": 4.25, "embedding_bits": "stored",
        "other_bits": "stored"}, runs_with_2e_model)
    linear = 64 * 64 + 64 * 256
    expected = (linear * 4.25 + 1000 * 64 * 32 + 64 * 32) / 8 / 1e6 + 1000 / 1e6
    assert mb == pytest.approx(expected)
    assert "64,000 embedding" in how and "tokenizer 1,000 bytes" in how


def test_tensor_budget_counts_tensor_data_and_each_linear_shape(runs_with_2e_model):
    mb, how = thresholds.compute("tensor_budget_mb", {
        "model_from": "2E", "linear_bits": 4.25, "embedding_bits": "stored",
        "other_bits": "stored", "per_linear_bits": 128}, runs_with_2e_model)
    linear = 64 * 64 + 64 * 256
    expected = (linear * 4.25 + 2 * 128 + 1000 * 64 * 32 + 64 * 32) / 8 / 1e6
    assert mb == pytest.approx(expected)
    assert "2 Linear x 128 bits" in how and "tokenizer" not in how


def test_the_tensor_metric_has_the_rule_scope(runs_with_2e_model):
    # The metric the rule is gated against counts tensor data only: the safetensors header,
    # config files and the tokenizer (1,000 bytes here) are outside both.
    model = runs_with_2e_model / "2E" / "model"
    data = 4 * (1000 * 64 + 64 * 64 + 64 * 256 + 64)
    assert thresholds.tensor_payload_bytes(model) == data
    assert (model / "model.safetensors").stat().st_size > data


def test_a_rule_that_cannot_be_computed_fails_its_gate(tmp_path):
    profile = load_profile("tiny")
    gates = {g.metric: g for g in resolve_gates("2B", profile, runs_dir=tmp_path)}
    size = gates["weights.tensor_mb"]
    assert math.isnan(size.threshold) and "not computed" in size.source
    assert not size.check(0.001)


def _declared_by_metric(phase_id):
    phase = get_phase(phase_id)
    return {d.gate.metric: d for d in _load_declared(gate_file_path(phase), phase)}


@pytest.mark.parametrize("name", profile_names())
def test_every_threshold_in_force_is_the_seed_number_or_the_rule_output(name, runs_with_2e_model):
    profile = load_profile(name)
    raw = tomllib.loads((ROOT / profile.source_file).read_text())
    for i, override in enumerate(raw.get("gate_overrides", []), start=1):
        assert "threshold" not in override, f"{profile.source_file}: gate_overrides[{i}]"
    for phase in implemented_phases():
        declared = _declared_by_metric(phase.id)
        for gate in resolve_gates(phase.id, profile, runs_dir=runs_with_2e_model):
            d = declared[gate.metric]
            if profile.gating.thresholds == "rules" and d.rule is not None:
                args = {k: v for k, v in d.rule.items() if k != "name"}
                expected, _ = thresholds.compute(d.rule["name"], args, runs_with_2e_model)
            else:
                expected = d.gate.threshold
            assert gate.threshold == expected, (name, phase.id, gate.metric)


@pytest.mark.parametrize("name", profile_names())
def test_no_shipped_profile_waives_a_capability_gate(name):
    profile = load_profile(name)
    for phase in implemented_phases():
        for gate in resolve_gates(phase.id, profile):
            assert not (gate.capability and gate.waived), (name, phase.id, gate.metric)


def test_a_waived_capability_gate_is_never_a_signoff(tmp_path):
    def result(metric, passed, waived=False, capability=False):
        return GateResult(metric, ">", 0.0, "test", "why", 1.0, passed, "", waived, capability)

    folder = tmp_path / "1A"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"phase": "1A", "outputs": {},
                                                   "profile_sha256": "0" * 64}))
    profile = load_profile("tiny")
    ok = signoff_entry(profile, "1A", tmp_path, [result("a", True),
                                                  result("b", False, waived=True)], tmp_path)
    assert ok["passed"] and ok["capability_absent"] == []
    absent = signoff_entry(profile, "1A", tmp_path, [
        result("a", True), result("math.accuracy.lower95_above_chance", False, waived=True,
                                  capability=True)], tmp_path)
    assert not absent["passed"]
    assert absent["capability_absent"] == ["math.accuracy.lower95_above_chance"]


# The seed's claims against a frontier model (cogumi/gates.py): which gates they are is fixed
# here, so a gate cannot quietly become a claim that blocks nothing.
SEED_CLAIMS = {("1A", f"{t}.preference_vs_reference") for t in ("math", "code", "mmlu")} | {
    ("1B", f"{t}.{kind}_vs_reference") for t in ("math", "code")
    for kind in ("preference", "ties")} | {
    ("5B", f"claim.{d}.system_minus_teacher_lower") for d in ("code", "reasoning", "automation")}


def test_the_seed_claims_are_exactly_the_judge_made_and_beats_the_teacher_numbers():
    found = {(phase.id, d.gate.metric) for phase in implemented_phases()
             for d in _load_declared(gate_file_path(phase), phase) if d.gate.claim}
    assert found == SEED_CLAIMS


def _result(metric, passed, waived=False, capability=False, claim=False):
    return GateResult(metric, ">", 0.0, "test", "why", 1.0, passed, "", waived, capability,
                      claim)


def test_a_seed_claim_never_blocks_and_is_never_the_pass_a_signoff_needs(tmp_path):
    folder = tmp_path / "1A"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"phase": "1A", "outputs": {},
                                                   "profile_sha256": "0" * 64}))
    profile = load_profile("tiny")
    claim_unmet = _result("mmlu.preference_vs_reference", False, claim=True)
    entry = signoff_entry(profile, "1A", tmp_path, [_result("a", True), claim_unmet], tmp_path)
    assert entry["passed"] and entry["claims_not_met"] == ["mmlu.preference_vs_reference"]
    only_claims = signoff_entry(profile, "1A", tmp_path, [
        _result("mmlu.preference_vs_reference", True, claim=True)], tmp_path)
    assert not only_claims["passed"] and only_claims["claims_not_met"] == []
    failed = signoff_entry(profile, "1A", tmp_path, [_result("a", False), claim_unmet], tmp_path)
    assert not failed["passed"]


def test_a_claim_is_neither_capability_nor_ruled_nor_waived(tmp_path):
    from cogumi.gates import GateFileError, load_gate_file
    phase = get_phase("1A")
    bad = tmp_path / "phase1a.toml"
    bad.write_text('phase = "1A"\n[[gates]]\nmetric = "math.preference_vs_reference"\n'
                   'op = ">="\nthreshold = 0.41\nwhy = "w"\nclaim = true\ncapability = true\n')
    with pytest.raises(GateFileError, match=r"gates\[1\]: key 'claim'"):
        load_gate_file(bad, phase)
    text = (ROOT / "cogumi" / "profiles" / "tiny.toml").read_text()
    path = tmp_path / "tiny.toml"
    path.write_text(text + '\n[[gate_overrides]]\nphase = "1A"\n'
                    'metric = "mmlu.preference_vs_reference"\nwaive = true\n'
                    'why = "a claim decides nothing to waive"\n')
    with pytest.raises(GateFileError, match="is a seed claim"):
        resolve_gates("1A", load_profile(str(path)))


def test_a_claim_not_met_is_an_xfail_in_the_gate_run_and_reads_so(tmp_path):
    """Through pytest and its JUnit XML, as every sign-off is made."""
    from cogumi.gates import gate_mark, gates_passed
    from cogumi.signoff import run_gate_tests
    profile = load_profile("tiny")
    runs = tmp_path / profile.name
    gates = resolve_gates("1A", profile, runs_dir=runs)
    (runs / "1A").mkdir(parents=True)
    # Every gate that decides passes at its threshold (all are >= or >); the claims miss.
    metrics = {g.metric: (g.threshold - 0.1 if g.claim else g.threshold + 1.0) for g in gates}
    (runs / "1A" / "metrics.json").write_text(json.dumps(metrics))
    results, junit = run_gate_tests(profile, "1A", runs)
    assert "pytest.xfail" in junit.read_text()
    claims = [r for r in results if r.claim]
    assert len(claims) == 3 and not any(r.passed for r in claims)
    assert all("SEED CLAIM NOT MET" in r.message for r in claims)
    assert all(r.passed for r in results if not r.claim)
    assert {gate_mark(r) for r in claims} == {"CLAIM NOT MET"}
    dicts = [r.__dict__ for r in results]
    assert gates_passed(dicts) == f"{len(results) - 3}/{len(results) - 3} passed, " \
                                  f"seed claims 0/3 met"
