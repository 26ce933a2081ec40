"""Source loaders: each real schema normalises; bad records are quarantined with location."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cogumi.data.sources import Quarantined, Record, classify_domain, load_local_source, normalise


def _load(schema, path):
    return list(load_local_source("src", schema, path))


def test_each_schema_normalises():
    cases = {
        "openorca": {"id": "niv.1", "system_prompt": "Be brief.", "question": "Why?",
                     "response": "Because."},
        "alpaca": {"instruction": "Add", "input": "2 and 3", "output": "5"},
        "code_alpaca": {"instruction": "Write a function", "input": "", "output": "def f(): pass"},
        "wizardlm": {"instruction": "Tell me a joke", "output": "No."},
        "dolly": {"instruction": "Write a poem", "context": "", "response": "Roses",
                  "category": "creative_writing"},
        "metamathqa": {"query": "What is 2+2?", "response": "The answer is: 4",
                       "type": "GSM_Rephrased", "original_question": "2+2?"},
        "anthropic_hh": {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!",
                         "rejected": "\n\nHuman: Hi\n\nAssistant: Go away"},
    }
    for schema, raw in cases.items():
        record = normalise(schema, raw, "src", 0)
        assert isinstance(record, Record) and record.instruction and record.response, schema
    assert normalise("alpaca", cases["alpaca"], "s", 0).instruction == "Add\n\n2 and 3"
    assert normalise("metamathqa", cases["metamathqa"], "s", 0).domain == "math"
    assert normalise("dolly", cases["dolly"], "s", 0).domain == "creative"


def test_multi_turn_hh_keeps_history_and_last_answer():
    raw = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Joke?\n\nAssistant: Knock knock",
           "rejected": ""}
    record = normalise("anthropic_hh", raw, "s", 0)
    assert record.response == "Knock knock"
    assert record.instruction == "Human: Hi\n\nAssistant: Hello\n\nHuman: Joke?"


def test_ids_are_stable_and_distinct():
    a = normalise("alpaca", {"instruction": "x", "input": "", "output": "y"}, "s", 0)
    b = normalise("alpaca", {"instruction": "x", "input": "", "output": "y"}, "s", 1)
    assert a.id != b.id
    assert a.id == normalise("alpaca", {"instruction": "q", "input": "", "output": "r"}, "s", 0).id


def test_jsonl_bad_lines_are_quarantined_and_the_rest_kept(tmp_path):
    path = tmp_path / "dolly.jsonl"
    good = {"instruction": "Say hi", "context": "", "response": "hi", "category": "open_qa"}
    path.write_bytes(json.dumps(good).encode() + b"\n{broken\n" +
                     json.dumps({"instruction": "x", "context": ""}).encode() + b"\n" +
                     b'{"instruction": "\xff\xfe"}\n' +
                     json.dumps({**good, "response": 7}).encode() + b"\n" +
                     json.dumps(good).encode() + b"\n")
    items = _load("dolly", path)
    assert len(items) == 6  # every line is accounted for
    bad = [i for i in items if isinstance(i, Quarantined)]
    assert [b.location.rsplit(":", 1)[1] for b in bad] == ["2", "3", "4", "5"]
    assert "malformed JSON" in bad[0].reason
    assert "missing field 'response'" in bad[1].reason
    assert "not UTF-8" in bad[2].reason
    assert "field 'response' is int" in bad[3].reason


def test_truncated_parquet_is_quarantined_not_a_crash(tmp_path):
    path = tmp_path / "orca.parquet"
    table = pa.table({"id": ["a", "b"], "system_prompt": ["", ""], "question": ["q1", "q2"],
                      "response": ["r1", "r2"]})
    pq.write_table(table, path)
    assert len([i for i in _load("openorca", path) if isinstance(i, Record)]) == 2
    path.write_bytes(path.read_bytes()[:-40])
    items = _load("openorca", path)
    assert len(items) == 1 and isinstance(items[0], Quarantined)
    assert "orca.parquet" in items[0].location and "Parquet" in items[0].reason


def test_empty_source_yields_nothing(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    assert _load("dolly", path) == []


def test_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        _load("alpaca", tmp_path / "nope.json")


def test_json_list_errors_name_the_index(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([{"instruction": "a", "input": "", "output": "b"}, ["not", "obj"]]))
    items = _load("alpaca", path)
    assert isinstance(items[1], Quarantined) and items[1].location.endswith("alpaca.json[1]")


@pytest.mark.parametrize("text,domain", [
    ("Write a Python function that reverses a list", "code"),
    ("Tom has 3 apples and buys 4 more. How many apples?", "math"),
    ("Write a short poem about autumn", "creative"),
    ("Explain photosynthesis in plants", "science"),
    ("What is your favourite colour?", "conversation"),
])
def test_domain_rules(text, domain):
    assert classify_domain(text, "conversation") == domain
