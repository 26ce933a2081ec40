"""The size accounting table, carried from phase to phase (`sizes.json`).

Each row is `common.size_row` (bytes on disk, MB of 10^6 bytes, bits per parameter of the
weight files) plus the phase that wrote the artifact. A phase copies its input's rows and
appends its own, so 2D's and 2F's reports show the whole way from the full-precision model
to the packed file without declaring every earlier phase as an input.

The seed's sizes are an 8B model's (Llama-3.1-8B: 8.03e9 parameters); 520 MB for 8.03e9
parameters is 0.52 bits per parameter, which no GGUF K-quant reaches (they store 4.5-6.6).
The size gates' thresholds come from the gate files or their rule (cogumi/thresholds.py);
`SEED_PARAMETERS` is what 2D projects its packed size onto for comparison.
"""

from __future__ import annotations

import json
from pathlib import Path

from cogumi.runner import PhaseContext

SIZES = "sizes.json"
SEED_PARAMETERS = 8.03e9
"""Llama-3.1-8B-Instruct's parameter count, the model the seed's MB figures describe."""


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
