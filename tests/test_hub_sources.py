"""The llama-3.1-8b profile's code path, offline: the seven sources by hub id through
`datasets` (read from its local cache, laid out by fixtures/hub_cache.py as a first online
load leaves it), the model by hub id through transformers (from a hub-cache folder), and the
preflight's hub, disk and schema refusals. Nothing here reaches the network."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cogumi import preflight
from cogumi.cli import main
from cogumi.data.sources import Quarantined, Record, SchemaError, load_hub_source
from cogumi.profile import load_profile
from fixtures.hub_cache import (
    HUB_SOURCES,
    synthetic_rows,
    write_dataset_cache,
    write_seed_benchmarks,
    write_seed_sources,
)

from .conftest import ROOT


def test_the_seven_sources_load_by_hub_id_offline(offline_cache):
    write_seed_sources(offline_cache, 4)
    profile = load_profile("llama-3.1-8b")
    assert {s.hub_id: s.schema_ for s in profile.data.sources} == HUB_SOURCES
    for source in profile.data.sources:
        items = list(load_hub_source(source.name, source.schema_, source.hub_id, source.split))
        assert len(items) == 4 and all(isinstance(i, Record) for i in items), source.hub_id
        if source.schema_ == "metamathqa":
            assert {i.domain for i in items} == {"math"}
    # ... and the preflight finds every one of them in the cache, each in its schema.
    assert preflight.hub_problems(profile, ["0"]) == []
    assert preflight.schema_mismatches(profile, ["0"]) == []


def test_a_bad_row_is_quarantined_with_its_row(offline_cache):
    rows = synthetic_rows("anthropic_hh", 3)
    rows[1]["chosen"] = "\n\nHuman: a question with no answer"  # no Assistant turn
    write_dataset_cache(offline_cache, "Anthropic/hh-rlhf", rows)
    items = list(load_hub_source("anthropic-hh", "anthropic_hh", "Anthropic/hh-rlhf", "train"))
    assert [type(i) for i in items] == [Record, Quarantined, Record]
    assert items[1].location == "hub:Anthropic/hh-rlhf[train] row 1"
    assert items[1].reason == "transcript does not end with an Assistant turn"


def test_a_hub_dataset_without_the_schemas_columns_is_refused_naming_them(offline_cache):
    write_dataset_cache(offline_cache, "databricks/databricks-dolly-15k",
                        synthetic_rows("anthropic_hh", 2))
    with pytest.raises(SchemaError) as err:
        list(load_hub_source("dolly", "dolly", "databricks/databricks-dolly-15k", "train"))
    assert str(err.value) == (
        "hub dataset databricks/databricks-dolly-15k (split train) has no column "
        "'instruction', 'context', 'response', 'category' of schema 'dolly' (its columns: "
        "chosen, rejected)")


def test_offline_with_an_uncached_hub_dataset_or_model_is_refused(offline_cache):
    profile = load_profile("llama-3.1-8b")
    lines = preflight.hub_problems(profile, ["0", "1A"])
    # seven sources, 1A's four evaluation sets and the model, one line each
    assert len(lines) == 12
    assert lines[0] == (
        "dataset Open-Orca/OpenOrca (source 'openorca') in cogumi/profiles/llama-3.1-8b.toml "
        "is not in the local Hugging Face cache and the hub cannot be reached (HF_HUB_OFFLINE "
        "is set); run where the hub is reachable, or load it once there to fill the cache and "
        "run with HF_HUB_OFFLINE=1")
    assert lines[8].startswith("dataset cais/mmlu (config all of split test; [eval] mmlu) in ")
    assert lines[-1].startswith("model meta-llama/Llama-3.1-8B-Instruct (model.hub_id) in ")
    write_seed_sources(offline_cache, 1)
    assert len(preflight.hub_problems(profile, ["0", "1A"])) == 5  # the eval sets, the model
    write_seed_benchmarks(offline_cache, 1)
    assert len(preflight.hub_problems(profile, ["0", "1A", "1B"])) == 1  # the model still missing


def test_too_little_disk_for_the_artifacts_is_refused(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(100 * 2**30, 90 * 2**30, 10 * 2**30))
    profile = load_profile("llama-3.1-8b")
    line = preflight.disk_problem(profile, ["2A", "2B"], tmp_path / "runs")
    # the declared rule: 2 bytes per parameter per phase that writes the model
    assert line == (f"disk: phases 2A, 2B write about {2 * 2 * 8.03e9 / 2**30:.1f} GiB (one "
                    f"bf16 copy of the model's 8.03e+09 parameters each) under {tmp_path}/runs "
                    f"but {tmp_path} has 10.0 GiB free; free space there or run elsewhere")
    assert preflight.disk_problem(load_profile("tiny"), ["2A", "2B"], tmp_path) is None
    assert preflight.disk_problem(profile, ["0", "1A"], tmp_path) is None


def test_plan_reads_its_projections_from_the_device_json(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("COLUMNS", "400")
    assert main(["plan", "--profile", "llama-3.1-8b"]) == 0
    out = capsys.readouterr().out
    result = json.loads((ROOT / "benchmarks/results/seed_code_path_h200.json").read_text())
    for phase in ("1A", "2A", "2B"):
        hours = result["projection"][phase]["hours"]
        assert (f"{phase}: {hours:.3g} h projected from measurements on NVIDIA H200 "
                f"(benchmarks/results/seed_code_path_h200.json: projection > {phase} > hours)"
                ) in out
    assert "preflight on this machine" in out
    assert "runs here" not in out


def test_the_model_loads_by_hub_id_from_the_hub_cache(tmp_path):
    # A tiny random Llama laid out as the hub cache keeps a download, loaded by its hub id
    # through cogumi.models with the hub switched off (a fresh process: huggingface_hub reads
    # HF_HUB_CACHE and HF_HUB_OFFLINE when imported).
    script = f"""
import sys, torch
sys.path.insert(0, {str(ROOT)!r})
from pathlib import Path
from transformers import LlamaConfig, LlamaForCausalLM, AutoTokenizer
snap = Path({str(tmp_path)!r}) / "hub/models--org--tiny-llama/snapshots/{'1' * 40}"
cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=1, vocab_size=512)
torch.manual_seed(0)
LlamaForCausalLM(cfg).save_pretrained(snap)
AutoTokenizer.from_pretrained({str(ROOT / "fixtures/tiny-llama")!r}).save_pretrained(snap)
(snap.parents[1] / "refs").mkdir()
(snap.parents[1] / "refs/main").write_text("{'1' * 40}")
from cogumi.models import load_base_model
from cogumi.profile import ModelConfig
loaded = load_base_model(ModelConfig(source="hub", hub_id="org/tiny-llama", dtype="float32",
                                     parameters=1), Path("."))
print(type(loaded.model).__name__, loaded.model.config.hidden_size)
"""
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_CACHE": str(tmp_path / "hub"),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-2:] == ["LlamaForCausalLM", "32"]
