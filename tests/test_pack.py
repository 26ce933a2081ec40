"""zstd pack and verified unpack (`python -m pytest tests/test_pack.py`): lossless round
trip, a flipped byte or a swapped sidecar refused with the file named. Under a second."""

from __future__ import annotations

import json
import os

import pytest

from cogumi.artifacts import sha256_file
from cogumi.compression.pack import PackChecksumError, pack, sidecar_path, unpack


@pytest.fixture
def packed(tmp_path):
    src = tmp_path / "model.gguf"
    # Compressible header-like text followed by incompressible bytes, as in a GGUF.
    src.write_bytes(b"GGUF" + b"tokenizer.ggml.tokens " * 2000 + os.urandom(200_000))
    dst = tmp_path / "model.gguf.zst"
    info = pack(src, dst, level=19, long_distance=True, window_log=24)
    return src, dst, info


def test_round_trip_is_lossless(packed, tmp_path):
    src, dst, info = packed
    assert info["ratio"] > 1.0 and info["packed_bytes"] == dst.stat().st_size
    assert info["zstd"]["long_distance_matching"] is True and info["zstd"]["level"] == 19
    out = tmp_path / "unpacked.gguf"
    unpack(dst, out)
    assert sha256_file(out) == sha256_file(src)


def test_flipped_byte_fails_its_checksum(packed, tmp_path):
    _, dst, _ = packed
    data = bytearray(dst.read_bytes())
    data[len(data) // 2] ^= 0x01
    dst.write_bytes(bytes(data))
    out = tmp_path / "unpacked.gguf"
    with pytest.raises(PackChecksumError, match=r"model\.gguf\.zst: sha256 .* corrupted"):
        unpack(dst, out)
    assert not out.exists() and not out.with_name(out.name + ".tmp").exists()


def test_sidecar_for_other_bytes_is_caught_after_decompression(packed, tmp_path):
    _, dst, _ = packed
    side = sidecar_path(dst)
    info = json.loads(side.read_text())
    info["original_sha256"] = "0" * 64  # a sidecar that belongs to another model
    side.write_text(json.dumps(info))
    with pytest.raises(PackChecksumError, match="unpacked bytes have sha256"):
        unpack(dst, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_missing_sidecar_is_named(packed, tmp_path):
    _, dst, _ = packed
    sidecar_path(dst).unlink()
    with pytest.raises(PackChecksumError, match=r"model\.gguf\.zst\.json: missing"):
        unpack(dst, tmp_path / "out.gguf")
