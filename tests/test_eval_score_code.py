"""`cogumi score-code`: HumanEval samples scored in the sandbox with per-sample reasons, bad
input reported by file and line, and unverified verdicts never passed off as scores."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cogumi.cli import main
from cogumi.evaluation import GenerationSettings, Sandbox, SandboxLimits, evaluate, load_task
from cogumi.evaluation.testing import ScriptedBackend

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "fixtures" / "benchmarks" / "code.jsonl"
ALWAYS_EQUAL = ("    class E:\n        def __eq__(self, other):\n            return True\n"
                "    return E()\n")


def _results(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _summary(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_canonical_solutions_pass_164_of_164_and_wrong_ones_none(tmp_path, capsys):
    items = load_task("humaneval").items
    wrong = {0: lambda i: "    return None\n", 1: lambda i: "    raise NotImplementedError\n",
             2: lambda i: items[(i + 1) % len(items)].fields["canonical_solution"],
             3: lambda i: ALWAYS_EQUAL}
    rows = [{"task_id": it.id, "completion": it.fields["canonical_solution"], "kind": "canonical"}
            for it in items]
    rows += [{"task_id": it.id, "completion": wrong[i % 4](i), "kind": "wrong"}
             for i, it in enumerate(items)]
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["score-code", str(samples), "--k", "1,2"]) == 0
    summary = _summary(capsys)
    res = _results(tmp_path / "samples.jsonl_results.jsonl")
    canonical = [r for r in res if r["kind"] == "canonical"]
    bad = [r for r in res if r["kind"] == "wrong"]
    assert [(r["task_id"], r["result"], r["detail"]) for r in canonical if not r["passed"]] == []
    assert len(canonical) == 164
    assert [r["task_id"] for r in bad if r["passed"]] == []
    assert {r["result"] for r in bad} <= {"wrong_answer", "exception", "non_data_return"}
    assert {r["result"] for r in bad[3::4]} == {"non_data_return"}
    assert all(r["judge"] == "trusted" and r["verified"] for r in res)
    assert summary["pass@1"] == 0.5 and summary["pass@2"] == 1.0
    assert summary["verified"] is True and summary["in_sandbox_verdicts"] == 0


def test_bad_lines_are_reported_with_file_and_line_and_the_rest_is_scored(tmp_path, capsys):
    fixture = [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]
    ok = {"task_id": fixture[0]["task_id"], "completion": fixture[0]["canonical_solution"]}
    lines = [
        json.dumps(ok).encode(),                                            # 1 scored, passes
        b"not json",                                                        # 2
        json.dumps({"task_id": "Nope/1", "completion": "    return 1\n"}).encode(),  # 3
        json.dumps({"task_id": fixture[1]["task_id"]}).encode(),            # 4 no completion
        b'\xff\xfe{"task_id": "x"}',                                        # 5
        json.dumps({"task_id": fixture[2]["task_id"], "completion": "  \n"}).encode(),  # 6
        b"[1, 2]",                                                          # 7
        b"",                                                                # 8 blank: skipped
        json.dumps({"task_id": 5, "completion": "x"}).encode(),             # 9
        json.dumps({"task_id": fixture[3]["task_id"], "completion": "    return 0\n"}).encode(),
    ]
    samples = tmp_path / "bad.jsonl"
    samples.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "res.jsonl"
    assert main(["score-code", str(samples), "--problems", str(FIXTURE), "--k", "1",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    by_line = {r["line"]: r for r in _results(out)}
    expect = {1: "passed", 2: "malformed_line", 3: "unknown_task", 4: "missing_field",
              5: "invalid_utf8", 6: "empty_completion", 7: "malformed_line",
              9: "missing_field", 10: "wrong_answer"}
    assert {n: r["result"] for n, r in by_line.items()} == expect
    for n, reason in expect.items():
        if reason not in ("passed", "wrong_answer"):
            assert by_line[n]["detail"].startswith(f"{samples}:{n}: ")
            assert by_line[n]["passed"] is False
            assert f"bad.jsonl:{n}:" in printed.replace("\n", "")
    summary = json.loads(printed.strip().splitlines()[-1])
    assert summary["lines"] == 9 and summary["passed"] == 1
    # Known tasks count their bad samples as failures; the others are counted apart.
    assert summary["tasks_scored"] == 4 and summary["lines_not_scored"] == 5
    assert summary["pass@1"] == 0.25


def test_missing_samples_file_is_refused(tmp_path):
    assert main(["score-code", str(tmp_path / "nope.jsonl")]) == 2


def test_weak_mode_results_are_never_reported_as_a_score(tmp_path, capsys):
    fixture = [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()][:2]
    samples = tmp_path / "s.jsonl"
    samples.write_text("".join(json.dumps({"task_id": p["task_id"], "completion":
                                           p["canonical_solution"]}) + "\n" for p in fixture))
    assert main(["score-code", str(samples), "--problems", str(FIXTURE), "--k", "1",
                 "--unsafe-weak-sandbox"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["pass@1"] is None and summary["pass@1_unverified"] == 1.0
    assert summary["verified"] is False and "UNVERIFIED" in out


def _code_backend(task):
    by_prompt = {it.fields["prompt"]: it for it in task.items}

    def respond(req, rendered):
        prompt = req.messages[0]["content"].split("```python\n", 1)[1].rsplit("```", 1)[0]
        return "```python\n" + by_prompt[prompt].fields["prompt"] + \
            by_prompt[prompt].fields["canonical_solution"] + "```\n"

    return ScriptedBackend(respond)


def test_evaluate_under_weak_isolation_leaves_pass_at_k_undefined():
    task = load_task("code", FIXTURE)
    report = evaluate(_code_backend(task), [task], GenerationSettings(), limit=3,
                      sandbox=Sandbox(SandboxLimits(wall_s=5), isolation="weak-unsafe"))
    m = report.metrics
    assert math.isnan(m["code.pass@1"]) and m["code.pass@1_unverified"] == 1.0
    assert m["code.verdicts_unverified"] == 1.0
    assert report.limits() and "weak-unsafe" in report.limits()[0]
    assert report.sandbox["verified"] is False


def test_evaluate_marks_in_sandbox_verdicts_and_names_their_items(tmp_path):
    # A task whose tests pass the candidate a function: it cannot be judged through the
    # data channel, runs in the sandbox, and the report says so.
    rows = [{"task_id": "T/0", "prompt": "def apply(g, x):\n", "entry_point": "apply",
             "canonical_solution": "    return g(x)\n",
             "test": "def check(candidate):\n    assert candidate(lambda v: v * 3, 2) == 6\n"},
            {"task_id": "T/1", "prompt": "def twice(x):\n", "entry_point": "twice",
             "canonical_solution": "    return 2 * x\n",
             "test": "def check(candidate):\n    assert candidate(4) == 8\n"}]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = load_task("code", path)
    report = evaluate(_code_backend(task), [task], GenerationSettings())
    assert report.metrics["code.pass@1"] == 1.0
    assert report.metrics["code.verdicts_unverified"] == 0.5
    judges = {r["item_id"]: r["judges"][0] for r in report.records}
    assert judges == {"T/0": "in_sandbox, unverified", "T/1": "trusted"}
    assert len(report.limits()) == 1 and "T/0" in report.limits()[0]


@pytest.mark.parametrize("isolation", ["auto", "weak"])
def test_the_old_isolation_names_are_refused(isolation):
    with pytest.raises(ValueError):
        Sandbox(isolation=isolation)
