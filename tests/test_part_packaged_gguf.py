"""A GGUF shipped in part packages (the Qwen2.5-Coder student and teacher): assembled into
the user's cache only when its size, sha256 and general.name are the pinned ones, and
refused in one line naming the missing package or the wrong digest otherwise.

Fake part packages (a tiny GGUF written by the gguf package, cut in three) stand in for the
real 491 MB and 1.1 GB ones; one slow test checks the real files where they are installed.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import tomllib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cogumi import needs
from cogumi.locations import (
    PART_PACKAGED_GGUFS,
    ModelAssemblyError,
    PartPackagedGGUF,
    assemble_gguf,
    gguf_general_name,
)

from .conftest import ROOT

NAME = "Fake Coder 1M Instruct"


def _tiny_gguf(path: Path, name: str = NAME) -> bytes:
    import gguf
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_name(name)
    writer.add_tensor("token_embd.weight", np.arange(512, dtype=np.float32).reshape(8, 64))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


@pytest.fixture
def fake_parts(tmp_path, monkeypatch):
    """Three installed part packages fakeqw-part1..3 holding a tiny GGUF, registered as
    the part-packaged model 'fake-coder'; the cache is tmp_path/cache."""
    blob = _tiny_gguf(tmp_path / "whole.gguf")
    site = tmp_path / "site"
    cut = [0, len(blob) // 3, 2 * len(blob) // 3, len(blob)]
    for i in range(1, 4):
        data = site / f"fakeqw_part{i}" / "data"
        data.mkdir(parents=True)
        (data.parent / "__init__.py").write_text("")
        (data / f"part{i:02d}.bin").write_bytes(blob[cut[i - 1]:cut[i]])
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    model = PartPackagedGGUF(key="fake-coder", filename="fake-coder.gguf", prefix="fakeqw-part",
                             parts=3, version="1.0", size=len(blob),
                             sha256=hashlib.sha256(blob).hexdigest(), general_name=NAME,
                             extra="fake")
    monkeypatch.setitem(PART_PACKAGED_GGUFS, model.key, model)
    return model, blob, site, tmp_path / "cache"


def test_parts_assemble_to_the_pinned_file_and_are_reused(fake_parts):
    model, blob, site, cache = fake_parts
    path = assemble_gguf(model.key, cache)
    assert path == cache / "models" / "fake-coder.gguf"
    assert path.read_bytes() == blob and gguf_general_name(path) == NAME
    assert sorted(p.name for p in path.parent.iterdir()) == ["fake-coder.gguf",
                                                            "fake-coder.gguf.verified"]
    # Reused by its stamp: the parts are no longer read.
    (site / "fakeqw_part2" / "data" / "part02.bin").unlink()
    assert assemble_gguf(model.key, cache) == path


def test_a_changed_cached_file_is_assembled_again(fake_parts):
    model, blob, _site, cache = fake_parts
    path = assemble_gguf(model.key, cache)
    path.write_bytes(blob[:-1] + b"\0")  # same size, other bytes, new mtime
    assert assemble_gguf(model.key, cache).read_bytes() == blob


def test_a_missing_part_package_is_named_with_its_fix(fake_parts):
    model, _blob, site, cache = fake_parts
    (site / "fakeqw_part2" / "__init__.py").unlink()
    (site / "fakeqw_part2" / "data" / "part02.bin").unlink()
    (site / "fakeqw_part2" / "data").rmdir()
    (site / "fakeqw_part2").rmdir()
    importlib.invalidate_caches()
    with pytest.raises(ModelAssemblyError) as err:
        assemble_gguf(model.key, cache)
    msg = str(err.value)
    assert "\n" not in msg
    assert "needs the package fakeqw-part2==1.0, which is not installed" in msg
    assert "pip install 'cogumi[fake]'" in msg
    assert not (cache / "models" / "fake-coder.gguf").exists()


def test_a_wrong_digest_is_refused_and_leaves_no_file(fake_parts, monkeypatch):
    model, _blob, _site, cache = fake_parts
    monkeypatch.setitem(PART_PACKAGED_GGUFS, model.key, replace(model, sha256="0" * 64))
    with pytest.raises(ModelAssemblyError, match=r"has sha256 [0-9a-f]{64}, expected 0{64}"):
        assemble_gguf(model.key, cache)
    assert list((cache / "models").iterdir()) == []  # neither the file nor a partial one


def test_a_wrong_size_and_a_wrong_name_are_refused(fake_parts, monkeypatch, tmp_path):
    model, blob, site, cache = fake_parts
    monkeypatch.setitem(PART_PACKAGED_GGUFS, model.key, replace(model, size=model.size + 1))
    with pytest.raises(ModelAssemblyError, match=f"hold {len(blob):,} bytes, expected"):
        assemble_gguf(model.key, cache)
    # Right bytes, pinned as the wrong model.
    monkeypatch.setitem(PART_PACKAGED_GGUFS, model.key, replace(model, general_name="Other"))
    with pytest.raises(ModelAssemblyError, match=f"general.name is '{NAME}', expected 'Other'"):
        assemble_gguf(model.key, cache)


def test_an_unknown_model_is_named():
    with pytest.raises(ModelAssemblyError, match="unknown part-packaged model 'nope'; known: "):
        assemble_gguf("nope")


def test_the_qwen_extra_installs_exactly_the_pinned_parts():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    pinned = {f"{d}=={m.version}" for m in PART_PACKAGED_GGUFS.values() for d in m.distributions}
    assert set(extras["qwen"]) == pinned
    assert all(m.extra == "qwen" for m in PART_PACKAGED_GGUFS.values())


def test_a_parts_profile_needs_its_parts_and_nox_installs_the_extra():
    raw = tomllib.loads((ROOT / "cogumi" / "profiles" / "qwen-coder-0.5b.toml").read_text())
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    student = PART_PACKAGED_GGUFS[raw["model"]["parts"]]
    found = [p for p in needs.profile_packages(raw, ["1A"], extras) if p.distribution.startswith(
        student.prefix)]
    assert [p.distribution for p in found] == list(student.distributions)
    assert found[0].fix() == f"pip install {student.prefix}1 (cogumi's 'qwen' extra)"
    assert needs.extras_for(raw, ["1A"], extras) == ["qwen"]
    assert needs.extras_for(raw, ["0"], extras) == []  # phase 0 never loads the model


@pytest.mark.slow
@pytest.mark.skipif(any(importlib.util.find_spec(m.module(d)) is None
                        for m in PART_PACKAGED_GGUFS.values() for d in m.distributions),
                    reason="needs the qwen extra's part packages (1.6 GB)")
@pytest.mark.parametrize("key", sorted(PART_PACKAGED_GGUFS))
def test_the_real_qwen_files_assemble(key):
    path = assemble_gguf(key)
    model = PART_PACKAGED_GGUFS[key]
    # Its general.name was checked when it was assembled (reading 151K vocabulary entries
    # again would take half a minute here); the stamp says which digest was verified.
    assert path.stat().st_size == model.size
    assert path.with_name(path.name + ".verified").read_text().split()[0] == model.sha256
