"""The sign-off ledger: append-only `runs/<profile>/ledger.jsonl`.

Each line is one gate run of one phase: the phase, the sha256 of the manifest it judged,
the profile digest, every gate's value and verdict, and whether all passed. A passing line
is a sign-off. Nothing is ever rewritten: a later line for the same phase supersedes an
earlier one.

`check_signoff` answers the question every phase asks before it starts: does this input
have a sign-off whose digest matches the bytes on disk now?
"""

from __future__ import annotations

import enum
import fcntl
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cogumi import binding as bindings
from cogumi.artifacts import MANIFEST, ManifestError, read_manifest, sha256_bytes, sha256_file
from cogumi.gates import blocks_signoff

LEDGER = "ledger.jsonl"


class LedgerError(ValueError):
    """The ledger itself is unreadable; one line naming file and line."""


def append(runs_dir: Path, entry: dict) -> None:
    """Append one line, under an exclusive lock, flushed to disk before returning."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    entry = {"at": datetime.now(UTC).isoformat(timespec="seconds"), **entry}
    line = json.dumps(entry, sort_keys=True) + "\n"
    with open(runs_dir / LEDGER, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
        fcntl.flock(f, fcntl.LOCK_UN)


def entries(runs_dir: Path) -> list[dict]:
    path = runs_dir / LEDGER
    if not path.exists():
        return []
    out = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise LedgerError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
    return out


def latest(runs_dir: Path, phase_id: str) -> dict | None:
    """The most recent gate run of a phase, passing or not."""
    found = [e for e in entries(runs_dir) if e.get("phase") == phase_id]
    return found[-1] if found else None


class State(enum.Enum):
    VALID = "signed off"
    MISSING = "not signed off"
    FAILED = "gates failed"
    STALE = "stale"
    """Signed off, but for another profile or over inputs that have since changed."""
    TAMPERED = "changed after sign-off"


@dataclass
class SignoffCheck:
    phase: str
    state: State
    reason: str
    entry: dict | None = None
    regate: bool = False
    """Stale only because the gate files changed since its gate run: re-gate the artifact,
    do not rebuild it."""

    @property
    def ok(self) -> bool:
        return self.state is State.VALID


def check_signoff(runs_dir: Path, phase_id: str, config_sha256: str,
                  binding: dict | None = None) -> SignoffCheck:
    """Does `phase_id` have a sign-off that matches the bytes on disk now, made under the
    same profile settings (`config_sha256`: the tables the phase reads, see
    Profile.config_digest)? With `binding` (cogumi.binding.binding: the named input files, the
    code and the gate files as they are now), also over the same inputs, code and gates."""
    entry = latest(runs_dir, phase_id)
    folder = runs_dir / phase_id
    if entry is None:
        return SignoffCheck(phase_id, State.MISSING, f"phase {phase_id} has no sign-off")
    if not entry.get("passed"):
        failed = [g["metric"] for g in entry.get("gates", []) if blocks_signoff(g)]
        failed += [f"built on failed phase {i}" for i in entry.get("built_on_failed_inputs", [])]
        return SignoffCheck(phase_id, State.FAILED,
                            f"phase {phase_id}: last gate run failed ({', '.join(failed)})", entry)
    manifest_path = folder / MANIFEST
    try:
        actual = sha256_file(manifest_path)
    except FileNotFoundError:
        return SignoffCheck(phase_id, State.TAMPERED,
                            f"{manifest_path}: missing, but phase {phase_id} was signed off", entry)
    signed = entry["manifest_sha256"]
    if actual != signed:
        return SignoffCheck(
            phase_id, State.TAMPERED,
            f"{manifest_path}: changed after sign-off (sha256 {actual[:12]} != signed "
            f"{signed[:12]})", entry)
    try:
        manifest = read_manifest(folder)
    except ManifestError as exc:
        return SignoffCheck(phase_id, State.TAMPERED, str(exc), entry)
    for rel, digest in manifest["outputs"].items():
        path = folder / rel
        if not path.is_file():
            return SignoffCheck(phase_id, State.TAMPERED,
                                f"{path}: missing, but listed in the signed-off manifest", entry)
        now = sha256_file(path)
        if now != digest:
            return SignoffCheck(
                phase_id, State.TAMPERED,
                f"{path}: changed after sign-off (sha256 {now[:12]} != signed {digest[:12]})",
                entry)
    signed_config = manifest.get("config_sha256", "none recorded")
    if signed_config != config_sha256:
        return SignoffCheck(phase_id, State.STALE,
                            f"phase {phase_id} was signed off under different profile settings "
                            f"(config sha256 {signed_config[:12]} != {config_sha256[:12]})",
                            entry)
    changed = bindings.build_changes(manifest, binding) if binding is not None else []
    if changed:
        return SignoffCheck(phase_id, State.STALE,
                            f"phase {phase_id} is stale: {'; '.join(changed)}", entry)
    for input_id, recorded in manifest.get("inputs", {}).items():
        upstream = latest(runs_dir, input_id)
        if upstream is None or upstream.get("manifest_sha256") != recorded["manifest_sha256"]:
            return SignoffCheck(phase_id, State.STALE,
                                f"phase {phase_id} was built from an earlier run of "
                                f"phase {input_id}", entry)
    changed = (bindings.gate_changes(entry.get("gates_files"), binding["gates_files"])
               if binding is not None else [])
    if changed:
        return SignoffCheck(phase_id, State.STALE,
                            f"phase {phase_id} is stale: {'; '.join(changed)} since its gate "
                            f"run", entry, regate=True)
    return SignoffCheck(phase_id, State.VALID, f"phase {phase_id} signed off", entry)


def manifest_digest(folder: Path) -> str:
    return sha256_bytes((folder / MANIFEST).read_bytes())
