"""Running a phase's gates as pytest, and the sign-off report a person reads.

The gates run in a pytest subprocess (gates/conftest.py parametrizes one test per gate),
which writes JUnit XML. The report and the ledger line are built from that XML, so the
pytest run is the sign-off, not a re-computation beside it.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markdown import Markdown
from rich.table import Table

from cogumi.artifacts import atomic_write_text, read_manifest
from cogumi.gates import blocks_signoff, gate_mark, repo_root
from cogumi.ledger import manifest_digest
from cogumi.profile import Profile
from cogumi.registry import get_phase


@dataclass
class GateResult:
    metric: str
    op: str
    threshold: float
    source: str
    why: str
    value: float | None
    passed: bool
    message: str = ""
    waived: bool = False
    capability: bool = False
    claim: bool = False


def reports_dir(runs_dir: Path) -> Path:
    return runs_dir / "reports"


def run_gate_tests(profile: Profile, phase_id: str, runs_dir: Path) -> tuple[list[GateResult], Path]:
    """Run `pytest gates` for one phase; return one result per gate and the JUnit path."""
    phase = get_phase(phase_id)
    junit = reports_dir(runs_dir) / f"{phase.session_name}.junit.xml"
    junit.parent.mkdir(parents=True, exist_ok=True)
    root = repo_root()
    cmd = [sys.executable, "-m", "pytest", str(root / "gates"), "-q", "-p", "no:cacheprovider",
           "--rootdir", str(root / "gates"), "--no-header", "-o", "addopts=",
           f"--cogumi-phase={phase.id}", f"--cogumi-profile={profile.ref}",
           f"--cogumi-runs={runs_dir.parent}", f"--junitxml={junit}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if not junit.exists() or proc.returncode not in (0, 1):
        # 2-5 are pytest usage/collection errors: show them, they are ours to fix.
        raise RuntimeError(f"gate run for phase {phase.id} did not complete "
                           f"(pytest exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return parse_junit(junit), junit


def parse_junit(junit: Path) -> list[GateResult]:
    results = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        if "gate" not in props:
            raise RuntimeError(f"{junit}: test {case.get('name')} recorded no gate property")
        gate = json.loads(props["gate"])
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        message = (failure.get("message") or "") if failure is not None else ""
        # A waived gate is a pytest skip, a seed claim not met an xfail (also <skipped>);
        # nothing else may be skipped.
        skipped = case.find("skipped")
        claim = gate.get("claim", False)
        waived = skipped is not None and gate.get("waived", False)
        if skipped is not None and not (waived or claim):
            raise RuntimeError(f"{junit}: gate {gate['metric']} was skipped without a waiver")
        if skipped is not None and claim:
            message = skipped.get("message") or ""
        results.append(GateResult(gate["metric"], gate["op"], gate["threshold"], gate["source"],
                                  gate["why"], gate["value"],
                                  failure is None and skipped is None, message, waived,
                                  gate.get("capability", False), claim))
    return results


def signoff_entry(profile: Profile, phase_id: str, runs_dir: Path,
                  results: list[GateResult], junit: Path) -> dict:
    folder = runs_dir / phase_id
    manifest = read_manifest(folder)
    return {
        "event": "gate-run",
        "phase": phase_id,
        "profile": profile.name,
        "profile_sha256": profile.sha256,
        "manifest_sha256": manifest_digest(folder),
        # A waived gate does not block, unless it is a capability gate: an output whose
        # meaning was not shown is never signed off. A seed claim never blocks and never
        # counts as the pass a sign-off needs.
        "passed": any(r.passed and not r.claim for r in results) and not any(
            blocks_signoff(r) or (r.waived and r.capability) for r in results),
        "capability_absent": [r.metric for r in results if r.waived and r.capability],
        "claims_not_met": [r.metric for r in results if r.claim and not r.passed],
        "gates": [r.__dict__ for r in results],
        "junit": str(junit),
        "wall_time_s": manifest.get("wall_time_s"),
        "estimated_cost_usd": manifest.get("estimated_cost_usd"),
    }


_COLOURS = {"PASS": "green", "FAIL": "red", "WAIVED": "yellow", "CLAIM MET": "green",
            "CLAIM NOT MET": "magenta"}


def _fmt(value) -> str:
    if value is None:
        return "missing"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


REPORT_DETAILS = "report.md"
"""The phase's own Markdown in its artifact (PhaseContext.write_report): the sign-off report
shows it as the Summary. Part of the artifact, so it is digested too."""


def render_report(entry: dict, manifest: dict, metrics: dict, console: Console | None,
                  out: Path, details: str = "") -> str:
    """Write the Markdown sign-off report and print the same table with rich."""
    phase = get_phase(entry["phase"])
    absent = entry.get("capability_absent") or []
    verdict = ("SIGNED OFF" if entry["passed"] else
               f"NOT SIGNED OFF: capability absent ({', '.join(absent)} waived)" if absent
               else "NOT SIGNED OFF")
    unmet = entry.get("claims_not_met") or []
    if unmet:
        verdict += f" · seed claims not met: {', '.join(unmet)}"
    digest = entry["manifest_sha256"][:16]
    time_s = manifest.get("wall_time_s", 0.0)
    cost = manifest.get("estimated_cost_usd", 0.0)
    lines = [
        f"# Phase {phase.id} — {phase.title}: {verdict}", "",
        f"- profile: `{entry['profile']}` (sha256 {entry['profile_sha256'][:16]})",
        f"- artifact: `runs/{entry['profile']}/{phase.id}/` — manifest sha256 `{digest}`",
        f"- wall time {time_s:.1f} s, peak RSS {manifest.get('peak_rss_mb', 0):.0f} MB, "
        f"estimated cost ${cost:.4f} on {manifest.get('hardware', '?')}",
        f"- code {manifest.get('git_commit', '?')}; JUnit XML `{entry['junit']}`", "",
    ]
    if entry.get("built_on_failed_inputs"):
        lines += [f"> **Built on phase {', '.join(entry['built_on_failed_inputs'])}, which "
                  f"failed its gates** (`cogumi run --keep-going`). The numbers below measure "
                  f"this phase on that artifact; it is not signed off, whatever its own gates "
                  f"say.", ""]
    if details.strip():
        lines += ["## Summary", "", details.strip(), ""]
    lines += ["## Gates", "", "| metric | value | threshold | source | result |",
              "|---|---|---|---|---|"]
    table = Table(title=f"Phase {phase.id} gates — {verdict}  (artifact {digest}, "
                        f"{time_s:.1f} s, ${cost:.4f})")
    for col in ("metric", "value", "threshold", "source", "result"):
        table.add_column(col)
    for g in entry["gates"]:
        mark = gate_mark(g)
        shortfall = ""
        if mark in ("FAIL", "CLAIM NOT MET") and isinstance(g["value"], int | float):
            # NaN is a metric the phase could not define (e.g. retention with no score above
            # chance to retain): it fails, and "off by nan" would say nothing.
            shortfall = (f" (off by {abs(g['value'] - g['threshold']):.4g})"
                         if math.isfinite(g["value"]) else " (undefined)")
        lines.append(f"| {g['metric']} | {_fmt(g['value'])} | {g['op']} {g['threshold']:g} | "
                     f"{g['source']} | **{mark}**{shortfall} |")
        table.add_row(g["metric"], _fmt(g["value"]), f"{g['op']} {g['threshold']:g}",
                      g["source"], f"[{_COLOURS[mark]}]{mark}{shortfall}")
    lines += ["", "## Why each threshold", ""]
    kinds = {"capability": " (capability gate)",
             "claim": " (seed claim: measured, never blocking)"}
    lines += [f"- `{g['metric']}`{''.join(v for k, v in kinds.items() if g.get(k))}: "
              f"{g['why']}" for g in entry["gates"]]
    before = {k[len("before."):]: v for k, v in metrics.items() if k.startswith("before.")}
    if before:
        lines += ["", "## Before and after this phase", "", "| metric | before | after |",
                  "|---|---|---|"]
        lines += [f"| {k} | {_fmt(v)} | {_fmt(metrics.get(k))} |" for k, v in sorted(before.items())]
    figures = manifest.get("figures") or []
    if figures:
        # The report sits in runs/<profile>/reports/, the artifact in runs/<profile>/<phase>/.
        lines += ["", "## Figures", ""]
        for figure in figures:
            lines += [f"![{figure['caption']}](../{phase.id}/{figure['path']})", "",
                      f"*{figure['caption']}* (`runs/{entry['profile']}/{phase.id}/"
                      f"{figure['path']}`)", ""]
        lines.pop()
    lines += ["", "## All metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in sorted(metrics.items())]
    notes = manifest.get("notes") or []
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    text = "\n".join(lines) + "\n"
    atomic_write_text(out, text)
    if console is not None:
        console.print(table)
        if details.strip():
            console.print(Markdown(details))
        console.print(f"report: {out}")
    return text
