"""Every shipped profile validates; bad profiles fail with one line naming file and key."""

import re

import pytest

from cogumi.gates import validate_overrides
from cogumi.profile import ProfileError, load_profile, parse_profile, profile_names

from .conftest import ROOT


@pytest.mark.parametrize("name", profile_names())
def test_every_shipped_profile_validates(name):
    profile = load_profile(name)
    validate_overrides(profile)
    assert profile.name == name
    assert len(profile.sha256) == 64


def test_the_three_required_profiles_ship():
    assert {"tiny", "gemma-270m", "llama-3.1-8b"} <= set(profile_names())


def test_seed_run_profile_matches_the_seed():
    p = load_profile("llama-3.1-8b")
    assert p.model.hub_id == "meta-llama/Llama-3.1-8B-Instruct"
    assert p.training.lora_rank == 64 and p.training.epochs == 3
    assert p.training.backend in ("unsloth", "qlora-bnb")
    assert {s.hub_id for s in p.data.sources} >= {"Open-Orca/OpenOrca", "Anthropic/hh-rlhf"}
    # 640,637 examples x 3 epochs at the profile's examples per step: the seed's ~28K steps
    steps = 640_637 * 3 / (p.training.batch_size * p.training.grad_accum)
    assert 27_000 < steps < 29_000
    # Where it runs is the preflight's question (cogumi.preflight), not a constant.
    assert "runnable_here" not in type(p).model_fields
    with pytest.raises(ProfileError, match="unknown key 'runnable_here'"):
        parse_profile("runnable_here = false\n" + _tiny_text(), "x.toml")


def _tiny_text():
    return (ROOT / "cogumi/profiles/tiny.toml").read_text()


def test_unknown_key_is_named():
    text = _tiny_text().replace("lora_rank = 16", "lora_rank = 16\nlora_rnak = 4")
    with pytest.raises(ProfileError, match=r"x\.toml: unknown key 'training\.lora_rnak'"):
        parse_profile(text, "x.toml")


def test_wrong_type_is_named():
    text = _tiny_text().replace("lora_rank = 16", 'lora_rank = "sixteen"')
    with pytest.raises(ProfileError, match=r"key 'training\.lora_rank'"):
        parse_profile(text, "x.toml")


def test_missing_key_is_named():
    text = _tiny_text().replace('backend = "peft-lora"\n', "")
    with pytest.raises(ProfileError, match=r"missing key 'training\.backend'"):
        parse_profile(text, "x.toml")


def test_invalid_toml_names_file():
    with pytest.raises(ProfileError, match=r"^x\.toml: not valid TOML"):
        parse_profile("name = ", "x.toml")


def test_unknown_profile_lists_the_shipped_ones():
    with pytest.raises(ProfileError, match="shipped profiles: .*tiny"):
        load_profile("tinny")


def test_error_is_one_line():
    text = _tiny_text().replace("lora_rank = 16", "lora_rank = -1\nbogus = 1")
    with pytest.raises(ProfileError) as info:
        parse_profile(text, "x.toml")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("old,new,key", [
    ("threshold = 0.8", "threshold = 1.5", "data.dedup.threshold"),
    ("num_perm = 128", "num_perm = 4", "data.dedup.num_perm"),
    ('shingle = "word"', 'shingle = "sentence"', "data.dedup.shingle"),
    ("num_perm = 128", "num_perm = 128\nbands = 16", "data.dedup.bands"),  # derived, not set
    ("max_record_chars = 8000", "max_record_chars = 0", "data.max_record_chars"),
])
def test_phase0_settings_are_validated(old, new, key):
    text = _tiny_text().replace(old, new)
    with pytest.raises(ProfileError, match=rf"key '{re.escape(key)}'"):
        parse_profile(text, "x.toml")


@pytest.mark.parametrize("value", ["0", "-2", "1.5", '"two"'])
def test_training_processes_are_validated_naming_the_key(value):
    text = _tiny_text().replace("price_per_hour_usd = 0.05",
                                f"price_per_hour_usd = 0.05\nprocesses = {value}")
    with pytest.raises(ProfileError, match=r"^x\.toml: key 'hardware\.processes'"):
        parse_profile(text, "x.toml")


def test_training_processes_default_to_one_and_are_read():
    assert all(load_profile(n).hardware.processes == 1 for n in profile_names())
    text = _tiny_text().replace("price_per_hour_usd = 0.05",
                                "price_per_hour_usd = 0.05\nprocesses = 2")
    assert parse_profile(text, "x.toml").hardware.processes == 2


def test_planted_truth_gates_are_waived_only_where_there_is_no_truth():
    from cogumi.gates import resolve_gates
    for name in ("tiny", "gemma-270m", "llama-3.1-8b"):
        profile = load_profile(name)
        gates = {g.metric: g for g in resolve_gates("0", profile)}
        waived = {m for m in ("dedup.planted_precision", "dedup.planted_recall")
                  if gates[m].waived}
        assert (profile.data.planted is None) == (waived == {"dedup.planted_precision",
                                                             "dedup.planted_recall"}), name
        assert profile.data.dedup.threshold == 0.8  # the seed's Jaccard threshold


def test_config_digest_covers_only_the_tables_a_phase_reads():
    from cogumi.registry import get_phase

    tiny = load_profile("tiny")
    tables = {pid: get_phase(pid).config for pid in ("0", "1A", "1B")}
    digest = {pid: tiny.config_digest(t) for pid, t in tables.items()}
    sc = tiny.self_consistency.model_copy(update={"epochs": 7})
    edited = tiny.model_copy(update={"self_consistency": sc})
    # A 1B setting changes 1B's digest only: 0 and 1A stay signed off.
    assert edited.config_digest(tables["0"]) == digest["0"]
    assert edited.config_digest(tables["1A"]) == digest["1A"]
    assert edited.config_digest(tables["1B"]) != digest["1B"]
    # No table list means every table; gate overrides re-gate, they do not rebuild.
    assert tiny.config_digest(()) != edited.config_digest(())
    fewer = tiny.model_copy(update={"gate_overrides": tiny.gate_overrides[:1]})
    assert fewer.config_digest(tables["1B"]) == digest["1B"]


@pytest.mark.parametrize("name", profile_names())
def test_compression_starts_from_1c_where_the_profile_can_run_it(name):
    """The seed's chain is 1B -> 1C -> 2A. A profile without [distill] cannot run 1C (it
    refuses), so there 2A and 2E read 1B: every shipped profile has a runnable chain."""
    from cogumi.registry import get_phase, upstream

    profile = load_profile(name)
    chain = [p.id for p in upstream("2A", profile)]
    trained = "1C" if profile.distill is not None else "1B"
    assert get_phase("2A").inputs_for(profile) == (trained, "0")
    assert get_phase("2E").inputs_for(profile) == ("2A", "0", trained)
    if trained == "1C":
        assert chain.index("1B") < chain.index("1C")
    else:
        assert "1C" not in chain and "1C" not in [p.id for p in upstream("5B", profile)]
    # Without a profile: the declared chain, 1C included (nox installs its extras).
    assert get_phase("2A").inputs == ("1C", "0")


def test_plan_shows_what_each_phase_reads_under_the_profile(capsys):
    from cogumi import cli

    for name, trained, other in (("tiny", "1C", "1B"), ("gemma-270m", "1B", "1C")):
        assert cli.main(["plan", "--profile", name]) == 0
        out = capsys.readouterr().out
        row = next(line for line in out.splitlines() if line.startswith("│ 2A "))
        assert trained in row and other not in row, row
