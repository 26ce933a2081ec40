"""Benchmark files: the real schemas load; every kind of bad line is reported with its
file and line, or (on_error="record") kept as a failing item, never dropped."""

from __future__ import annotations

import json

import pytest

from cogumi.evaluation import BenchmarkFormatError, load_task
from cogumi.evaluation.tasks import MC_ANSWER_PREFIX


def write_jsonl(path, rows):
    path.write_bytes(b"\n".join(r if isinstance(r, bytes) else json.dumps(r).encode() for r in rows))
    return path


MATH = {"problem": "What is 1/2 + 1/4?", "level": "Level 1", "type": "Prealgebra",
        "solution": "Sum: $\\boxed{\\frac{3}{4}}$."}
MMLU = {"question": "2+2?", "subject": "elementary_mathematics", "choices": ["3", "4", "5", "6"],
        "answer": 1}
CODE = {"task_id": "Fix/0", "prompt": "def inc(x):\n    \"\"\"x+1\"\"\"\n",
        "canonical_solution": "    return x + 1\n", "test": "def check(c):\n    assert c(1) == 2\n",
        "entry_point": "inc"}


def test_each_schema_loads(tmp_path):
    m = load_task("math", write_jsonl(tmp_path / "m.jsonl", [MATH]))
    assert m.items[0].reference == "\\frac{3}{4}" and m.items[0].category == "Prealgebra"
    q = load_task("mmlu", write_jsonl(tmp_path / "q.jsonl", [MMLU]))
    assert q.items[0].reference == 1 and q.items[0].category == "elementary_mathematics"
    c = load_task("code", write_jsonl(tmp_path / "c.jsonl", [CODE]))
    assert c.items[0].id == "Fix/0"
    # The chat prompt asks for the stated answer format.
    assert "The answer is" in m.messages(m.items[0])[0]["content"]
    assert "B. 4" in q.messages(q.items[0])[0]["content"]
    assert MC_ANSWER_PREFIX == "The answer is"


def test_math_answer_field_wins_over_boxed(tmp_path):
    row = dict(MATH, answer="0.75")
    assert load_task("math", write_jsonl(tmp_path / "m.jsonl", [row])).items[0].reference == "0.75"


def test_humaneval_has_164_problems():
    task = load_task("humaneval")
    assert len(task) == 164 and task.name == "humaneval" and task.kind == "code"


@pytest.mark.parametrize(
    "kind,row,needle",
    [
        ("math", {k: v for k, v in MATH.items() if k != "solution"}, "missing field 'solution'"),
        ("math", dict(MATH, solution="no box here"), "no \\boxed{}"),
        ("math", dict(MATH, problem=7), "must be a string"),
        ("mmlu", dict(MMLU, answer=9), "'answer' must be an int"),
        ("mmlu", dict(MMLU, choices="abcd"), "list of strings"),
        ("mmlu", {k: v for k, v in MMLU.items() if k != "subject"}, "missing field 'subject'"),
        ("code", dict(CODE, entry_point="not an identifier"), "not a Python identifier"),
        ("code", {k: v for k, v in CODE.items() if k != "test"}, "missing field 'test'"),
    ],
)
def test_missing_or_wrong_fields_name_file_and_line(tmp_path, kind, row, needle):
    good = {"math": MATH, "mmlu": MMLU, "code": CODE}[kind]
    path = write_jsonl(tmp_path / "bad.jsonl", [good, row])
    with pytest.raises(BenchmarkFormatError) as e:
        load_task(kind, path)
    assert f"{path}:2:" in str(e.value) and needle in str(e.value)
    assert len(e.value.problems) == 1


def test_invalid_json_non_utf8_and_duplicates_are_all_listed(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [CODE, b"{not json", b'{"task_id": "\xff\xfe"}',
                                                 CODE, b"[1, 2]"])
    with pytest.raises(BenchmarkFormatError) as e:
        load_task("code", path)
    msg = str(e.value)
    assert f"{path}:2: invalid JSON" in msg
    assert f"{path}:3: not UTF-8" in msg
    assert f"{path}:4: duplicate id 'Fix/0' (first on line 1)" in msg
    assert f"{path}:5: expected a JSON object" in msg


def test_record_mode_keeps_bad_lines_as_failing_items(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [MATH, b"{oops", dict(MATH, problem="other")])
    task = load_task("math", path, on_error="record")
    assert len(task) == 3
    bad = task.items[1]
    assert bad.malformed and "invalid JSON" in bad.malformed and bad.line == 2
    assert task.meta["malformed_lines"] == 1


def test_empty_and_missing_files_are_clear_errors(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(BenchmarkFormatError, match="no items"):
        load_task("math", tmp_path / "empty.jsonl")
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_task("math", tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_task("trivia", tmp_path / "empty.jsonl")


def test_task_digest_follows_the_bytes(tmp_path):
    a = load_task("math", write_jsonl(tmp_path / "a.jsonl", [MATH])).digest
    b = load_task("math", write_jsonl(tmp_path / "b.jsonl", [MATH])).digest
    c = load_task("math", write_jsonl(tmp_path / "c.jsonl", [dict(MATH, level="Level 2")])).digest
    assert a == b != c


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=80, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=60), st.just(json.dumps(MMLU).encode())), max_size=6))
def test_arbitrary_bytes_load_or_fail_with_a_format_error(tmp_path_factory, lines):
    # Whatever the file holds: a task, or a BenchmarkFormatError; never another exception.
    path = tmp_path_factory.mktemp("fuzz") / "f.jsonl"
    path.write_bytes(b"\n".join(lines))
    try:
        task = load_task("mmlu", path)
    except BenchmarkFormatError as e:
        assert all(p.startswith(str(path)) for p in e.problems)
    else:
        assert len(task) >= 1
