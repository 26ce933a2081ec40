"""Before the first phase of a run starts: does every phase in it have what it needs?

`check(profile, phase_ids)` looks, in this order, at
- packages: each phase's imports, the training backend's GPU packages, a packaged model
  (cogumi.needs), and system programs (bubblewrap, for phases that run generated code);
- files: every file the profile names that the phases read (data sources, planted truth,
  evaluation and prompt files, a local model folder), relative to the data root;
- data: the first records of each source in its declared schema (local file or hub
  dataset): a source none of whose first records fits the schema is refused;
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
from cogumi.profile import Profile

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


def check(profile: Profile, phase_ids: list[str]) -> None:
    """Raise PreflightError (one line) if any phase in `phase_ids` lacks what it needs."""
    if not phase_ids:
        return
    if not profile.runnable_here:  # before asking the hub or the GPU anything
        raise PreflightError(f"refusing to start phases {', '.join(phase_ids)}: profile "
                             f"{profile.name} is not runnable on this machine (runnable_here "
                             f"= false in {profile.source_file}); see `cogumi plan`")
    problems = missing_packages(profile, phase_ids) + missing_files(profile, phase_ids)
    if not problems:  # reading records needs the packages; fetching, that the rest is there
        problems += schema_mismatches(profile, phase_ids)
        problems += gpu_problems(profile, phase_ids)
    if not problems:
        converter = converter_problem(phase_ids)
        if converter:
            problems.append(converter)
    if problems:
        raise PreflightError(f"refusing to start phases {', '.join(phase_ids)} on profile "
                             f"{profile.name}: " + "; ".join(problems))
