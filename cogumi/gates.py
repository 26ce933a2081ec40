"""Declarative quality gates: one TOML file per phase under `gates/`.

A gate is `metric comparator threshold` plus `why` (the seed's reason). A profile may
override a threshold, but only explicitly (`[[gate_overrides]]` with its own `why`), and the
resolved gate remembers where its threshold came from so every report can show it.

The pytest plugin in `gates/conftest.py` turns each resolved gate into one test.
"""

from __future__ import annotations

import math
import operator
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

from cogumi.profile import Profile
from cogumi.registry import PHASES, PhaseSpec, get_phase

COMPARATORS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt,
               "==": operator.eq}
_GATE_KEYS = {"metric", "op", "threshold", "why"}


class GateFileError(ValueError):
    """A gate file that cannot be used; one line naming the file and the key."""


@dataclass(frozen=True)
class Gate:
    metric: str
    op: str
    threshold: float
    why: str
    source: str
    """Where the threshold in force came from: the gate file or the profile override."""
    waived: bool = False
    """Measured and reported, but not blocking (an explicit profile override)."""

    def check(self, value: float | None) -> bool:
        """A missing or non-finite value never passes."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        return bool(COMPARATORS[self.op](value, self.threshold))

    def describe(self) -> str:
        return f"{self.metric} {self.op} {self.threshold:g}"

    def to_dict(self) -> dict:
        return asdict(self)


def repo_root() -> Path:
    """The checkout that holds gates/ and fixtures/ (cogumi is installed editable from it)."""
    return Path(__file__).resolve().parents[1]


def gate_file_path(phase: PhaseSpec, root: Path | None = None) -> Path:
    return (root or repo_root()) / phase.gate_file


def load_gate_file(path: Path, phase: PhaseSpec) -> list[Gate]:
    """Parse and validate one phase's gate file against the metrics that phase reports."""
    name = f"gates/{path.name}"
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise GateFileError(f"{name}: missing gate file for phase {phase.id}") from None
    except tomllib.TOMLDecodeError as exc:
        raise GateFileError(f"{name}: not valid TOML: {exc}") from None
    unknown_top = set(raw) - {"phase", "gates"}
    if unknown_top:
        raise GateFileError(f"{name}: unknown key '{sorted(unknown_top)[0]}'")
    if raw.get("phase") != phase.id:
        raise GateFileError(f"{name}: key 'phase' is {raw.get('phase')!r}, expected {phase.id!r}")
    gates = []
    for i, entry in enumerate(raw.get("gates", []), start=1):
        where = f"{name}: gates[{i}]"
        extra = set(entry) - _GATE_KEYS
        if extra:
            raise GateFileError(f"{where}: unknown key '{sorted(extra)[0]}'")
        missing = _GATE_KEYS - set(entry)
        if missing:
            raise GateFileError(f"{where}: missing key '{sorted(missing)[0]}'")
        if entry["metric"] not in phase.metrics:
            raise GateFileError(
                f"{where}: key 'metric': unknown metric {entry['metric']!r} for phase "
                f"{phase.id} (known: {', '.join(phase.metrics)})")
        if entry["op"] not in COMPARATORS:
            raise GateFileError(
                f"{where}: key 'op': unknown comparator {entry['op']!r} "
                f"(use one of {' '.join(COMPARATORS)})")
        if not isinstance(entry["threshold"], int | float) or isinstance(entry["threshold"], bool):
            raise GateFileError(f"{where}: key 'threshold' must be a number")
        if not str(entry["why"]).strip():
            raise GateFileError(f"{where}: key 'why' is empty; say the seed's reason")
        gates.append(Gate(entry["metric"], entry["op"], float(entry["threshold"]),
                          entry["why"], source=name))
    if not gates:
        raise GateFileError(f"{name}: no gates; a phase without gates cannot be signed off")
    return gates


def resolve_gates(phase_id: str, profile: Profile, root: Path | None = None) -> list[Gate]:
    """The gates in force for a phase under a profile, each knowing its threshold's source."""
    phase = get_phase(phase_id)
    gates = load_gate_file(gate_file_path(phase, root), phase)
    by_metric = {g.metric: g for g in gates}
    for n, override in enumerate(profile.gate_overrides, start=1):
        if override.phase != phase.id:
            continue
        if override.metric not in by_metric:
            raise GateFileError(
                f"{profile.source_file}: gate_overrides[{n}]: key 'metric': "
                f"{override.metric!r} has no gate in {phase.gate_file} to override")
        base = by_metric[override.metric]
        threshold = base.threshold if override.waive else override.threshold
        by_metric[override.metric] = Gate(
            base.metric, base.op, threshold,
            f"{override.why} (seed: {base.describe()}: {base.why})",
            source=f"profile {profile.name} ({'waiver' if override.waive else 'override'} "
                   f"of {base.source})",
            waived=override.waive)
    return [by_metric[g.metric] for g in gates]


def validate_overrides(profile: Profile) -> None:
    """Every override must name a known phase and a gated metric (checked at load time)."""
    known = {p.id for p in PHASES}
    for n, override in enumerate(profile.gate_overrides, start=1):
        if override.phase not in known:
            raise GateFileError(
                f"{profile.source_file}: gate_overrides[{n}]: key 'phase': unknown phase "
                f"{override.phase!r}")
        resolve_gates(override.phase, profile)
