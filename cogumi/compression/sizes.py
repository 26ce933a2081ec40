"""The size accounting table, carried from phase to phase (`sizes.json`).

Each row is `common.size_row` (bytes on disk, MB of 10^6 bytes, bits per parameter of the
weight files) plus the phase that wrote the artifact. A phase copies its input's rows and
appends its own, so 2D's and 2F's reports show the whole way from the full-precision model
to the packed file without declaring every earlier phase as an input.

The seed's sizes are an 8B model's (Llama-3.1-8B: 8.03e9 parameters). `scaled_mb` states
how a seed size maps to another model: the same bits per parameter, i.e. MB × params /
8.03e9. Where that is unreachable (520 MB for 8.03e9 parameters is 0.52 bits per parameter;
GGUF K-quants store 4.5-6.6), the gate fails and the report says by how much.
"""

from __future__ import annotations

import json
from pathlib import Path

from cogumi.runner import PhaseContext

SIZES = "sizes.json"
SEED_PARAMETERS = 8.03e9
"""Llama-3.1-8B-Instruct's parameter count, the model the seed's MB figures describe."""


def scaled_mb(seed_mb: float, parameters: float) -> float:
    """A seed size (MB at 8.03e9 parameters) at the same bits per parameter for `parameters`."""
    return seed_mb * parameters / SEED_PARAMETERS


def carried_rows(ctx: PhaseContext, input_phase: str) -> list[dict]:
    """The size rows an input phase recorded, or [] when it recorded none."""
    path = ctx.input_dir(input_phase) / SIZES
    if not path.exists():
        return []
    return list(json.loads(path.read_text())["rows"])


def write_sizes(out_dir: Path, rows: list[dict]) -> None:
    (Path(out_dir) / SIZES).write_text(json.dumps({"rows": rows}, indent=2) + "\n")


def size_table(rows: list[dict]) -> str:
    """Markdown: one row per artifact, with its size relative to the first row."""
    first = rows[0]["bytes"] if rows else 0
    lines = ["| phase | artifact | bytes | MB | bits / parameter (weights) | vs first row |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.get('phase', '')} | {r['artifact']} | {r['bytes']:,} | "
                     f"{r['mb']:.3f} | {r['bits_per_parameter']:.2f} | "
                     f"{r['bytes'] / first:.3f} |")
    return "\n".join(lines)
