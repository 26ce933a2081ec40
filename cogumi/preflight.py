"""Before the first phase of a run starts: does every phase in it have what it needs?

`check(profile, phase_ids)` looks, in this order, at
- packages: each phase's imports, the training backend's GPU packages, a packaged model
  (cogumi.needs), and system programs (bubblewrap, for phases that run generated code);
- files: every file the profile names that the phases read (data sources, planted truth,
  evaluation and prompt files, a local model folder), relative to the data root;
- data: the first records of each source in its declared schema (local file or hub
  dataset): a source none of whose first records fits the schema is refused; each hub
  benchmark (evaluation sets, 1B's code prompts) has its schema's columns;
- the hub: every dataset (sources and benchmarks) and model the phases read by hub id is in
  the local cache, or the hub answers;
- llama.cpp's converter, for phases that export GGUF: fetched into the cache now if it is
  not there, so an offline machine learns it before hours of earlier phases, not after;
- the GPU, for phases that run the model on a profile with hardware.device = "cuda": one is
  visible, and it has at least the memory the plan's measured peak says the phase needs.

Anything missing refuses the run with one line naming each thing and its fix
(PreflightError); nothing has been written by then.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from cogumi import needs
from cogumi.locations import checkout_root, data_root
from cogumi.profile import HubTask, Profile

SCHEMA_PEEK = 20
"""Records read from the start of each source: a source is refused only when none of them
fits its schema (a few bad records are phase 0's to quarantine, not a wrong schema)."""

DEVICE_PHASES = ("1A", "1B", "2A", "2E", "2B")
"""Phases that run the model on the profile's device (2C-2F run llama.cpp on the CPU)."""


class PreflightError(RuntimeError):
    """The run cannot start; one line naming what is missing and how to fix it."""


def optional_dependencies() -> dict[str, list[str]]:
    """cogumi's extras: the checkout's pyproject.toml, else the installed metadata."""
    root = checkout_root()
    if root is not None:
        project = tomllib.loads((root / "pyproject.toml").read_text()).get("project", {})
        return project.get("optional-dependencies", {})
    return needs.installed_extras()


def _raw(profile: Profile) -> dict:
    return profile.model_dump(mode="json", by_alias=True)


def missing_packages(profile: Profile, phase_ids: list[str]) -> list[str]:
    found = []
    for pkg in needs.profile_packages(_raw(profile), phase_ids, optional_dependencies()):
        if not pkg.installed():
            found.append(f"package {pkg.module} is not installed: {pkg.fix()}")
    return found + [f"{p} is not installed" for p in needs.missing_programs(_raw(profile),
                                                                           phase_ids)]


def missing_files(profile: Profile, phase_ids: list[str]) -> list[str]:
    from cogumi.binding import named_inputs
    from cogumi.registry import get_phase
    root = data_root()
    out: list[str] = []
    for pid in phase_ids:
        paths, _ = named_inputs(profile, get_phase(pid).config)
        for given in paths:
            path = Path(given) if Path(given).is_absolute() else root / given
            if not path.exists():
                line = f"{given} (named by {profile.source_file}) does not exist under {root}"
                if line not in out:
                    out.append(line)
    return out


def _first_records(source) -> list[dict]:
    """Up to SCHEMA_PEEK raw records from the start of a source."""
    from itertools import islice
    if source.path is not None:
        from cogumi.data.sources import _raw_records
        path = Path(source.path) if Path(source.path).is_absolute() else data_root() / source.path
        return [raw for _, raw, _ in islice(_raw_records(path), SCHEMA_PEEK) if raw is not None]
    import datasets  # streaming reads only the first rows, from the hub or a local folder
    stream = datasets.load_dataset(source.hub_id, split=source.split, streaming=True)
    return list(islice(iter(stream), SCHEMA_PEEK))


def schema_mismatches(profile: Profile, phase_ids: list[str]) -> list[str]:
    if "0" not in phase_ids:
        return []
    from cogumi.data.sources import SchemaError, normalise
    out = []
    unreachable = False
    for source in profile.data.sources:
        where = source.path or f"hub dataset {source.hub_id} (split {source.split})"
        if unreachable and source.hub_id is not None:
            continue  # the hub did not answer for the last one: asking again only waits
        try:
            records = _first_records(source)
        except Exception as exc:  # noqa: BLE001 - datasets raises many types; all one answer
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            out.append(f"source {source.name!r}: {where} cannot be read "
                       f"({type(exc).__name__}: {reason[:200]})")
            if source.hub_id is not None and isinstance(exc, ConnectionError):
                unreachable = True
                hub = [s.name for s in profile.data.sources if s.hub_id is not None]
                rest = hub[hub.index(source.name) + 1:]
                if rest:
                    out[-1] += (f"; not asked for {', '.join(rest)} (run where the hub is "
                                f"reachable, or with the datasets in the local cache and "
                                f"HF_HUB_OFFLINE=1)")
            continue
        if not records:
            continue  # an empty or unreadable local file: phase 0 reports and quarantines it
        errors = []
        for i, raw in enumerate(records):
            try:
                normalise(source.schema_, raw, source.name, i)
                break
            except SchemaError as exc:
                errors.append(str(exc))
        else:
            fields = sorted(records[0]) if isinstance(records[0], dict) else []
            out.append(f"source {source.name!r}: {where} does not have schema "
                       f"{source.schema_!r} ({errors[0]} in all of its first {len(records)} "
                       f"records; its fields: {', '.join(fields)}); set that source's schema "
                       f"in {profile.source_file} to the dataset's, or name another dataset")
    return out


def converter_problem(phase_ids: list[str]) -> str | None:
    if not any(p in needs.CONVERTER_PHASES for p in phase_ids):
        return None
    from cogumi.compression.converter import ConverterUnavailable, ensure_converter
    try:
        ensure_converter(download=True)
    except ConverterUnavailable as exc:
        return str(exc)
    return None


def gpu_memory_gib() -> tuple[str, float] | None:
    """The first CUDA device's name and total memory in GiB; None when torch sees none."""
    import torch
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return props.name, props.total_memory / 2**30


def gpu_problems(profile: Profile, phase_ids: list[str]) -> list[str]:
    on_device = [p for p in phase_ids if p in DEVICE_PHASES]
    if profile.hardware.device != "cuda" or not on_device:
        return []
    gpu = gpu_memory_gib()
    if gpu is None:
        return [f"phases {', '.join(on_device)} run on a CUDA GPU ({profile.source_file}: "
                f"hardware.device = \"cuda\") and torch sees none here; run on a GPU machine "
                f"with a CUDA build of torch, or use a CPU profile"]
    name, have = gpu
    out = []
    for pid in on_device:
        step = profile.plan.get(pid)
        if step is None or step.gpu_memory_gib is None:
            continue
        need, _ = step.gpu_memory_gib.read(data_root())
        if have < need:
            out.append(f"phase {pid} needs {need:.1f} GiB of GPU memory (measured peak, "
                       f"{step.gpu_memory_gib.file}) but GPU 0 ({name}) has {have:.1f} GiB; "
                       f"use a larger GPU, or reduce training.batch_size / max_seq_len")
    return out


WRITES_MODEL = ("2A", "2E", "2B", "2C")
"""Phases whose artifact holds a copy of the whole model (pruned, recovered, quantised, GGUF)."""
BYTES_PER_PARAMETER = 2
"""The disk rule, fixed before measuring: one bf16 copy of the model (2 bytes per parameter)
for each phase in WRITES_MODEL the run builds (2B's 4-bit copy is smaller, 2C's several
GGUF files larger)."""


def disk_problem(profile: Profile, phase_ids: list[str], runs_dir: Path | None = None
                 ) -> str | None:
    import shutil
    writing = [p for p in phase_ids if p in WRITES_MODEL]
    if not writing:
        return None
    where = Path(runs_dir) if runs_dir is not None else Path.cwd() / "runs"
    probe = where
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    need = len(writing) * BYTES_PER_PARAMETER * profile.model.parameters
    free = shutil.disk_usage(probe).free
    if free >= need:
        return None
    return (f"disk: phases {', '.join(writing)} write about {need / 2**30:.1f} GiB (one bf16 "
            f"copy of the model's {profile.model.parameters:.3g} parameters each) under {where} "
            f"but {probe} has {free / 2**30:.1f} GiB free; free space there or run elsewhere")


def _dataset_cached(hub_id: str, config: str | None = None) -> bool:
    """Whether `datasets`' cache holds an entry for hub_id (and that config; None: any)
    (what an earlier load left)."""
    import datasets
    from datasets.naming import camelcase_to_snakecase
    if Path(hub_id).exists() or "/" not in hub_id:
        return Path(hub_id).exists()  # a local folder laid out as a dataset
    namespace, name = hub_id.split("/", 1)
    entry = Path(datasets.config.HF_DATASETS_CACHE) / f"{namespace}___{camelcase_to_snakecase(name)}"
    return any(p.is_dir() for p in entry.glob(f"{'*' if config is None else config}/*/*"))


def hub_benchmarks(profile: Profile, phase_ids: list[str]) -> list[tuple[str, HubTask, str]]:
    """(the profile key, the hub dataset, its schema) of every benchmark the phases read by
    hub id: [eval] tasks, 1B's code prompts, 2F's calibration data; each once."""
    from cogumi.registry import get_phase
    out: dict[tuple, tuple[str, HubTask, str]] = {}
    every = set(type(profile).model_fields)
    for pid in phase_ids:
        tables = set(get_phase(pid).config) or every
        named: list[tuple[str, object, str]] = []
        if "eval" in tables:
            named += [(f"[eval] {key}", value, key) for key, value in profile.eval.benchmarks()]
        sc = profile.self_consistency
        if "self_consistency" in tables and sc is not None:
            named.append(("self_consistency.code_prompts", sc.code_prompts, "code"))
        if "calibration" in tables and profile.calibration.data is None:
            named.append(("[eval] mmlu", profile.eval.mmlu, "mmlu"))
        for key, value, schema in named:
            if isinstance(value, HubTask):
                out.setdefault((value.hub_id, value.configs, value.split),
                               (key, value, value.schema_ or schema))
    return list(out.values())


def benchmark_column_problems(profile: Profile, phase_ids: list[str]) -> list[str]:
    """Hub benchmarks whose first row lacks its schema's columns (one line each, naming
    them: cogumi.data.sources.require_columns, as the loader refuses them)."""
    from cogumi.data.sources import SchemaError, hub_where, require_columns
    from cogumi.evaluation.tasks import HUB_COLUMNS
    out = []
    for key, task, schema in hub_benchmarks(profile, phase_ids):
        for config in task.configs:
            try:
                import datasets
                stream = datasets.load_dataset(task.hub_id, config, split=task.split,
                                               streaming=True)
                first = next(iter(stream), None)
                if first is not None:
                    require_columns(hub_where(task.hub_id, task.split, config), schema,
                                    HUB_COLUMNS[schema], list(first))
            except SchemaError as exc:
                out.append(f"{key} in {profile.source_file}: {exc}; name a dataset in that "
                           f"schema, or set its schema")
            except Exception as exc:  # noqa: BLE001 - datasets raises many types; all one answer
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                out.append(f"{key} in {profile.source_file}: hub dataset "
                           f"{hub_where(task.hub_id, task.split, config)} cannot be read "
                           f"({type(exc).__name__}: {reason[:200]})")
    return out


def _model_cached(hub_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache
    return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)


def hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be asked (None: it answered)."""
    import os

    from huggingface_hub import constants
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in (
            "1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    from huggingface_hub.utils import get_session
    try:
        get_session().head(constants.ENDPOINT, timeout=5)
    except Exception as exc:  # noqa: BLE001 - any failure to connect is the same answer
        return f"{constants.ENDPOINT} did not answer: {type(exc).__name__}"
    return None


def hub_problems(profile: Profile, phase_ids: list[str]) -> list[str]:
    """Hub ids the phases read that are neither in the local cache nor reachable: one line
    per dataset (naming the configs of a benchmark that are missing) or model."""
    missing = []
    if "0" in phase_ids:
        missing += [f"dataset {s.hub_id} (source {s.name!r})" for s in profile.data.sources
                    if s.hub_id is not None and not _dataset_cached(s.hub_id)]
    for key, task, _schema in hub_benchmarks(profile, phase_ids):
        absent = [c for c in task.configs if not _dataset_cached(task.hub_id, c)]
        if absent:
            configs = ", ".join(c for c in absent if c is not None)
            where = f"config{'s' if len(absent) > 1 else ''} {configs} of " if configs else ""
            missing.append(f"dataset {task.hub_id} ({where}split {task.split}; {key})")
    m = profile.model
    if m.source == "hub" and any(p != "0" for p in phase_ids) and not _model_cached(m.hub_id):
        missing.append(f"model {m.hub_id} (model.hub_id)")
    if not missing:
        return []
    why = hub_unreachable()
    if why is None:
        return []
    return [f"{what} in {profile.source_file} is not in the local Hugging Face cache and the "
            f"hub cannot be reached ({why}); run where the hub is reachable, or load it once "
            f"there to fill the cache and run with HF_HUB_OFFLINE=1" for what in missing]


def problems(profile: Profile, phase_ids: list[str], read_data: bool = True,
             runs_dir: Path | None = None) -> list[str]:
    """Everything missing for these phases, one line each. `read_data=False` (cogumi plan)
    reads no source records and fetches no converter."""
    if not phase_ids:
        return []
    found = missing_packages(profile, phase_ids) + missing_files(profile, phase_ids)
    if found and read_data:  # reading records needs the packages; fetching, the rest
        return found
    found += hub_problems(profile, phase_ids)
    if read_data and not found:
        found += schema_mismatches(profile, phase_ids) + benchmark_column_problems(
            profile, phase_ids)
    found += gpu_problems(profile, phase_ids)
    disk = disk_problem(profile, phase_ids, runs_dir)
    if disk:
        found.append(disk)
    if read_data and not found:
        converter = converter_problem(phase_ids)
        if converter:
            found.append(converter)
    return found


def check(profile: Profile, phase_ids: list[str], runs_dir: Path | None = None) -> None:
    """Raise PreflightError (one line) if any phase in `phase_ids` lacks what it needs."""
    if not phase_ids:
        return
    problems_ = problems(profile, phase_ids, runs_dir=runs_dir)
    if problems_:
        raise PreflightError(f"refusing to start phases {', '.join(phase_ids)} on profile "
                             f"{profile.name}: " + "; ".join(problems_))
