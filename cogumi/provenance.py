"""Where a measured figure came from: the command, the commit, the machine, the libraries.

Every benchmark result in benchmarks/results/ starts with `provenance(...)`, and the pipeline
snapshots written by `cogumi report --summary` carry the same keys, so a number quoted in
the README can be traced to the run that produced it. Standard library only: the GPU
benchmarks import it on machines that have little else installed.

A machine that runs a copy of the work tree without its .git folder (a lent GPU host) cannot
ask git for the commit: set COGUMI_GIT_COMMIT there (`COGUMI_GIT_COMMIT=$(git rev-parse
HEAD)` on the machine that has the checkout), and it is recorded instead.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

REQUIRED = ("command", "git_commit", "machine", "versions")
"""The keys every result file carries (tests/test_summary.py checks the committed ones)."""

UNRECORDED = "unrecorded"
"""The value of a key an old result file never recorded and nothing in the repository can
recover; accepted only for the files tests/test_summary.py lists by name."""


def git_commit(root: Path = ROOT) -> str:
    """COGUMI_GIT_COMMIT when it is set; otherwise HEAD with '+dirty' when tracked files
    differ from it. The variable wins because a copy of a tree can carry a `.git` that is not
    the tree's (the device machine's copy held the session's first HEAD, so a run there
    named a commit older than its code). Git is asked only when `root` is the top of its own
    work tree: an installed cogumi (root = site-packages) inside some other repository is
    not that repository's commit."""
    given = os.environ.get("COGUMI_GIT_COMMIT", "").strip()
    if given:
        return given
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root,
                             capture_output=True, text=True, timeout=10)
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10)
        if (top.returncode == 0 and head.returncode == 0
                and Path(top.stdout.strip()).resolve() == Path(root).resolve()):
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                   cwd=root, capture_output=True, text=True, timeout=10)
            return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        installed = f"cogumi {metadata.version('cogumi')} as installed"
    except metadata.PackageNotFoundError:
        installed = "cogumi"
    return f"unknown (not a git checkout: {installed} at {root}; COGUMI_GIT_COMMIT not set)"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cuda_device() -> str | None:
    # Only asks torch when the benchmark already imported it: importing torch here would
    # cost seconds on CPU benchmarks and say nothing.
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - a broken CUDA setup is not the benchmark's result
        return None
    return None


def machine(device: str | None = None) -> dict:
    """cpu and cores always; device when the run used an accelerator (given, or the CUDA
    device torch reports)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    out = {"cpu": _cpu_model(), "cores": cores, "cpu_count": os.cpu_count(),
           "platform": platform.platform()}
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        out["memory_gb"] = round(pages * size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    device = device or _cuda_device()
    if device:
        out["device"] = device
    return out


def versions(libraries: tuple[str, ...] | list[str]) -> dict[str, str | None]:
    """Python and each named distribution's version (None: not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in libraries:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def command(argv: list[str] | None = None) -> str:
    """The command line as typed (sys.orig_argv keeps `-m module`), the interpreter written
    as `python` and a script path relative to the repository root."""
    argv = list(getattr(sys, "orig_argv", sys.argv) if argv is None else argv)
    if argv:
        argv[0] = "python"
    for i, arg in enumerate(argv[1:], start=1):
        if arg.endswith(".py"):
            try:
                argv[i] = str(Path(arg).resolve().relative_to(ROOT))
            except ValueError:
                pass
            break
    return shlex.join(argv)


def provenance(libraries: tuple[str, ...] | list[str] = (), device: str | None = None,
               argv: list[str] | None = None) -> dict:
    """The four required keys plus when, to put first in a result file."""
    return {"command": command(argv), "git_commit": git_commit(), "machine": machine(device),
            "versions": versions(libraries),
            "recorded_at": datetime.now(UTC).isoformat(timespec="seconds")}
