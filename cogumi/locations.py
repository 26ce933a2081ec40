"""Where cogumi finds what it ships besides code, and where it writes runs: checkout or wheel.

A checkout (or an editable install of one) has `gates/`, `fixtures/` and
`benchmarks/results/` beside the `cogumi` package. A wheel carries the same three folders
inside the package, under `cogumi/_data/` (setup.py maps them there), so a non-editable
install runs the tiny profile, its gates and `cogumi plan` without a checkout. Paths in
the shipped profiles (`fixtures/tiny-llama`, `gates/phase0.toml`,
`benchmarks/results/train_backends.json`) are relative to `data_root()`.

Standard library only: provenance (imported on bare GPU hosts) and the gate plugin use it.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
SHIPPED = PACKAGE / "_data"
"""Where a wheel puts gates/, fixtures/ and benchmarks/results/ (setup.py's DATA)."""


def checkout_root() -> Path | None:
    """The repository that holds this cogumi package, or None for an installed copy."""
    root = PACKAGE.parent
    if (root / "pyproject.toml").is_file() and (root / "gates" / "conftest.py").is_file():
        return root
    return None


def data_root() -> Path:
    """The folder that holds gates/, fixtures/ and benchmarks/results/."""
    return checkout_root() or SHIPPED


def default_runs_dir() -> Path:
    """`runs/` of the checkout; for an installed copy, `runs/` in the current directory
    (never inside site-packages)."""
    root = checkout_root()
    return (root if root is not None else Path.cwd()) / "runs"
