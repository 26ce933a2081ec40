"""Sequencing: run a phase after its inputs, gate it, sign it off — or refuse, in one line.

The rule a phase lives by: it starts only if every input has a sign-off whose digest
matches the bytes on disk now. When an input has never been signed off (or was signed off
under another profile, or over inputs that changed since), the runner runs it first. When
an input was signed off and its bytes changed since, that is not ours to repair: the
runner refuses and says which file differs.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from cogumi import artifacts, binding, ledger, locking, provenance
from cogumi.gates import blocks_signoff, repo_root, resolve_gates
from cogumi.ledger import State
from cogumi.profile import Profile
from cogumi.registry import PhaseSpec, get_phase, upstream
from cogumi.signoff import (
    REPORT_DETAILS,
    render_report,
    reports_dir,
    run_gate_tests,
    signoff_entry,
)


class PhaseRefused(RuntimeError):
    """A phase may not start; the message is one line naming the input and what differs."""


class PhaseInputError(RuntimeError):
    """A phase cannot do its work with what it was given (profile, inputs); one line."""


class GateFailed(RuntimeError):
    """A phase ran but did not pass its gates; nothing downstream may start."""


@dataclass
class PhaseContext:
    """What a phase function gets: its profile, where to write, where its inputs are."""
    profile: Profile
    phase: PhaseSpec
    out_dir: Path
    """The staging folder; everything written here becomes the artifact."""
    runs_dir: Path
    console: Console
    notes: list[str] = field(default_factory=list)
    """Lines for the report: reduced samples, fallbacks, anything a reader must know."""
    figures: list[dict] = field(default_factory=list)
    """Images in the artifact that the report embeds ({"path", "caption"}); see add_figure."""
    report_sections: list[str] = field(default_factory=list)
    """Tables every model-changing phase adds the same way (the paired comparison with its
    input, capability): kept apart from the phase's own text so either may come first."""
    _report_text: str = ""
    work_key: str = ""
    """binding.work_key: what the work folder's checkpoints were made from."""
    code_sha256: str = ""
    """cogumi.binding's digest of cogumi's source as the phase started (keys the eval cache)."""

    def write_report(self, markdown: str) -> None:
        """What the phase did, in numbers and tables: the sign-off report shows it under
        "Summary", above the gates. Written into the artifact (REPORT_DETAILS), so it is
        digested and sealed with everything else."""
        self._report_text = markdown.strip()
        self._flush_report()

    def add_report_section(self, markdown: str) -> None:
        """A section after the phase's own text in the same report.md."""
        self.report_sections.append(markdown.strip())
        self._flush_report()

    def _flush_report(self) -> None:
        parts = [t for t in (self._report_text, *self.report_sections) if t]
        artifacts.atomic_write_text(self.out_dir / REPORT_DETAILS, "\n\n".join(parts) + "\n")

    def add_figure(self, name: str, caption: str) -> None:
        """Embed an image this phase wrote into out_dir (e.g. "domain_mix.png") in its
        report."""
        if not (self.out_dir / name).is_file():
            raise FileNotFoundError(f"{self.out_dir / name}: figure not written")
        self.figures.append({"path": name, "caption": caption})

    @property
    def root(self) -> Path:
        return repo_root()

    @property
    def seed(self) -> int:
        return self.profile.seed

    @property
    def work_dir(self) -> Path:
        """Scratch space that survives a killed run (checkpoints), outside the artifact. It is
        keyed by the phase's inputs and code (work_key), so a resumed run only ever continues
        a checkpoint made from the same upstream artifacts, named files, settings and code."""
        path = self.runs_dir / ".work" / self.phase.id
        if self.work_key:
            path = path / self.work_key
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def inputs(self) -> tuple[str, ...]:
        """The phases this one reads under its profile (PhaseSpec.inputs_for)."""
        return self.phase.inputs_for(self.profile)

    def input_dir(self, phase_id: str) -> Path:
        if phase_id not in self.inputs:
            raise KeyError(f"phase {self.phase.id} does not declare {phase_id} as an input")
        return self.runs_dir / phase_id

    def resolve(self, path: str) -> Path:
        """A path from the profile, relative to the repository root."""
        p = Path(path)
        return p if p.is_absolute() else self.root / p

    def progress(self) -> Progress:
        return LoggedProgress(TextColumn("[bold]{task.description}"), BarColumn(),
                              MofNCompleteColumn(), TimeElapsedColumn(),
                              TimeRemainingColumn(), console=self.console, transient=False)


class LoggedProgress(Progress):
    """rich's bars, and where the console is no terminal (a log file, CI, nohup), where rich
    draws nothing until the end, one plain line per task at most every `every_s` seconds
    and at its end: "generating (20 requests): 8/20, 4m10s elapsed, about 6m left"."""

    every_s = 60.0

    def __init__(self, *columns, **kwargs):
        super().__init__(*columns, **kwargs)
        self._logged_at: dict = {}

    def add_task(self, description, *args, **kwargs):
        task_id = super().add_task(description, *args, **kwargs)
        self._logged_at[task_id] = time.monotonic()
        return task_id

    def advance(self, task_id, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._log(task_id)

    def update(self, task_id, *args, **kwargs) -> None:
        super().update(task_id, *args, **kwargs)
        self._log(task_id)

    def _log(self, task_id) -> None:
        if self.console.is_terminal:
            return
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                return
            now = time.monotonic()
            done = task.total is not None and task.completed >= task.total
            if not done and now - self._logged_at.get(task_id, now) < self.every_s:
                return
            self._logged_at[task_id] = now
            line = f"{task.description}: {task.completed:g}"
            if task.total is not None:
                line += f"/{task.total:g}"
            line += f", {_duration(task.elapsed or 0.0)} elapsed"
            if not done and task.time_remaining is not None:
                line += f", about {_duration(task.time_remaining)} left"
        self.console.print(line, markup=False, highlight=False)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    try:
        import numpy as np
        np.random.seed(seed)
    except ImportError:
        pass
    try:
        import torch
        torch.manual_seed(seed)
    except ImportError:
        pass


def _phase_function(phase: PhaseSpec) -> Callable[[PhaseContext], dict]:
    module, func = phase.entry.split(":")  # type: ignore[union-attr]
    return getattr(importlib.import_module(module), func)


def config_digest(profile: Profile, phase_id: str) -> str:
    """The part of the profile a phase's sign-off is bound to (PhaseSpec.config)."""
    return profile.config_digest(get_phase(phase_id).config)


def current_binding(profile: Profile, phase_id: str, runs_dir: Path) -> dict:
    """The named input files, code and gate files as they are now (binding.binding)."""
    return binding.binding(profile, get_phase(phase_id).id, repo_root(), runs_dir)


def _binding_if_built(profile: Profile, phase_id: str, runs_dir: Path) -> dict | None:
    # Hashing is only worth it where there is a manifest to compare with.
    if not (runs_dir / phase_id / artifacts.MANIFEST).exists():
        return None
    return current_binding(profile, phase_id, runs_dir)


def check_phase(profile: Profile, phase_id: str, runs_dir: Path,
                _memo: dict | None = None) -> ledger.SignoffCheck:
    """check_signoff against the profile now (settings, named files, code, gates), and over
    the whole chain: a phase whose upstream is stale, changed or gone is stale too, with the
    cause named ("phase 1A is stale: upstream phase 0 is stale: <file> changed"). An upstream
    whose last gate run failed is not propagated here: what was built on it says so itself
    (built_on_failed_inputs), and the runner rebuilds in chain order anyway."""
    memo = {} if _memo is None else _memo  # phase id -> (check, the root cause's reason)
    phase_id = get_phase(phase_id).id
    if phase_id not in memo:
        check = ledger.check_signoff(runs_dir, phase_id, config_digest(profile, phase_id),
                                     _binding_if_built(profile, phase_id, runs_dir))
        cause = check.reason
        if check.ok or check.regate:
            for input_id in get_phase(phase_id).inputs_for(profile):
                up = check_phase(profile, input_id, runs_dir, memo)
                if up.state in (State.STALE, State.TAMPERED, State.MISSING) and not up.regate:
                    cause = memo[up.phase][1]
                    check = ledger.SignoffCheck(phase_id, State.STALE,
                                                f"phase {phase_id} is stale: upstream {cause}",
                                                check.entry)
                    break
        memo[phase_id] = (check, cause)
    return memo[phase_id][0]


def _require_inputs_valid(profile: Profile, phase: PhaseSpec, runs_dir: Path,
                          keep_going: bool = False) -> dict:
    """Refuse unless every input's sign-off matches the bytes on disk now. With
    `keep_going`, an input whose gates failed is accepted if its artifact is intact, and
    recorded as such: whatever is built on it can never be signed off (gate_phase)."""
    recorded = {}
    memo: dict = {}
    for input_id in phase.inputs_for(profile):
        check = check_phase(profile, input_id, runs_dir, memo)
        if check.regate:
            raise PhaseRefused(f"refusing phase {phase.id}: input {check.reason}; re-gate it "
                               f"first (cogumi gate {input_id})")
        if keep_going and check.state is State.FAILED and _failed_but_intact(
                profile, input_id, runs_dir, check):
            recorded[input_id] = {"manifest_sha256": check.entry["manifest_sha256"],
                                  "gates_failed": True}
            continue
        if not check.ok:
            raise PhaseRefused(f"refusing phase {phase.id}: input {check.reason}")
        recorded[input_id] = {"manifest_sha256": check.entry["manifest_sha256"]}
    return recorded


def _failed_but_intact(profile: Profile, phase_id: str, runs_dir: Path,
                       check: ledger.SignoffCheck) -> bool:
    """The artifact whose last gate run failed is the one that gate run judged, built under
    the profile's current settings: rerunning it would only fail the same way."""
    folder = runs_dir / phase_id
    try:
        manifest = artifacts.read_manifest(folder)
    except artifacts.ManifestError:
        return False
    if (check.entry is None or ledger.manifest_digest(folder) != check.entry["manifest_sha256"]
            or manifest.get("config_sha256") != config_digest(profile, phase_id)
            or binding.build_changes(manifest, current_binding(profile, phase_id, runs_dir))):
        return False
    return all((folder / rel).is_file() and artifacts.sha256_file(folder / rel) == digest
               for rel, digest in manifest["outputs"].items())


def execute_phase(profile: Profile, phase_id: str, runs_dir: Path, console: Console,
                  keep_going: bool = False, fresh: bool = False) -> Path:
    """Run one phase function into a staging folder and move it into place, sealed.
    `keep_going`: see run_pipeline_to. `fresh` (--force): discard the phase's work folder,
    checkpoints included, so nothing is resumed."""
    with locking.profile_lock(runs_dir):
        return _execute_phase(profile, phase_id, runs_dir, console, keep_going, fresh)


def _prepare_work(runs_dir: Path, phase_id: str, key: str, fresh: bool) -> None:
    """Drop work folders made from other inputs or code (they can never be resumed), or all
    of them with `fresh`. Only under the profile's lock: no other run can be using them."""
    root = runs_dir / ".work" / phase_id
    if not root.is_dir() or not locking.is_held_here(runs_dir):
        return
    for p in root.iterdir():
        if fresh or p.name != key:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def _execute_phase(profile: Profile, phase_id: str, runs_dir: Path, console: Console,
                   keep_going: bool, fresh: bool) -> Path:
    phase = get_phase(phase_id)
    if not phase.implemented:
        raise PhaseRefused(f"refusing phase {phase.id}: not implemented yet "
                           f"(see `cogumi plan`); no stub will pretend to run it")
    inputs = _require_inputs_valid(profile, phase, runs_dir, keep_going)
    resolve_gates(phase.id, profile)  # a broken gate file should fail before hours of work
    final = runs_dir / phase.id
    # Bound at the start: what the phase reads is what is on disk as it begins.
    bound = current_binding(profile, phase.id, runs_dir)
    config = config_digest(profile, phase.id)
    key = binding.work_key(config, inputs, bound)
    _prepare_work(runs_dir, phase.id, key, fresh)
    artifacts.clean_stale_staging(runs_dir)
    stage = artifacts.staging_dir(final)
    ctx = PhaseContext(profile, phase, stage, runs_dir, console, work_key=key,
                       code_sha256=bound["code_sha256"])
    _seed_everything(profile.seed)
    console.rule(f"phase {phase.id}: {phase.title} [{profile.name}]")
    start = time.perf_counter()
    try:
        metrics = _phase_function(phase)(ctx)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)  # this run's own staging, nobody else's
        raise
    wall = time.perf_counter() - start
    artifacts.write_json(stage / artifacts.METRICS, metrics)
    hours = wall / 3600
    manifest = {
        "phase": phase.id,
        "profile": profile.name,
        "profile_sha256": profile.sha256,
        "config_sha256": config,
        "inputs": inputs,
        **bound,
        "outputs": artifacts.digest_tree(stage),
        "git_commit": artifacts.git_commit(repo_root()),
        "versions": artifacts.library_versions(),
        "seed": profile.seed,
        "wall_time_s": round(wall, 2),
        "peak_rss_mb": artifacts.peak_rss_mb(),
        "hardware": profile.hardware.name,
        "machine": provenance.machine(),
        "estimated_cost_usd": round(hours * profile.hardware.price_per_hour_usd, 6),
        "notes": ctx.notes,
        "figures": ctx.figures,
    }
    # The manifest is written last: its presence is what marks the folder complete.
    artifacts.write_json(stage / artifacts.MANIFEST, manifest)
    artifacts.commit_staged(stage, final)
    console.print(f"phase {phase.id} finished in {wall:.1f} s -> {final}")
    return final


def gate_phase(profile: Profile, phase_id: str, runs_dir: Path, console: Console) -> dict:
    """Run the phase's gates as pytest, write the report, append the ledger line."""
    with locking.profile_lock(runs_dir):
        return _gate_phase(profile, phase_id, runs_dir, console)


def _gate_phase(profile: Profile, phase_id: str, runs_dir: Path, console: Console) -> dict:
    phase = get_phase(phase_id)
    folder = runs_dir / phase.id
    manifest = artifacts.read_manifest(folder)
    # Re-gating an artifact is only meaningful if it is the one its manifest describes.
    for rel, digest in manifest["outputs"].items():
        if artifacts.sha256_file(folder / rel) != digest:
            raise PhaseRefused(f"refusing to gate phase {phase.id}: {folder / rel} differs "
                               f"from its manifest")
    gates_files = binding.gates_files(phase.id)  # before the run: what judged it
    results, junit = run_gate_tests(profile, phase.id, runs_dir)
    entry = signoff_entry(profile, phase.id, runs_dir, results, junit)
    entry["gates_files"] = gates_files
    failed_inputs = sorted(i for i, rec in manifest.get("inputs", {}).items()
                           if rec.get("gates_failed"))
    if failed_inputs:
        # Built with --keep-going on an input that failed its gates: measured, never signed off.
        entry["built_on_failed_inputs"] = failed_inputs
        entry["passed"] = False
    ledger.append(runs_dir, entry)
    metrics = json.loads((folder / artifacts.METRICS).read_text())
    details = folder / REPORT_DETAILS
    render_report(entry, manifest, metrics, console,
                  reports_dir(runs_dir) / f"{phase.session_name}.md",
                  details.read_text() if details.exists() else "")
    if not entry["passed"]:
        failed = [r for r in results if blocks_signoff(r)]
        why = [f"{r.metric} = {r.value} (needs {r.op} {r.threshold:g})" for r in failed]
        if failed_inputs:
            why.append(f"built on {', '.join(failed_inputs)}, whose gates failed")
        raise GateFailed(f"phase {phase.id} not signed off: " + "; ".join(why))
    return entry


def _gate_key(gates) -> set:
    return {(g["metric"], g["op"], float(g["threshold"]), bool(g.get("waived")),
             bool(g.get("claim"))) for g in gates}


def _only_gates_changed(profile: Profile, phase: PhaseSpec, runs_dir: Path,
                        check: ledger.SignoffCheck) -> bool:
    """True when the artifact is intact and built under the same settings, inputs and code,
    but the gates in force (gate files, profile overrides) differ from those of its last gate
    run: then the artifact is re-gated, not rebuilt."""
    if check.regate:
        return True
    if check.state not in (State.VALID, State.FAILED) or check.entry is None:
        return False
    try:
        manifest = artifacts.read_manifest(runs_dir / phase.id)
    except artifacts.ManifestError:
        return False
    if manifest.get("config_sha256") != config_digest(profile, phase.id):
        return False
    bound = current_binding(profile, phase.id, runs_dir)
    if check.state is State.FAILED and (binding.build_changes(manifest, bound)
                                        or not _upstream_unchanged(runs_dir, phase)):
        return False
    now = [dataclasses.asdict(g) for g in resolve_gates(phase.id, profile, runs_dir=runs_dir)]
    return (_gate_key(now) != _gate_key(check.entry.get("gates", []))
            or bool(binding.gate_changes(check.entry.get("gates_files"),
                                            bound["gates_files"])))


def run_pipeline_to(profile: Profile, phase_id: str, runs_dir: Path, console: Console,
                    with_inputs: bool = True, force: bool = False,
                    keep_going: bool = False) -> list[str]:
    """Bring `phase_id` to a valid sign-off, running whatever upstream lacks one.

    Phases with a valid sign-off are skipped. A phase whose signed-off bytes changed stops
    everything with a PhaseRefused naming the file. `force` reruns the target phase itself.

    `keep_going` (``cogumi run --keep-going``) is for measuring a pipeline whose early gates
    cannot pass (a 270M model against the seed's 8B thresholds): a phase that fails its gates
    does not stop the chain; the phases after it are built on its artifact, gated and
    reported, but marked as built on a failed input and never signed off. Returns why each
    phase in the chain was not signed off (empty without `keep_going`: a failure raises).
    """
    with locking.profile_lock(runs_dir):
        return _run_pipeline_to(profile, phase_id, runs_dir, console, with_inputs, force,
                                keep_going)


def _run_pipeline_to(profile: Profile, phase_id: str, runs_dir: Path, console: Console,
                     with_inputs: bool, force: bool, keep_going: bool) -> list[str]:
    target = get_phase(phase_id)
    chain = (upstream(target.id, profile) if with_inputs else []) + [target]
    not_signed: list[str] = []

    def build_and_gate(phase: PhaseSpec, fresh: bool = False) -> None:
        execute_phase(profile, phase.id, runs_dir, console, keep_going, fresh)
        gate(phase)

    def gate(phase: PhaseSpec) -> None:
        try:
            gate_phase(profile, phase.id, runs_dir, console)
        except GateFailed as exc:
            if not keep_going:
                raise
            console.print(f"[red]✗[/] {exc}; --keep-going: the phases after it run on it")
            not_signed.append(str(exc))

    for phase in chain:
        # Not check_phase: upstream comes first in the chain and is settled by then; with
        # --keep-going a phase built on a failed input is reused as it is.
        check = ledger.check_signoff(runs_dir, phase.id, config_digest(profile, phase.id),
                                     _binding_if_built(profile, phase.id, runs_dir))
        if force and phase is target:
            console.print(f"[yellow]•[/] --force: rebuilding phase {phase.id} from scratch, "
                          f"no checkpoint resumed ({check.reason})", soft_wrap=True)
            build_and_gate(phase, fresh=True)
            continue
        if check.state is State.TAMPERED:
            raise PhaseRefused(f"refusing phase {target.id}: {check.reason}; "
                               f"rerun phase {phase.id} with --force to rebuild it")
        if _only_gates_changed(profile, phase, runs_dir, check):
            console.print(f"[yellow]•[/] phase {phase.id}: its gates changed since the last gate "
                          f"run; re-gating the same artifact")
            gate(phase)
            continue
        if check.ok:
            console.print(f"[green]✓[/] phase {phase.id} signed off "
                          f"(manifest {check.entry['manifest_sha256'][:12]}), skipping")
            continue
        if (keep_going and check.state is State.FAILED and _upstream_unchanged(runs_dir, phase)
                and _failed_but_intact(profile, phase.id, runs_dir, check)):
            console.print(f"[yellow]•[/] {check.reason}; --keep-going: using its artifact as "
                          f"it is (rebuilding it would fail the same way)")
            not_signed.append(check.reason)
            continue
        if check.state is not State.MISSING:
            # soft_wrap: a reason names files, and a path folded mid-name cannot be found
            console.print(f"[yellow]•[/] {check.reason}: running it again", soft_wrap=True)
        build_and_gate(phase)
    return not_signed


def pending_phases(profile: Profile, targets: list[str], runs_dir: Path,
                   with_inputs: bool = True, force: bool = False) -> list[str]:
    """The phases `cogumi run TARGETS` may build, in order: every phase of the chains that has
    no valid sign-off now (and the targets themselves with `force`). The preflight checks
    these before the first one starts."""
    memo: dict = {}
    out: list[str] = []
    for target_id in targets:
        target = get_phase(target_id)
        chain = (upstream(target.id, profile) if with_inputs else []) + [target]
        for phase in chain:
            if phase.id in out:
                continue
            if (force and phase is target) or not check_phase(profile, phase.id, runs_dir,
                                                              memo).ok:
                out.append(phase.id)
    return out


def _upstream_unchanged(runs_dir: Path, phase: PhaseSpec) -> bool:
    """Every input of the phase's artifact is still the one it was built from."""
    try:
        recorded = artifacts.read_manifest(runs_dir / phase.id).get("inputs", {})
    except artifacts.ManifestError:
        return False
    for input_id, rec in recorded.items():
        last = ledger.latest(runs_dir, input_id)
        if last is None or last.get("manifest_sha256") != rec["manifest_sha256"]:
            return False
    return True
