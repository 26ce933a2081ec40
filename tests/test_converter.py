"""llama.cpp's converter, fetched from the pinned sdist into the cache (cogumi.compression.converter).

Offline: a small fake sdist built here exercises verify-and-extract and the cache's own
checks; pip is run against an empty local index for the offline error. The real download
is exercised where PyPI is reachable (`nox -s tests` fills the cache first; the GGUF tests
then convert with it).
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tomllib
from pathlib import Path

import numpy as np
import pytest

from cogumi.compression import converter as C

from .conftest import ROOT

PREFIX = C.VENDOR_PREFIX
FAKE = {
    "convert_hf_to_gguf.py": "print('hf')\n",
    "convert_lora_to_gguf.py": "print('lora')\n",
    "LICENSE": "MIT\n",
    "conversion/__init__.py": "",
    "conversion/llama.py": "X = 1\n",
    "gguf-py/gguf/__init__.py": "",
    "gguf-py/LICENSE": "MIT\n",
    "gguf-py/pyproject.toml": "[project]\nname = 'gguf'\n",
    "gguf-py/tests/test_x.py": "",          # not extracted: tests
    "README.md": "",                        # not extracted: not the converter
    "ggml/src/ggml.c": "",                  # not extracted
}


def _fake_sdist(path: Path, files: dict[str, str], extra_members=()) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for rel, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(PREFIX + rel)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra_members:
            tar.addfile(info, io.BytesIO(b"x" * info.size))
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(C.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def offline_pip(tmp_path, monkeypatch):
    """pip with no configuration, no index and an empty local folder of archives."""
    empty = tmp_path / "no-archives"
    empty.mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))


def test_the_pin_is_the_llama_cpp_python_that_reads_the_files():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"llama-cpp-python[server]=={C.LLAMA_CPP_PYTHON_VERSION}" in deps
    assert len(C.SDIST_SHA256) == 64


def test_cache_dir_follows_the_env_var_then_platformdirs(tmp_path, monkeypatch):
    monkeypatch.setenv(C.CACHE_ENV, str(tmp_path / "c"))
    assert C.converter_dir() == tmp_path / "c" / f"llama-cpp-python-{C.LLAMA_CPP_PYTHON_VERSION}"
    monkeypatch.delenv(C.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert C.cache_root() == tmp_path / "xdg" / "cogumi"


def test_fake_sdist_is_verified_extracted_and_checked_on_use(tmp_path, cache, monkeypatch):
    sdist = tmp_path / C.SDIST_NAME
    monkeypatch.setattr(C, "SDIST_SHA256", _fake_sdist(sdist, FAKE))
    folder = C.fetch_converter(sdist=sdist)
    assert folder == C.converter_dir() and folder.is_relative_to(cache)
    extracted = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert extracted == sorted([k for k in FAKE if k.split("/")[0] not in ("README.md", "ggml")
                                and "/tests/" not in k] + [C.RECORD])
    assert C.script("convert_lora_to_gguf.py") == folder / "convert_lora_to_gguf.py"
    assert C.ensure_converter(download=False) == folder
    # An edited cached file is never run.
    (folder / "conversion" / "llama.py").write_text("X = 2\n")
    with pytest.raises(C.ConverterUnavailable, match=r"conversion/llama\.py: differs .*--force"):
        C.ensure_converter(download=False)
    assert C.fetch_converter(sdist=sdist, force=True) == folder
    assert (folder / "conversion" / "llama.py").read_text() == "X = 1\n"


def test_an_sdist_with_other_bytes_is_refused_and_nothing_is_cached(tmp_path, cache):
    sdist = tmp_path / C.SDIST_NAME
    _fake_sdist(sdist, FAKE)
    with pytest.raises(C.ConverterUnavailable, match=r"sha256 [0-9a-f]{64} is not the pinned"):
        C.fetch_converter(sdist=sdist)
    assert C.cached() is None
    assert not C.converter_dir().exists()


def test_a_member_escaping_the_folder_is_refused(tmp_path, cache, monkeypatch):
    sdist = tmp_path / C.SDIST_NAME
    evil = tarfile.TarInfo(PREFIX + "conversion/../../../../../evil.py")
    evil.size = 1
    monkeypatch.setattr(C, "SDIST_SHA256", _fake_sdist(sdist, FAKE, [evil]))
    with pytest.raises(C.ConverterUnavailable, match="not a readable sdist"):
        C.fetch_converter(sdist=sdist)
    assert not list(tmp_path.rglob("evil.py"))
    assert C.cached() is None


def test_offline_with_an_empty_cache_is_one_line_naming_the_command(cache, offline_pip, capsys):
    with pytest.raises(C.ConverterUnavailable) as err:
        C.ensure_converter()
    message = str(err.value)
    assert "\n" not in message
    assert "`cogumi fetch-converter`" in message and "pip could not download it" in message
    assert str(C.converter_dir()) in message
    with pytest.raises(C.ConverterUnavailable, match="the cache is empty"):
        C.ensure_converter(download=False)
    # The same line from the command that fills the cache, with the refusal exit code.
    from cogumi.cli import main
    assert main(["fetch-converter"]) == 2
    out = capsys.readouterr().out
    assert "cogumi fetch-converter" in out and "No matching distribution" in out


def test_a_lora_adapter_exports_with_the_fetched_converter(tmp_path):
    """Phase 3's adapter export: llama.cpp's convert_lora_to_gguf.py from the real cache
    (fetched at first use, like 2C's), on a PEFT adapter of the fixture model; the GGUF holds
    every adapted matrix with PEFT's own values."""
    import json

    import torch
    from gguf import GGUFReader
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from cogumi.compression.gguf_export import convert_lora_to_gguf

    tiny = ROOT / "fixtures" / "tiny-llama"
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # PEFT starts B at zero; a no-op adapter would prove little
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.02)
    model.save_pretrained(tmp_path / "adapter")
    out = convert_lora_to_gguf(tmp_path / "adapter", tiny, tmp_path / "adapter.gguf", "f32",
                               tmp_path / "lora.log")
    reader = GGUFReader(str(out))
    kind = reader.fields["general.type"]
    assert bytes(kind.parts[kind.data[0]]).decode() == "adapter"
    tensors = {t.name: t for t in reader.tensors}
    layers = json.loads((tiny / "config.json").read_text())["num_hidden_layers"]
    assert len(tensors) == layers * 2 * 2  # q and v, A and B
    want = model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight
    got = tensors["blk.0.attn_q.weight.lora_a"]
    assert np.array_equal(np.asarray(got.data).reshape(want.shape), want.detach().numpy())
