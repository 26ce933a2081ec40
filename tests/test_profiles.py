"""Every shipped profile validates; bad profiles fail with one line naming file and key."""

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
    assert not p.runnable_here


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
