"""Declarative quality gates: one TOML file per phase under `gates/`.

A gate is `metric comparator threshold` plus `why` (the seed's reason). Its threshold is the
seed's number, or, for a profile with `[gating] thresholds = "rules"`, the output of the rule
the gate file declares (cogumi.thresholds: computed from what is known before the phase
runs). A profile never sets a threshold; it may only waive a gate with its own `why`, and a
waived capability gate (`capability = true`) never makes a sign-off. The resolved gate
remembers where its threshold came from so every report can show it.

A gate marked `claim = true` is one of the seed's claims against a frontier model (the
judge-made "MATH 41 %" of 1A and 1B, 5B's "beats GPT-4 on 3 domains": see
shared/seed/ORIGIN_FINDINGS.md). It is measured on every run, at the seed's own number, and
reported as CLAIM MET or CLAIM NOT MET beside the verdict; it never blocks a sign-off and
never counts as a pass. Issue 16 asks for exactly that of 5B's claim ("measure it, and let it
fail honestly" while 5B signs off); read with a verifier, 1A's and 1B's preference and ties
claims cannot be met by any student no better than its reference (preference is
1/2 + (student - reference)/2), so as gates they could never pass against the stronger
teacher issue 14 requires. Which gates are claims is fixed in the gate files and checked by
tests/test_threshold_rule.py; a profile cannot mark one.

The pytest plugin in `gates/conftest.py` turns each resolved gate into one test.
"""

from __future__ import annotations

import math
import operator
import tomllib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from cogumi import thresholds
from cogumi.locations import data_root
from cogumi.profile import Profile
from cogumi.registry import PHASES, PhaseSpec, get_phase

COMPARATORS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt,
               "==": operator.eq}
_GATE_KEYS = {"metric", "op", "threshold", "why"}
_OPTIONAL_KEYS = {"capability", "rule", "claim"}


class GateFileError(ValueError):
    """A gate file that cannot be used; one line naming the file and the key."""


@dataclass(frozen=True)
class Gate:
    metric: str
    op: str
    threshold: float
    """The threshold in force: the seed's number, or the declared rule's output (NaN when the
    rule could not be computed, which fails the gate)."""
    why: str
    source: str
    """Where the threshold in force came from: the gate file's number or its rule."""
    waived: bool = False
    """Measured and reported, but not blocking (an explicit profile waiver)."""
    capability: bool = False
    """The gate decides whether the output means anything (a score above chance, a fit
    inside its range): waiving it gives "not signed off: capability absent"."""
    seed_threshold: float | None = None
    """The gate file's own number, shown beside a rule's output."""
    claim: bool = False
    """A seed claim against a frontier model: measured and reported (CLAIM MET / CLAIM NOT
    MET), never blocking a sign-off (module docstring)."""

    def check(self, value: float | None) -> bool:
        """A missing or non-finite value (or threshold) never passes."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        if math.isnan(self.threshold):
            return False
        return bool(COMPARATORS[self.op](value, self.threshold))

    def describe(self) -> str:
        return f"{self.metric} {self.op} {self.threshold:g}"

    def to_dict(self) -> dict:
        return asdict(self)


def repo_root() -> Path:
    """The folder that holds gates/, fixtures/ and benchmarks/results/: the checkout, or
    the copy an installed wheel ships (cogumi.locations)."""
    return data_root()


def gate_file_path(phase: PhaseSpec, root: Path | None = None) -> Path:
    return (root or repo_root()) / phase.gate_file


@dataclass(frozen=True)
class _Declared:
    gate: Gate
    rule: dict | None


def _load_declared(path: Path, phase: PhaseSpec) -> list[_Declared]:
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
    declared = []
    for i, entry in enumerate(raw.get("gates", []), start=1):
        where = f"{name}: gates[{i}]"
        extra = set(entry) - _GATE_KEYS - _OPTIONAL_KEYS
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
        for flag in ("capability", "claim"):
            if not isinstance(entry.get(flag, False), bool):
                raise GateFileError(f"{where}: key '{flag}' must be true or false")
        if entry.get("claim") and (entry.get("capability") or "rule" in entry):
            raise GateFileError(f"{where}: key 'claim': a seed claim is measured at the "
                                f"seed's number and decides nothing, so it is neither a "
                                f"capability gate nor ruled")
        rule = entry.get("rule")
        if rule is not None:
            if not isinstance(rule, dict) or rule.get("name") not in thresholds.RULES:
                raise GateFileError(f"{where}: key 'rule': needs name = one of "
                                    f"{', '.join(thresholds.RULES)}")
            args = set(rule) - {"name"}
            if args != thresholds.RULE_ARGS[rule["name"]]:
                raise GateFileError(f"{where}: key 'rule': {rule['name']} takes "
                                    f"{', '.join(sorted(thresholds.RULE_ARGS[rule['name']]))}")
        declared.append(_Declared(
            Gate(entry["metric"], entry["op"], float(entry["threshold"]), entry["why"],
                 source=name, capability=entry.get("capability", False),
                 seed_threshold=float(entry["threshold"]),
                 claim=entry.get("claim", False)), rule))
    if not declared:
        raise GateFileError(f"{name}: no gates; a phase without gates cannot be signed off")
    return declared


def load_gate_file(path: Path, phase: PhaseSpec) -> list[Gate]:
    """Parse and validate one phase's gate file against the metrics that phase reports."""
    return [d.gate for d in _load_declared(path, phase)]


def rule_threshold(rule: dict, runs_dir: Path | None) -> tuple[float, str]:
    """A declared rule's output, or (NaN, why not): a rule that cannot be computed fails
    its gate rather than falling back to some other number."""
    args = {k: v for k, v in rule.items() if k != "name"}
    if runs_dir is None:
        return math.nan, f"rule {rule['name']}: not computed (no runs folder given)"
    try:
        value, how = thresholds.compute(rule["name"], args, runs_dir)
    except (thresholds.RuleError, OSError, ValueError) as exc:
        return math.nan, f"rule {rule['name']}: not computed ({exc})"
    return value, f"rule {rule['name']}: {how}"


def resolve_gates(phase_id: str, profile: Profile, root: Path | None = None,
                  runs_dir: Path | None = None) -> list[Gate]:
    """The gates in force for a phase under a profile, each knowing its threshold's source.

    `runs_dir` is the profile's runs folder (runs/<profile>): rules read input artifacts
    from it."""
    phase = get_phase(phase_id)
    path = gate_file_path(phase, root)
    declared = _load_declared(path, phase)
    use_rules = profile.gating.thresholds == "rules"
    by_metric: dict[str, Gate] = {}
    for d in declared:
        gate = d.gate
        if use_rules and d.rule is not None:
            value, how = rule_threshold(d.rule, runs_dir)
            gate = replace(gate, threshold=value,
                           source=f"{gate.source}, {how} (profile {profile.name}: "
                                  f"thresholds = \"rules\"; the seed's number is "
                                  f"{gate.seed_threshold:g})")
        by_metric[gate.metric] = gate
    for n, override in enumerate(profile.gate_overrides, start=1):
        if override.phase != phase.id:
            continue
        if override.metric not in by_metric:
            raise GateFileError(
                f"{profile.source_file}: gate_overrides[{n}]: key 'metric': "
                f"{override.metric!r} has no gate in {phase.gate_file} to waive")
        base = by_metric[override.metric]
        if base.claim:
            raise GateFileError(
                f"{profile.source_file}: gate_overrides[{n}]: key 'metric': "
                f"{override.metric!r} is a seed claim ({phase.gate_file}): it blocks nothing, "
                f"so there is nothing to waive")
        by_metric[override.metric] = replace(
            base, why=f"{override.why} (seed: {base.describe()}: {base.why})",
            source=f"profile {profile.name} (waiver of {base.source})", waived=True)
    return [by_metric[d.gate.metric] for d in declared]


def validate_overrides(profile: Profile) -> None:
    """Every waiver must name a known phase and a gated metric (checked at load time)."""
    known = {p.id for p in PHASES}
    for n, override in enumerate(profile.gate_overrides, start=1):
        if override.phase not in known:
            raise GateFileError(
                f"{profile.source_file}: gate_overrides[{n}]: key 'phase': unknown phase "
                f"{override.phase!r}")
        resolve_gates(override.phase, profile)


def gate_mark(g) -> str:
    """How a gate result reads in every report: a gate result or its dict (the ledger's,
    a snapshot's)."""
    get = g.get if isinstance(g, dict) else lambda k, d=None: getattr(g, k, d)
    if get("claim"):
        return "CLAIM MET" if get("passed") else "CLAIM NOT MET"
    return "WAIVED" if get("waived") else "PASS" if get("passed") else "FAIL"


def blocks_signoff(g) -> bool:
    """Whether this gate result keeps its phase from a sign-off: it failed and is neither a
    seed claim nor waived (a waived capability gate is handled apart: signoff.py)."""
    get = g.get if isinstance(g, dict) else lambda k, d=None: getattr(g, k, d)
    return not (get("passed") or get("claim") or get("waived"))


def gates_passed(gates: list[dict], brackets: bool = False) -> str:
    """"7/9 passed, 1 waived, seed claims 0/3 met" (brackets: "7/9 (1 waived; ...)"): the
    gates that decide counted apart from the seed's claims, which decide nothing."""
    deciding = [g for g in gates if not g.get("claim")]
    claims = [g for g in gates if g.get("claim")]
    waived = sum(bool(g.get("waived")) for g in deciding)
    extras = [f"{waived} waived"] if waived else []
    if claims:
        extras.append(f"seed claims {sum(bool(g['passed']) for g in claims)}/{len(claims)} met")
    count = f"{sum(bool(g['passed']) for g in deciding)}/{len(deciding)}"
    if brackets:
        return count + (f" ({'; '.join(extras)})" if extras else "")
    return count + " passed" + "".join(f", {e}" for e in extras)
