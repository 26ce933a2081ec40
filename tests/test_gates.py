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
    seed_criteria = {"consistency": (">=", 0.60), "math.accuracy": (">=", 0.65),
                     "code.pass@1": (">=", 0.70), "math.ties": ("<", 0.30),
                     "code.ties": ("<", 0.20)}
    assert {m: gates[m] for m in seed_criteria} == seed_criteria
    # and the change must come from the phase itself, not from thresholds
    assert gates["consistency.gain"] == (">", 0)


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


def test_override_is_explicit_and_sourced(tmp_path):
    profile, path = profile_with(tmp_path, '[[gate_overrides]]\nphase = "1B"\n'
                                 'metric = "consistency"\nthreshold = 0.2\n'
                                 'why = "fixture model cannot reach the seed figure"\n',
                                 base="gemma-270m")  # a profile without its own 1B overrides
    gates = {g.metric: g for g in resolve_gates("1B", profile)}
    assert gates["consistency"].threshold == 0.2
    assert gates["consistency"].source.startswith("profile gemma-270m")
    assert "seed: consistency >= 0.6" in gates["consistency"].why
    assert gates["math.accuracy"].source == "gates/phase1b.toml"


def test_override_of_an_ungated_metric_is_refused(tmp_path):
    profile, path = profile_with(tmp_path, '[[gate_overrides]]\nphase = "1B"\n'
                                 'metric = "consistancy"\nthreshold = 0.2\n'
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
    profile, _ = profile_with(tmp_path, '[[gate_overrides]]\nphase = "1B"\nmetric = "code.ties"\n'
                              'waive = true\nwhy = "no code tasks in this profile yet"\n',
                              base="gemma-270m")
    gates = {g.metric: g for g in resolve_gates("1B", profile)}
    assert gates["code.ties"].waived and "waiver" in gates["code.ties"].source
    assert not gates["math.ties"].waived


def test_override_needs_threshold_or_waiver(tmp_path):
    from cogumi.profile import ProfileError
    with pytest.raises(ProfileError, match="give either a threshold or waive"):
        profile_with(tmp_path, '[[gate_overrides]]\nphase = "1B"\nmetric = "code.ties"\n'
                     'why = "neither given, which is a mistake"\n')
