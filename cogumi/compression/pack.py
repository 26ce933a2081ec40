"""zstd packing of the shipped GGUF, and an unpacker that refuses a corrupted file.

`pack` writes `<name>.zst` (a zstd frame with its own content checksum) and a sidecar
`<name>.zst.json` with the sha256 of the packed bytes and of the original, the sizes, and the
settings used (level, long-distance matching, window). `unpack` checks the packed file's
sha256 before decompressing (a flipped byte is named as such, not as a zstd error) and the
output's sha256 after, and writes the output atomically: a failed unpack leaves nothing
behind that looks like a model.

Long-distance matching (zstd --long) searches a window of 2^window_log bytes for repeats; it
matters for files larger than the default window. Quantized weights are close to random
bytes, so expect a ratio near 1: the number reported is the measured one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from cogumi.artifacts import sha256_file

CHUNK = 1 << 20
SIDECAR_SUFFIX = ".json"
FORMAT = "cogumi-zstd-pack/1"


class PackChecksumError(ValueError):
    """A packed file (or its unpacked bytes) does not match its recorded sha256."""


def sidecar_path(packed: Path) -> Path:
    return Path(str(packed) + SIDECAR_SUFFIX)


def pack(src: Path, dst: Path, level: int, long_distance: bool, window_log: int,
         threads: int = 0) -> dict:
    """Compress `src` to `dst` (+ sidecar). Returns the sidecar's content."""
    import zstandard as zstd

    src, dst = Path(src), Path(dst)
    params = zstd.ZstdCompressionParameters.from_level(
        level, source_size=src.stat().st_size, enable_ldm=long_distance,
        window_log=window_log, write_checksum=True, write_content_size=True, threads=threads)
    compressor = zstd.ZstdCompressor(compression_params=params)
    tmp = dst.with_name(dst.name + ".tmp")
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        compressor.copy_stream(fin, fout, size=src.stat().st_size,
                               read_size=CHUNK, write_size=CHUNK)
    os.replace(tmp, dst)
    info = {
        "format": FORMAT,
        "original_name": src.name,
        "original_bytes": src.stat().st_size,
        "original_sha256": sha256_file(src),
        "packed_bytes": dst.stat().st_size,
        "packed_sha256": sha256_file(dst),
        "zstd": {"level": level, "long_distance_matching": long_distance,
                 "window_log": window_log, "content_checksum": True,
                 "zstandard_version": zstd.__version__,
                 "libzstd_version": zstd.ZSTD_VERSION if hasattr(zstd, "ZSTD_VERSION") else None},
    }
    info["ratio"] = info["original_bytes"] / info["packed_bytes"]
    sidecar_path(dst).write_text(json.dumps(info, indent=2) + "\n")
    return info


def read_sidecar(packed: Path) -> dict:
    side = sidecar_path(packed)
    try:
        info = json.loads(side.read_text())
    except FileNotFoundError:
        raise PackChecksumError(f"{side}: missing; cannot verify {packed} without the "
                                f"sha256 its packer recorded") from None
    except json.JSONDecodeError as exc:
        raise PackChecksumError(f"{side}: not valid JSON ({exc})") from None
    for key in ("format", "packed_sha256", "original_sha256", "zstd"):
        if key not in info:
            raise PackChecksumError(f"{side}: missing key '{key}'")
    if info["format"] != FORMAT:
        raise PackChecksumError(f"{side}: key 'format' is {info['format']!r}, expected {FORMAT!r}")
    return info


def unpack(packed: Path, dst: Path) -> dict:
    """Verify, decompress and verify again; `dst` appears only if everything matched."""
    import zstandard as zstd

    packed, dst = Path(packed), Path(dst)
    info = read_sidecar(packed)
    actual = sha256_file(packed)
    if actual != info["packed_sha256"]:
        raise PackChecksumError(
            f"{packed}: sha256 {actual[:16]}… does not match {info['packed_sha256'][:16]}… "
            f"recorded in {sidecar_path(packed).name}: the packed file is corrupted or was "
            f"replaced; refusing to unpack it")
    decompressor = zstd.ZstdDecompressor(max_window_size=1 << info["zstd"]["window_log"])
    tmp = dst.with_name(dst.name + ".tmp")
    h = hashlib.sha256()
    try:
        with open(packed, "rb") as fin, open(tmp, "wb") as fout:
            reader = decompressor.stream_reader(fin, read_size=CHUNK)
            while chunk := reader.read(CHUNK):
                h.update(chunk)
                fout.write(chunk)
    except zstd.ZstdError as exc:
        tmp.unlink(missing_ok=True)
        raise PackChecksumError(f"{packed}: zstd could not decompress it ({exc})") from None
    if h.hexdigest() != info["original_sha256"]:
        tmp.unlink(missing_ok=True)
        raise PackChecksumError(
            f"{packed}: unpacked bytes have sha256 {h.hexdigest()[:16]}…, expected "
            f"{info['original_sha256'][:16]}… for {info.get('original_name')}")
    os.replace(tmp, dst)
    return info
