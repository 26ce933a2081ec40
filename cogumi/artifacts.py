"""Phase artifacts: `runs/<profile>/<phase>/` with outputs, metrics.json and manifest.json.

A phase writes into a staging folder beside its final place; only when every output,
metrics.json and manifest.json are written is the folder renamed into place. A phase killed
at any moment therefore leaves either the previous complete artifact or none, never one that
looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import resource
import shutil
import sys
import uuid
from importlib import metadata
from pathlib import Path

from cogumi.locking import pid_alive

MANIFEST = "manifest.json"
METRICS = "metrics.json"
# Libraries whose versions decide what a phase computes; recorded in every manifest.
KEY_LIBRARIES = ("torch", "transformers", "peft", "accelerate", "tokenizers", "safetensors",
                 "numpy", "datasets", "math-verify", "lm-eval", "llmcompressor",
                 "llama_cpp_python", "bitsandbytes", "unsloth", "datasketch", "gguf", "cogumi")


class ManifestError(ValueError):
    """A manifest that is missing or cannot be read; one line naming the file."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest_tree(folder: Path, exclude: tuple[str, ...] = (MANIFEST,)) -> dict[str, str]:
    """sha256 of every file under `folder`, keyed by its POSIX path relative to it."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel not in exclude:
            out[rel] = sha256_file(path)
    return out


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in KEY_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_commit(root: Path) -> str:
    """The commit the code ran at, with '+dirty' when the work tree had changes."""
    from cogumi.provenance import git_commit as commit  # one definition for results too
    return commit(root)


def peak_rss_mb() -> float:
    """Peak resident memory of this process and its waited-for children (Linux: KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / (1024 * 1024)
    return round(max(own, children) * scale, 1)


def read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(f"{path}: missing (the phase never completed here)") from None
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: corrupted, not valid JSON ({exc})") from None
    for key in ("phase", "outputs", "profile_sha256"):
        if not isinstance(manifest, dict) or key not in manifest:
            raise ManifestError(f"{path}: corrupted, key '{key}' missing")
    return manifest


def _run_tag() -> str:
    # The pid names the run a leftover belongs to, so cleaning never takes a live run's work.
    return f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


def staging_dir(final: Path) -> Path:
    """A fresh folder beside `final` for a phase to write into, named after this run."""
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = final.parent / f".{final.name}.staging-{_run_tag()}"
    stage.mkdir()
    return stage


def commit_staged(stage: Path, final: Path) -> None:
    """Move a completed staging folder into place, replacing any older artifact.

    The old folder is first renamed aside, so between the two renames there is no
    folder at `final` at all: an interrupted swap reads as "not run", never as complete.
    """
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{_run_tag()}"
        os.replace(final, old)
    os.replace(stage, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _owner_pid(name: str) -> int | None:
    tag = name.rsplit(".staging-", 1)[-1] if ".staging-" in name else name.rsplit(".old-", 1)[-1]
    head = tag.split("-", 1)[0]
    return int(head) if "-" in tag and head.isdigit() else None


def clean_stale_staging(parent: Path) -> None:
    """Remove leftovers of killed runs (staging and swapped-out folders): those of a process
    that is no longer alive, and this process's own (a phase of this run that failed).
    Another live run's folders are left alone."""
    if not parent.exists():
        return
    for p in parent.iterdir():
        if p.is_dir() and p.name.startswith(".") and (".staging-" in p.name or ".old-" in p.name):
            pid = _owner_pid(p.name)
            # No pid in the name: made before runs were named, so by no run alive now.
            if pid is None or pid == os.getpid() or not pid_alive(pid):
                shutil.rmtree(p, ignore_errors=True)
