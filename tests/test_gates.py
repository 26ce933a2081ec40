"""Gate files: validation with named keys, explicit overrides, and comparison semantics."""

import math
import operator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cogumi.gates import COMPARATORS, Gate, GateFileError, load_gate_file, resolve_gates
from cogumi.registry import PHASES, get_phase

from .conftest import ROOT, profile_with


@pytest.mark.parametrize("phase", PHASES, ids=lambda p: p.id)
def test_every_phase_has_a_valid_gate_file(phase):
    gates = load_gate_file(ROOT / phase.gate_file, phase)
    assert gates and all(g.why for g in gates)


def test_seed_thresholds_for_1b():
    gates = {g.metric: (g.op, g.threshold) for g in
             load_gate_file(ROOT / "gates/phase1b.toml", get_phase("1B"))}
    # The seed's five criteria, at its numbers; its MATH/CODE scores and ties were measured
    # against GPT-4's own answers, so they are gated as such (ORIGIN_FINDINGS.md).
    seed_criteria = {"consistency": (">=", 0.60), "math.preference_vs_reference": (">=", 0.65),
                     "code.preference_vs_reference": (">=", 0.70),
                     "math.ties_vs_reference": ("<", 0.30), "code.ties_vs_reference": ("<", 0.20)}
    assert {m: gates[m] for m in seed_criteria} == seed_criteria
    # and the change must come from the phase itself: a paired interval above zero
    assert gates["consistency.gain_lower"] == (">", 0)
    assert gates["vs_input.worst_delta_upper"] == (">=", 0)


# 3A-3C ship an adapter beside the unchanged base: each is judged against the base by its
# own gates (gain on its benchmark, the bound on its damage elsewhere, its benchmark above
# chance: test_modifier_phases_gate_gain_damage_and_capability).
MODIFIER_PHASES = ("3A", "3B", "3C")
# Phases that change no model weights: curation, packing, calibration, routing (4A-4C),
# bundling and validation (5A, 5B).
_NO_MODEL_CHANGE = ("0", "2D", "2F", "4A", "4B", "4C", "5A", "5B")


@pytest.mark.parametrize("phase", [p for p in PHASES if p.implemented and p.id not in
                                   (*_NO_MODEL_CHANGE, *MODIFIER_PHASES)], ids=lambda p: p.id)
def test_every_phase_that_changes_the_model_gates_not_worse_and_capability(phase):
    gates = {g.metric: g for g in load_gate_file(ROOT / phase.gate_file, phase)}
    assert (gates["vs_input.worst_delta_upper"].op, gates["vs_input.worst_delta_upper"].threshold) \
        == (">=", 0)
    for score in ("math.accuracy", "code.pass@1", "mmlu.accuracy"):
        g = gates[f"{score}.lower95_above_chance"]
        assert g.capability and (g.op, g.threshold) == (">", 0)


@pytest.mark.parametrize("phase_id", MODIFIER_PHASES)
def test_modifier_phases_gate_gain_damage_and_capability(phase_id):
    phase = get_phase(phase_id)
    gates = {g.metric: g for g in load_gate_file(ROOT / phase.gate_file, phase)}
    assert (gates["gain_lower"].op, gates["gain_lower"].threshold) == (">", 0)
    assert gates["off_domain.worst_delta_lower"].op == ">="
    g = gates["task.lower95_above_chance"]
    assert g.capability and (g.op, g.threshold) == (">", 0)


def _write(tmp_path, body, phase="1B"):
    path = tmp_path / "phase1b.toml"
    path.write_text(f'phase = "{phase}"\n' + body)
    return path


def test_misspelt_metric_is_named(tmp_path):
    path = _write(tmp_path, '[[gates]]\nmetric = "consistancy"\nop = ">="\nthreshold = 0.6\n'
                            'why = "seed"\n')
    with pytest.raises(GateFileError, match=r"gates\[1\]: key 'metric': unknown metric "
                                            r"'consistancy'"):
        load_gate_file(path, get_phase("1B"))


def test_misspelt_operator_is_named(tmp_path):
    path = _write(tmp_path, '[[gates]]\nmetric = "consistency"\nop = "=>"\nthreshold = 0.6\n'
                            'why = "seed"\n')
    with pytest.raises(GateFileError, match=r"key 'op': unknown comparator '=>'"):
        load_gate_file(path, get_phase("1B"))


def test_unknown_gate_key_is_named(tmp_path):
    path = _write(tmp_path, '[[gates]]\nmetric = "consistency"\nop = ">="\nthreshold = 0.6\n'
                            'why = "seed"\nthreshhold = 1\n')
    with pytest.raises(GateFileError, match=r"unknown key 'threshhold'"):
        load_gate_file(path, get_phase("1B"))


def test_gate_file_for_the_wrong_phase(tmp_path):
    path = _write(tmp_path, '[[gates]]\nmetric = "consistency"\nop = ">="\nthreshold = 0.6\n'
                            'why = "seed"\n', phase="1A")
    with pytest.raises(GateFileError, match=r"key 'phase' is '1A', expected '1B'"):
        load_gate_file(path, get_phase("1B"))


def test_a_profile_cannot_set_a_threshold(tmp_path):
    from cogumi.profile import ProfileError
    with pytest.raises(ProfileError, match=r"gate_overrides.*threshold"):
        profile_with(tmp_path, '[[gate_overrides]]\nphase = "1B"\nmetric = "consistency"\n'
                     'threshold = 0.2\nwhy = "fixture model cannot reach the seed figure"\n',
                     base="gemma-270m")


def test_waiver_of_an_ungated_metric_is_refused(tmp_path):
    profile, path = profile_with(tmp_path, '[[gate_overrides]]\nphase = "1B"\n'
                                 'metric = "consistancy"\nwaive = true\n'
                                 'why = "a typo should not pass silently"\n', base="gemma-270m")
    appended = len(profile.gate_overrides)  # 1-based: the override added above is the last
    with pytest.raises(GateFileError,
                       match=rf"gate_overrides\[{appended}\]: key 'metric': 'consistancy'"):
        resolve_gates("1B", profile)


def test_missing_or_nan_value_never_passes():
    gate = Gate("consistency", "<=", 1.0, "why", "test")
    assert not gate.check(None)
    assert not gate.check(float("nan"))


@given(op=st.sampled_from(sorted(COMPARATORS)),
       threshold=st.floats(allow_nan=False, allow_infinity=False, width=32),
       value=st.floats(allow_nan=False, allow_infinity=False, width=32))
def test_check_is_the_comparator(op, threshold, value):
    gate = Gate("m", op, threshold, "why", "test")
    assert gate.check(value) == COMPARATORS[op](value, threshold)
    # The boundary belongs to the inclusive comparators only.
    assert Gate("m", op, value, "w", "t").check(value) == (op in (">=", "<=", "=="))


@given(value=st.floats(allow_nan=False, allow_infinity=False))
def test_ge_and_lt_partition_every_value(value):
    ge, lt = Gate("m", ">=", 0.6, "w", "t"), Gate("m", "<", 0.6, "w", "t")
    assert ge.check(value) != lt.check(value)
    assert ge.check(value) == operator.ge(value, 0.6)
    assert not math.isnan(value)


def test_waiver_is_explicit_and_marked(tmp_path):
    profile, _ = profile_with(tmp_path, '[[gate_overrides]]\nphase = "1B"\nmetric = "consistency"\n'
                              'waive = true\nwhy = "no diagnostic prompts in this profile"\n',
                              base="gemma-270m")
    gates = {g.metric: g for g in resolve_gates("1B", profile)}
    assert gates["consistency"].waived and "waiver" in gates["consistency"].source
    assert not gates["consistency.gain_lower"].waived


def test_override_must_waive(tmp_path):
    from cogumi.profile import ProfileError
    with pytest.raises(ProfileError, match="waive"):
        profile_with(tmp_path, '[[gate_overrides]]\nphase = "1B"\nmetric = "consistency"\n'
                     'why = "neither given, which is a mistake"\n')
