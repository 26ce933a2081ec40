"""Manifests, atomic commits and the ledger's tamper checks."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cogumi import artifacts, ledger
from cogumi.artifacts import ManifestError
from cogumi.ledger import LedgerError, State


def _seal(runs, phase="0", files=None, profile_sha="p" * 64, inputs=None):
    """Write an artifact folder and its manifest the way the runner does; sign it off."""
    final = runs / phase
    stage = artifacts.staging_dir(final)
    for name, data in (files or {"curated.jsonl": b'{"a": 1}\n'}).items():
        (stage / name).parent.mkdir(parents=True, exist_ok=True)
        (stage / name).write_bytes(data)
    manifest = {"phase": phase, "profile_sha256": "f" * 64, "config_sha256": profile_sha,
                "inputs": inputs or {},
                "outputs": artifacts.digest_tree(stage)}
    artifacts.write_json(stage / artifacts.MANIFEST, manifest)
    artifacts.commit_staged(stage, final)
    ledger.append(runs, {"phase": phase, "passed": True, "gates": [],
                         "manifest_sha256": ledger.manifest_digest(final)})
    return final


def test_valid_signoff(tmp_path):
    _seal(tmp_path)
    assert ledger.check_signoff(tmp_path, "0", "p" * 64).state is State.VALID


def test_never_run_is_missing(tmp_path):
    assert ledger.check_signoff(tmp_path, "0", "p" * 64).state is State.MISSING


def test_edited_output_is_tampered_and_named(tmp_path):
    final = _seal(tmp_path)
    (final / "curated.jsonl").write_bytes(b'{"a": 2}\n')
    check = ledger.check_signoff(tmp_path, "0", "p" * 64)
    assert check.state is State.TAMPERED
    assert "curated.jsonl: changed after sign-off" in check.reason
    assert "\n" not in check.reason


def test_corrupted_manifest_is_tampered(tmp_path):
    final = _seal(tmp_path)
    (final / "manifest.json").write_text("{not json")
    check = ledger.check_signoff(tmp_path, "0", "p" * 64)
    assert check.state is State.TAMPERED and "manifest.json" in check.reason


def test_corrupted_manifest_read_names_file(tmp_path):
    (tmp_path / "manifest.json").write_text('{"phase": ')
    with pytest.raises(ManifestError, match=r"manifest\.json: corrupted"):
        artifacts.read_manifest(tmp_path)


def test_other_profile_is_stale(tmp_path):
    _seal(tmp_path)
    assert ledger.check_signoff(tmp_path, "0", "q" * 64).state is State.STALE


def test_downstream_of_a_rerun_input_is_stale(tmp_path):
    up = _seal(tmp_path, "0")
    _seal(tmp_path, "1A", {"adapter/w.bin": b"w"},
          inputs={"0": {"manifest_sha256": ledger.manifest_digest(up)}})
    assert ledger.check_signoff(tmp_path, "1A", "p" * 64).ok
    _seal(tmp_path, "0", {"curated.jsonl": b"new data\n"})  # phase 0 re-run and re-signed
    assert ledger.check_signoff(tmp_path, "1A", "p" * 64).state is State.STALE


def test_failed_gate_run_supersedes_signoff(tmp_path):
    final = _seal(tmp_path)
    ledger.append(tmp_path, {"phase": "0", "passed": False, "manifest_sha256":
                             ledger.manifest_digest(final),
                             "gates": [{"metric": "records.kept", "passed": False}]})
    check = ledger.check_signoff(tmp_path, "0", "p" * 64)
    assert check.state is State.FAILED and "records.kept" in check.reason


def test_ledger_is_append_only(tmp_path):
    _seal(tmp_path)
    first = (tmp_path / "ledger.jsonl").read_bytes()
    _seal(tmp_path)
    assert (tmp_path / "ledger.jsonl").read_bytes().startswith(first)
    assert len(ledger.entries(tmp_path)) == 2


def test_corrupted_ledger_line_is_named(tmp_path):
    (tmp_path / "ledger.jsonl").write_text('{"phase": "0"}\n{oops\n')
    with pytest.raises(LedgerError, match=r"ledger\.jsonl:2: not valid JSON"):
        ledger.entries(tmp_path)


def test_killed_before_commit_leaves_nothing_complete(tmp_path):
    final = tmp_path / "0"
    stage = artifacts.staging_dir(final)
    (stage / "curated.jsonl").write_text("half")
    # the process dies here: no manifest, no rename
    assert not final.exists()
    assert ledger.check_signoff(tmp_path, "0", "p" * 64).state is State.MISSING
    artifacts.clean_stale_staging(tmp_path)
    assert not any(tmp_path.iterdir())


def test_commit_replaces_an_old_artifact_whole(tmp_path):
    _seal(tmp_path, files={"a.txt": b"old", "only-old.txt": b"x"})
    _seal(tmp_path, files={"a.txt": b"new"})
    assert sorted(p.name for p in (tmp_path / "0").iterdir()) == ["a.txt", "manifest.json"]


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=1, max_size=300), pos=st.integers(min_value=0),
       flip=st.integers(min_value=1, max_value=255))
def test_any_single_byte_change_is_detected(tmp_path_factory, data, pos, flip):
    runs = tmp_path_factory.mktemp("runs")
    final = _seal(runs, files={"curated.jsonl": data})
    edited = bytearray(data)
    edited[pos % len(data)] ^= flip
    (final / "curated.jsonl").write_bytes(bytes(edited))
    assert ledger.check_signoff(runs, "0", "p" * 64).state is State.TAMPERED


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=st.dictionaries(st.from_regex(r"[a-z]{1,8}(/[a-z]{1,8})?\.bin", fullmatch=True),
                             st.binary(max_size=64), min_size=1, max_size=5))
def test_manifest_lists_exactly_the_files_written(tmp_path_factory, files):
    runs = tmp_path_factory.mktemp("runs")
    # a file and a folder of the same name cannot coexist; keep the generated tree valid
    names = {n.split("/")[0] for n in files if "/" in n}
    files = {n: d for n, d in files.items() if n.split(".")[0] not in names}
    final = _seal(runs, files=files)
    manifest = json.loads((final / "manifest.json").read_text())
    assert set(manifest["outputs"]) == set(files)
    for name, digest in manifest["outputs"].items():
        assert digest == artifacts.sha256_bytes(files[name])
