"""Shared test helpers. Run the suite with `nox -s tests` (or `pytest tests`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cogumi.profile import load_profile, parse_profile

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_profile():
    return load_profile("tiny")


def profile_with(tmp_path: Path, extra_toml: str, base: str = "tiny"):
    """A copy of a shipped profile with extra TOML appended, written to a file."""
    text = (ROOT / "cogumi" / "profiles" / f"{base}.toml").read_text() + "\n" + extra_toml
    path = tmp_path / f"{base}-variant.toml"
    path.write_text(text)
    return parse_profile(text, str(path)), path


@pytest.fixture(scope="session")
def tiny_f32_gguf(tmp_path_factory):
    """The tiny fixture Llama exported by 2C's converter to F32 GGUF, once per session:
    (folder holding f32.gguf, the converter's pre-tokenizer decision)."""
    from cogumi.compression import gguf_export as G
    out = tmp_path_factory.mktemp("tiny-gguf")
    decision = G.convert_to_gguf(ROOT / "fixtures" / "tiny-llama", out / "f32.gguf", "F32",
                                 out / "convert.log")
    return out, decision
