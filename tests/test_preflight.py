"""The preflight: a run that lacks a package, a file, a fitting data schema, the converter or
a large enough GPU is refused before its first phase, in one line naming the thing and the fix."""

from __future__ import annotations

import json
import re

import pytest

from cogumi import needs, preflight
from cogumi.cli import main
from cogumi.profile import load_profile, parse_profile
from cogumi.registry import implemented_phases

from .conftest import ROOT, profile_with


def _refusal(profile, phases) -> str:
    with pytest.raises(preflight.PreflightError) as err:
        preflight.check(profile, phases)
    message = str(err.value)
    assert "\n" not in message
    return message


def _with_sources(tmp_path, sources_toml: str):
    """The tiny profile with its [data] sources replaced."""
    text = (ROOT / "cogumi" / "profiles" / "tiny.toml").read_text()
    text, n = re.subn(r"sources = \[\n.*?\n\]\n", f"sources = [\n{sources_toml}\n]\n", text,
                      flags=re.S)
    assert n == 1
    path = tmp_path / "tiny-sources.toml"
    path.write_text(text)
    return parse_profile(text, str(path))


def test_every_implemented_phase_declares_its_packages():
    assert {p.id for p in implemented_phases()} <= set(needs.PHASE_PACKAGES)


def test_the_tiny_pipeline_passes_here():
    # Everything but 2C (its converter is fetched from PyPI: test_converter.py, nox -s tests).
    ids = [p.id for p in implemented_phases() if p.id not in needs.CONVERTER_PHASES]
    preflight.check(load_profile("tiny"), ids)


def test_a_missing_optional_package_names_the_extra(tmp_path, monkeypatch):
    real = needs.importlib.util.find_spec
    monkeypatch.setattr(needs.importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    profile, _ = profile_with(tmp_path, "")
    profile = profile.model_copy(update={"training": profile.training.model_copy(
        update={"backend": "qlora-bnb"})})
    message = _refusal(profile, ["0", "1A"])
    assert "package bitsandbytes is not installed: pip install bitsandbytes (cogumi's 'gpu' " \
        "extra)" in message
    assert "phases 0, 1A" in message


def test_a_packaged_model_that_is_not_installed_is_named(tmp_path):
    gemma = load_profile("gemma-270m")
    assert needs.extras_for(gemma.model_dump(by_alias=True), ["0", "1A"],
                            preflight.optional_dependencies()) == ["gemma"]
    absent = gemma.model_copy(update={"model": gemma.model.model_copy(
        update={"package": "cogumi_test_no_such_model_pkg"})})
    message = _refusal(absent, ["1A"])
    assert "package cogumi_test_no_such_model_pkg is not installed" in message
    assert "pip install cogumi-test-no-such-model-pkg" in message


def test_a_missing_named_file_is_refused_by_name(tmp_path):
    profile, path = profile_with(tmp_path, "")
    text = path.read_text().replace('math = "fixtures/benchmarks/math.jsonl"',
                                    'math = "fixtures/benchmarks/no-such-math.jsonl"')
    profile = parse_profile(text, str(path))
    message = _refusal(profile, ["1A"])
    assert f"fixtures/benchmarks/no-such-math.jsonl (named by {path}) does not exist" in message


def test_a_local_source_in_another_schema_is_refused(tmp_path):
    profile = _with_sources(tmp_path, '  { name = "dolly", schema = "dolly", '
                                      'path = "fixtures/sources/anthropic_hh.jsonl" },')
    message = _refusal(profile, ["0"])
    assert "source 'dolly': fixtures/sources/anthropic_hh.jsonl does not have schema 'dolly'" \
        in message
    assert "missing field 'instruction'" in message and "chosen, rejected" in message


def test_a_hub_dataset_with_an_unexpected_schema_is_refused(tmp_path, monkeypatch):
    # A folder laid out as a hub dataset: datasets reads it by the same call as a hub id.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "fake-dolly"
    folder.mkdir()
    rows = [{"chosen": f"\n\nHuman: q{i}\n\nAssistant: a{i}", "rejected": "no"} for i in range(3)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    profile = _with_sources(tmp_path, f'  {{ name = "dolly", schema = "dolly", '
                                      f'hub_id = "{folder}" }},')
    message = _refusal(profile, ["0"])
    assert f"source 'dolly': hub dataset {folder} (split train) does not have schema 'dolly'" \
        in message
    assert "missing field 'instruction' in all of its first 3 records" in message
    assert "its fields: chosen, rejected" in message


def _cuda_profile(tmp_path):
    step = ('[plan.1A]\nhardware = "cpu-2core"\nbasis = "test"\ngpu_memory_gib = { file = '
            '"benchmarks/results/train_backends.json", key = ["models", '
            '"llama-3.1-8b @ NVIDIA H100 80GB HBM3", "backends", "unsloth", '
            '"peak_reserved_gib"] }\n')
    profile, path = profile_with(tmp_path, step)
    text = path.read_text().replace('device = "cpu"', 'device = "cuda"')
    return parse_profile(text, str(path))


def test_a_gpu_with_too_little_memory_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(preflight, "gpu_memory_gib", lambda: ("Small GPU", 8.0))
    message = _refusal(_cuda_profile(tmp_path), ["1A"])
    need = json.loads((ROOT / "benchmarks/results/train_backends.json").read_text())[
        "models"]["llama-3.1-8b @ NVIDIA H100 80GB HBM3"]["backends"]["unsloth"][
        "peak_reserved_gib"]
    assert (f"phase 1A needs {need:.1f} GiB of GPU memory (measured peak, "
            f"benchmarks/results/train_backends.json) but GPU 0 (Small GPU) has 8.0 GiB") \
        in message
    monkeypatch.setattr(preflight, "gpu_memory_gib", lambda: ("Big GPU", 80.0))
    preflight.check(_cuda_profile(tmp_path), ["1A"])
    monkeypatch.setattr(preflight, "gpu_memory_gib", lambda: None)
    assert "torch sees none here" in _refusal(_cuda_profile(tmp_path), ["0", "1A"])


def test_offline_with_an_empty_converter_cache_refuses_2c(tmp_path, monkeypatch):
    monkeypatch.setenv("COGUMI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    message = _refusal(load_profile("tiny"), ["2C"])
    assert "run `cogumi fetch-converter`" in message


def test_cogumi_run_refuses_before_any_work(tmp_path, capsys):
    _, path = profile_with(tmp_path, "")
    path.write_text(path.read_text().replace('path = "fixtures/sources/dolly.jsonl"',
                                             'path = "fixtures/sources/no-dolly.jsonl"'))
    runs = tmp_path / "runs"
    assert main(["run", "0", "--profile", str(path), "--runs", str(runs)]) == 2
    out = capsys.readouterr().out
    assert "refusing to start phases 0" in out and "no-dolly.jsonl" in out
    assert not (runs / "tiny" / "0").exists()


def test_an_unreachable_hub_is_asked_once(tmp_path, monkeypatch):
    asked = []

    def offline(source):
        asked.append(source.name)
        raise ConnectionError(f"Couldn't reach '{source.hub_id}' on the Hub")

    monkeypatch.setattr(preflight, "_first_records", offline)
    # The hub answered the preflight's own question; reading the dataset then failed.
    monkeypatch.setattr(preflight, "hub_unreachable", lambda: None)
    profile = _with_sources(tmp_path, '  { name = "a", schema = "dolly", hub_id = "org/a" },\n'
                                      '  { name = "b", schema = "dolly", hub_id = "org/b" },')
    message = _refusal(profile, ["0"])
    assert asked == ["a"]
    assert "source 'a': hub dataset org/a (split train) cannot be read" in message
    assert "not asked for b" in message
