"""llama.cpp's conversion scripts, fetched at first use from the llama-cpp-python sdist we pin.

Neither the llama-cpp-python wheel nor the `gguf` package on PyPI ships llama.cpp's
`convert_hf_to_gguf.py` (with its `conversion/` package) or `convert_lora_to_gguf.py`; the
llama-cpp-python sdist does, in `vendor/llama.cpp/`, from the very llama.cpp commit whose
library reads the files we write. So the first conversion downloads that sdist with pip
(`pip download --no-deps --no-binary :all:`, in hash-checking mode), checks its sha256
against the digest pinned here, and extracts only the converter, its `gguf-py` and the
licence into the user's cache directory (platformdirs; `COGUMI_CACHE_DIR` overrides it).
Every later conversion runs from there, after checking each file against the digests
recorded at extraction. Nothing of llama.cpp lives in this repository.

Which `gguf` the converter imports: the sdist's own `gguf-py`, not PyPI's `gguf`. Both say
version 0.19.0, but the sdist's is llama.cpp's later tree (its constants.py 6,077 lines against
4,348; measured: converting the fixture with PyPI's 0.19.0 fails in
conversion/base.py with "module 'gguf' has no attribute 'LazyChunkedTensor'"), so the
converter runs in a child process with the cached `gguf-py` first on its path
(`_convert_child.py`), while the rest of cogumi reads GGUF files with PyPI's package.

Offline with an empty cache, the first conversion stops with one line naming the command
that fills it: `cogumi fetch-converter` (or `--sdist FILE` with a copy downloaded elsewhere).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from cogumi.artifacts import sha256_file
from cogumi.locations import CACHE_ENV, cache_root  # noqa: F401 - CACHE_ENV: re-exported

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
"""Must equal the llama-cpp-python pin in pyproject.toml (tests/test_converter.py checks):
the converter writes GGUF metadata for the llama.cpp that reads it."""
LLAMA_CPP_COMMIT = "0c1e57098"
"""The llama.cpp commit that llama-cpp-python 0.3.36 vendors (its CHANGELOG)."""
SDIST_NAME = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
"""sha256 of the sdist on PyPI (77 MB); pip refuses any other bytes."""
VENDOR_PREFIX = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/"
EXTRACTED = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "LICENSE", "conversion/",
             "gguf-py/gguf/", "gguf-py/LICENSE", "gguf-py/pyproject.toml")
"""What is taken from vendor/llama.cpp/: the two converters, the package the HF converter
imports, the gguf-py it needs, and the licences (MIT)."""
SCRIPTS = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py")
FETCH_COMMAND = "cogumi fetch-converter"
RECORD = "cogumi-record.json"
"""Written last into the extracted folder: the sdist's sha256 and every file's sha256."""


class ConverterUnavailable(RuntimeError):
    """The converter is not in the cache and cannot be put there; one line with the fix."""


def converter_dir() -> Path:
    """Where this version's converter is (or will be) extracted."""
    return cache_root() / f"llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}"



def _missing(why: str) -> ConverterUnavailable:
    return ConverterUnavailable(
        f"llama.cpp's converter (from the llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist) "
        f"is not in the cache {converter_dir()}: {why}; run `{FETCH_COMMAND}` where PyPI is "
        f"reachable, or `{FETCH_COMMAND} --sdist FILE` with {SDIST_NAME} downloaded elsewhere")


def cached() -> Path | None:
    """The extracted converter if it is complete and every file is as extracted; None when
    the cache holds none. A folder whose files changed raises (it is never run)."""
    folder = converter_dir()
    record_path = folder / RECORD
    if not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text())
        files = record["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConverterUnavailable(f"{record_path}: unreadable; run `{FETCH_COMMAND} --force`"
                                   ) from None
    if record.get("sdist_sha256") != SDIST_SHA256:
        raise ConverterUnavailable(f"{folder}: extracted from an sdist with sha256 "
                                   f"{record.get('sdist_sha256')}, not the pinned "
                                   f"{SDIST_SHA256}; run `{FETCH_COMMAND} --force`")
    for rel, digest in files.items():
        path = folder / rel
        if not path.is_file() or sha256_file(path) != digest:
            raise ConverterUnavailable(f"{path}: differs from the sdist it was extracted from "
                                       f"(or is gone); run `{FETCH_COMMAND} --force`")
    return folder


def ensure_converter(download: bool = True) -> Path:
    """The converter folder, fetching it first when the cache has none (`download`)."""
    folder = cached()
    if folder is not None:
        return folder
    if not download:
        raise _missing("the cache is empty")
    return fetch_converter()


def script(name: str, download: bool = True) -> Path:
    """The path of one of llama.cpp's converters (SCRIPTS) in the cache."""
    if name not in SCRIPTS:
        raise ValueError(f"{name!r} is not one of {', '.join(SCRIPTS)}")
    return ensure_converter(download) / name


def _pip_download(dest: Path) -> Path:
    """The sdist through pip, in hash-checking mode (pip refuses other bytes before it runs
    anything from them); the user's pip configuration (index, proxy) applies."""
    requirement = dest / "requirement.txt"
    requirement.write_text(f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} "
                           f"--hash=sha256:{SDIST_SHA256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--require-hashes", "--retries", "2", "--timeout", "30", "--quiet",
           "--disable-pip-version-check", "-d", str(dest), "-r", str(requirement)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as exc:
        raise _missing(f"could not run pip ({exc})") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines()
                 if ln.strip().startswith("ERROR:") or "No module named pip" in ln]
        why = lines[-1] if lines else f"pip exited {proc.returncode}"
        raise _missing(f"pip could not download it ({why})")
    path = dest / SDIST_NAME
    if not path.is_file():
        raise _missing(f"pip reported success but wrote no {SDIST_NAME} into {dest}")
    return path


# tarfile's "data" filter (Python 3.11.4+) also refuses odd modes and devices; regular files
# with relative paths inside the folder are all that is extracted either way.
_DATA_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


def _extract(sdist: Path, into: Path) -> dict[str, str]:
    """Only the EXTRACTED members of vendor/llama.cpp/, under tarfile's "data" filter (no
    absolute paths, links out of the folder or special files); returns file -> sha256."""
    files: dict[str, str] = {}
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            for member in tar:
                if not member.name.startswith(VENDOR_PREFIX):
                    continue
                rel = member.name[len(VENDOR_PREFIX):]
                if not any(rel == e or (e.endswith("/") and rel.startswith(e))
                           for e in EXTRACTED):
                    continue
                if "/tests/" in f"/{rel}" or "__pycache__" in rel:
                    continue
                if not member.isfile():  # folders are made as their files are extracted
                    continue
                if rel.startswith("/") or ".." in rel.split("/"):
                    raise tarfile.TarError(f"member {member.name!r} leaves the folder")
                member.name = rel
                tar.extract(member, into, **_DATA_FILTER)
                files[rel] = sha256_file(into / rel)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ConverterUnavailable(f"{sdist}: not a readable sdist ({exc}); run "
                                   f"`{FETCH_COMMAND}` to download it again") from None
    for needed in SCRIPTS + ("conversion/__init__.py", "gguf-py/gguf/__init__.py"):
        if needed not in files:
            raise ConverterUnavailable(f"{sdist}: has no {VENDOR_PREFIX}{needed}; it is not "
                                       f"llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}'s sdist")
    return files


def fetch_converter(sdist: Path | None = None, force: bool = False) -> Path:
    """Download (or take `sdist`, a copy downloaded elsewhere), verify it against
    SDIST_SHA256, extract the converter into the cache, and return the folder. The folder
    appears complete or not at all (renamed into place); a concurrent fetch that finished
    first wins."""
    final = converter_dir()
    if not force and (final / RECORD).is_file():
        try:
            if cached() is not None:
                return final
        except ConverterUnavailable:
            pass  # a damaged cache: fetched again below
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=final.parent) as tmp:
        tmp_path = Path(tmp)
        if sdist is None:
            sdist = _pip_download(tmp_path)
        sdist = Path(sdist)
        if not sdist.is_file():
            raise _missing(f"{sdist} does not exist")
        got = sha256_file(sdist)
        if got != SDIST_SHA256:
            raise ConverterUnavailable(f"{sdist}: sha256 {got} is not the pinned "
                                       f"{SDIST_SHA256} of {SDIST_NAME}; refusing to run "
                                       f"code from it (download it again from PyPI)")
        staged = tmp_path / "converter"
        staged.mkdir()
        files = _extract(sdist, staged)
        record = {"sdist": SDIST_NAME, "sdist_sha256": got, "llama_cpp_commit": LLAMA_CPP_COMMIT,
                  "files": files}
        (staged / RECORD).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        if final.exists() and force:
            shutil.rmtree(final)
        try:
            staged.rename(final)
        except OSError:
            if not (final / RECORD).is_file():  # not a concurrent winner: something else
                raise
    return cached() or final


def describe() -> dict:
    """What the converter is, for manifests and reports."""
    return {"llama_cpp_python_sdist": SDIST_NAME, "sdist_sha256": SDIST_SHA256,
            "llama_cpp_commit": LLAMA_CPP_COMMIT, "folder": str(converter_dir())}
