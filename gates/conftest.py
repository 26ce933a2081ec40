"""pytest plugin: one test per gate of one phase, parametrized from the gate files.

Run by `cogumi gate PHASE` (and so by every nox phase session); by hand:
    pytest gates --cogumi-phase 1A --cogumi-profile tiny --junitxml=report.xml
"""

import json
from pathlib import Path

import pytest

from cogumi.gates import resolve_gates
from cogumi.profile import load_profile
from cogumi.registry import get_phase


def pytest_addoption(parser):
    group = parser.getgroup("cogumi gates")
    group.addoption("--cogumi-phase", required=True, help="phase id, e.g. 1A")
    group.addoption("--cogumi-profile", default="tiny", help="profile name or TOML path")
    group.addoption("--cogumi-runs", default="runs", help="the runs/ folder")


def pytest_generate_tests(metafunc):
    if "gate" in metafunc.fixturenames:
        config = metafunc.config
        profile = load_profile(config.getoption("--cogumi-profile"))
        runs = Path(config.getoption("--cogumi-runs")) / profile.name
        gates = resolve_gates(config.getoption("--cogumi-phase"), profile, runs_dir=runs)
        metafunc.parametrize("gate", gates, ids=[g.metric for g in gates])


@pytest.fixture(scope="session")
def phase_metrics(request) -> dict:
    config = request.config
    profile = load_profile(config.getoption("--cogumi-profile"))
    phase = get_phase(config.getoption("--cogumi-phase"))
    path = Path(config.getoption("--cogumi-runs")) / profile.name / phase.id / "metrics.json"
    if not path.exists():
        pytest.fail(f"{path}: missing; run the phase first (cogumi run {phase.id})")
    return json.loads(path.read_text())
