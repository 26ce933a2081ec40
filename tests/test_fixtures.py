"""The committed fixtures are what the rest of the suite relies on: run `pytest tests/test_fixtures.py`.

Checks the tiny model's shape constraints (quantization-friendly widths, tied embeddings), the
tokenizer's Llama 3 conventions, every source file against its real schema and PLANTED.json,
the benchmark schemas, that canonical code solutions pass their tests, and that no benchmark
item occurs in the sources or the pretraining corpus. Rebuild with
`python -m fixtures.build_fixtures` (see fixtures/tiny-llama/fixture_card.json).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # fixtures/ is a plain folder of build scripts, not installed

from fixtures import build_fixtures, synthetic  # noqa: E402
from fixtures.benchmark_items import (  # noqa: E402
    code_tasks,
    code_training_tasks,
    eval_math_problems,
    humaneval_record,
    math_record,
    mmlu_questions,
    mmlu_record,
)
from fixtures.sources import MIN_NEAR_DUPLICATE_SIMILARITY, SOURCE_FILES, record_text, similarities  # noqa: E402

FIXTURES = REPO_ROOT / "fixtures"
MODEL_DIR = FIXTURES / "tiny-llama"
SOURCES_DIR = FIXTURES / "sources"
BENCHMARKS_DIR = FIXTURES / "benchmarks"
CORPUS_PREFIX_DOCUMENTS = 4000  # a prefix of the pretraining corpus, regenerated in under a second


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_source(source: str) -> list[dict]:
    path = SOURCES_DIR / SOURCE_FILES[source]
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(MODEL_DIR)


@pytest.fixture(scope="module")
def model():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype="float32")


@pytest.fixture(scope="module")
def sources() -> dict[str, list[dict]]:
    return {source: read_source(source) for source in SOURCE_FILES}


@pytest.fixture(scope="module")
def planted() -> dict:
    return json.loads((SOURCES_DIR / "PLANTED.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def benchmarks() -> dict[str, list[dict]]:
    return {name: read_jsonl(BENCHMARKS_DIR / f"{name}.jsonl")
            for name in ("math", "mmlu", "code", "code_train", "mmlu_calibration")}


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------

def test_model_is_a_small_llama_with_quantization_friendly_widths(model):
    import torch

    config = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    expected = build_fixtures.MODEL_CONFIG
    assert (config.hidden_size, config.intermediate_size) == (expected["hidden_size"], expected["intermediate_size"])
    # llama.cpp K-quants work in super-blocks of 256 along these dimensions.
    assert config.hidden_size % 256 == 0 and config.intermediate_size % 256 == 0
    assert (config.num_attention_heads, config.head_dim, config.num_key_value_heads) == (8, 64, 4)
    assert config.num_hidden_layers == expected["num_hidden_layers"] <= 4
    # Small enough to commit and to run the whole tiny pipeline on a 2-core CPU.
    assert sum(p.numel() for p in model.parameters()) <= 15_000_000
    assert config.max_position_embeddings == 1024
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears, "no Linear layers found"
    # W4A16 quantizes in groups of 128 along each Linear's input dimension.
    assert all(m.in_features % 128 == 0 for m in linears), [m.in_features for m in linears]


def test_embeddings_are_tied(model):
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_model_directory_is_small_and_complete():
    names = {p.name for p in MODEL_DIR.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "fixture_card.json"} <= names
    assert sum(p.stat().st_size for p in MODEL_DIR.iterdir()) <= 40 * 1024 * 1024


def test_model_runs_and_generation_stops_on_chat_and_text_ends(model, tokenizer):
    import torch

    inputs = tokenizer("Problem: Tom has 3 apples.", return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[-1] == model.config.vocab_size >= len(tokenizer)
    assert torch.isfinite(logits).all()
    end_ids = tokenizer.convert_tokens_to_ids(["<|end_of_text|>", "<|eot_id|>"])
    assert set(end_ids) <= set(model.generation_config.eos_token_id)
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------

def test_tokenizer_adds_bos_and_has_llama3_special_tokens(tokenizer):
    ids = tokenizer("The answer is 19.")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    assert tokenizer.bos_token == "<|begin_of_text|>"
    assert tokenizer.eos_token == "<|eot_id|>"
    assert tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    for token in ("<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"):
        assert tokenizer.convert_tokens_to_ids(token) != tokenizer.unk_token_id
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1
    assert 1500 <= len(tokenizer) <= 2048


def test_tokenizer_splits_digits_and_round_trips(tokenizer):
    assert [t for t in tokenizer.tokenize("12345") if t.strip("Ġ")] == list("12345")
    text = "def add_three(x):\n    return x + 3  # ünïcode ok"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text


def test_chat_template_renders_llama3_turns(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2 + 3?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    full = messages + [{"role": "assistant", "content": "5"}]
    assert tokenizer.apply_chat_template(full, tokenize=False).endswith("assistant<|end_header_id|>\n\n5<|eot_id|>")
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1


def test_pretraining_chat_documents_match_the_chat_template(tokenizer):
    messages = [{"role": "user", "content": "Which is larger?"}, {"role": "assistant", "content": "B"}]
    assert tokenizer.bos_token + build_fixtures.chat_text(messages) == tokenizer.apply_chat_template(messages, tokenize=False)


def test_fixture_card_records_build_and_intended_quality(model):
    card = json.loads((MODEL_DIR / "fixture_card.json").read_text(encoding="utf-8"))
    assert card["build_command"].startswith(build_fixtures.BUILD_COMMAND)
    assert card["device"] in card["build_command"] or card["device"] == "cpu"
    assert card["machine"] and card["reproducibility"]
    metrics = card["metrics"]
    # The point of the fixture: real skill in the evaluation suite's chat prompts, clearly
    # above chance on every task (so compression and calibration have something to keep),
    # yet not unanimous under sampling (so self-consistency has something to raise).
    assert metrics["math_greedy_accuracy"] >= 0.4
    assert metrics["mmlu_greedy_accuracy"] >= 0.45
    assert metrics["code_greedy_pass_at_1"] >= 0.25
    assert metrics["math_all_samples_agree"] < 0.95
    # Redundant enough for phase 2A: uncompensated 65 % magnitude pruning keeps most of MATH.
    probe = metrics["magnitude_prune_probe"]
    assert probe["sparsity"] == 0.65 and probe["math_greedy_accuracy"] >= 0.9 * metrics["math_greedy_accuracy"]
    assert card["config"]["hidden_size"] == build_fixtures.MODEL_CONFIG["hidden_size"]
    assert card["parameters"] == sum(p.numel() for p in model.parameters()) == 13_636_096
    assert card["save_dtype"] == build_fixtures.SAVE_DTYPE


def test_the_teacher_is_the_recipe_its_card_names_and_no_weaker_than_the_student():
    """The committed teacher GGUF is the file its card describes, built by the recipe the
    script holds, and its measured scores are not below the student's on any task (issue
    14 asks for clearly stronger; fixtures/README.md says where it is not)."""
    from cogumi.artifacts import sha256_file

    teacher_dir = build_fixtures.TEACHER_DIR
    card = json.loads((teacher_dir / "fixture_card.json").read_text(encoding="utf-8"))
    gguf = teacher_dir / card["gguf"]["file"]
    assert card["gguf"]["bytes"] == gguf.stat().st_size and card["gguf"]["sha256"] == sha256_file(gguf)
    assert card["gguf"]["type"] == build_fixtures.TEACHER_GGUF_TYPE
    assert card["teacher_recipe"] == json.loads(json.dumps(build_fixtures.TEACHER_RECIPE))
    assert card["build_command"].startswith(build_fixtures.BUILD_COMMAND + " --teacher")
    assert sorted(p.name for p in teacher_dir.iterdir()) == ["fixture_card.json", "model.gguf"]
    student = json.loads((MODEL_DIR / "fixture_card.json").read_text(encoding="utf-8"))["metrics"]
    for metric in ("math_greedy_accuracy", "mmlu_greedy_accuracy", "code_greedy_pass_at_1"):
        assert card["metrics"][metric] >= student[metric], metric


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------

SCHEMAS = {
    "openorca": {"id", "system_prompt", "question", "response"},
    "alpaca_gpt4": {"instruction", "input", "output"},
    "wizardlm": {"instruction", "output"},
    "dolly": {"instruction", "context", "response", "category"},
    "metamathqa": {"query", "response", "type", "original_question"},
    "code_alpaca": {"instruction", "input", "output"},
    "anthropic_hh": {"chosen", "rejected"},
}
DOLLY_CATEGORIES = {"open_qa", "general_qa", "classification", "closed_qa", "brainstorming",
                    "information_extraction", "summarization", "creative_writing"}


@pytest.mark.parametrize("source", SOURCE_FILES)
def test_source_parses_in_its_own_schema(source, sources):
    records = sources[source]
    assert 30 <= len(records) <= 150
    for record in records:
        assert set(record) == SCHEMAS[source]
        assert all(isinstance(value, str) for value in record.values())
    if source == "dolly":
        assert {r["category"] for r in records} <= DOLLY_CATEGORIES
    if source == "metamathqa":
        assert all(re.search(r"The answer is: -?\d+$", r["response"]) for r in records)
        assert {r["type"] for r in records} <= {"GSM_AnsAug", "GSM_Rephrased", "GSM_FOBAR", "GSM_SV"}
    if source == "anthropic_hh":
        for record in records:
            for transcript in (record["chosen"], record["rejected"]):
                assert transcript.startswith("\n\nHuman: ") and "\n\nAssistant: " in transcript
        assert any(r["chosen"].count("\n\nHuman: ") > 1 for r in records), "no multi-turn dialogue"


def test_openorca_is_parquet_with_string_columns():
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(SOURCES_DIR / "openorca.parquet")
    assert schema.names == ["id", "system_prompt", "question", "response"]
    assert all(field.type == pa.string() for field in schema)


def _locate(sources, locator) -> tuple[str, dict]:
    source = next(name for name, filename in SOURCE_FILES.items() if filename == locator["file"])
    record = sources[source][locator["index"]]
    if "id" in locator:
        assert record["id"] == locator["id"]
    return source, record


def test_planted_defects_are_where_planted_json_says(sources, planted):
    kinds = Counter(p["kind"] for p in planted["plants"])
    assert kinds["exact_duplicate"] >= 4 and kinds["near_duplicate"] >= 3
    assert 3 <= kinds["non_english"] <= 5 and 2 <= kinds["empty_response"] <= 3
    assert {p["scope"] for p in planted["plants"] if p["kind"] == "exact_duplicate"} == {"within_source", "across_sources"}
    for plant in planted["plants"]:
        source, record = _locate(sources, plant["record"])
        text = record_text(source, record)
        if plant["kind"] in ("exact_duplicate", "near_duplicate"):
            original_source, original = _locate(sources, plant["original"])
            original_text = record_text(original_source, original)
            if plant["kind"] == "exact_duplicate":
                assert " ".join(text.split()) == " ".join(original_text.split())
            else:
                assert text != original_text
                assert min(similarities(text, original_text).values()) >= MIN_NEAR_DUPLICATE_SIMILARITY
        elif plant["kind"] == "non_english":
            assert plant["language"] in {"es", "de", "fr"}
        elif plant["kind"] == "empty_response":
            response = record.get("response", record.get("output"))
            assert response.strip() == ""


def test_no_unplanned_exact_duplicates_or_empty_responses(sources, planted):
    planted_positions = {(p["record"]["file"], p["record"]["index"]) for p in planted["plants"]}
    seen: dict[str, tuple] = {}
    for source, records in sources.items():
        for index, record in enumerate(records):
            if (SOURCE_FILES[source], index) in planted_positions:
                continue
            text = " ".join(record_text(source, record).split())
            assert text not in seen, f"{source}[{index}] duplicates {seen[text]}"
            seen[text] = (source, index)
            response = record.get("response", record.get("output", record.get("chosen")))
            assert response.strip(), f"{source}[{index}] has an unplanned empty response"


# --------------------------------------------------------------------------------------------
# Benchmarks
# --------------------------------------------------------------------------------------------

def test_benchmarks_follow_their_schemas(benchmarks):
    assert len(benchmarks["math"]) == 150
    for item in benchmarks["math"]:
        assert set(item) == {"problem", "level", "type", "solution"}
        assert re.fullmatch(r"Level [1-5]", item["level"])
        assert re.search(r"\\boxed\{-?\d+\}", item["solution"])
    assert len(benchmarks["mmlu"]) == 150
    for item in benchmarks["mmlu"]:
        assert set(item) == {"question", "subject", "choices", "answer"}
        assert len(item["choices"]) == 4 and len(set(item["choices"])) == 4
        assert item["answer"] in range(4)
    # Every eval-split function: 58 of the families' parameter values hash to "eval".
    assert len(benchmarks["code"]) == len(synthetic.code_keys("eval")) == 58
    assert len(benchmarks["code_train"]) == 60
    for name in ("code", "code_train"):
        for item in benchmarks[name]:
            assert set(item) == {"task_id", "prompt", "canonical_solution", "test", "entry_point"}
            assert "def check(candidate):" in item["test"]
            assert item["prompt"].startswith(f"def {item['entry_point']}(")
        assert len({item["task_id"] for item in benchmarks[name]}) == len(benchmarks[name])


def test_benchmark_files_are_the_eval_split_items_the_build_script_makes(benchmarks):
    seed = build_fixtures.SEED
    problems, questions, tasks = eval_math_problems(seed), mmlu_questions(seed), code_tasks(seed)
    assert benchmarks["math"] == [math_record(p) for p in problems]
    assert benchmarks["mmlu"] == [mmlu_record(q) for q in questions]
    assert benchmarks["code"] == [humaneval_record(i, t) for i, t in enumerate(tasks)]
    keys = [p.key for p in problems] + [q.key for q in questions] + [t.key for t in tasks]
    assert {synthetic.split_of(key) for key in keys} == {"eval"}
    # 1B's code prompts: the train split, never an evaluation function.
    training = code_training_tasks(seed)
    assert benchmarks["code_train"] == [humaneval_record(i, t, "CogumiTrain") for i, t in enumerate(training)]
    assert {synthetic.split_of(t.key) for t in training} == {"train"}


def test_pretraining_chats_use_the_evaluation_suites_instructions():
    from cogumi.evaluation import tasks

    assert build_fixtures.EVAL_MATH_INSTRUCTION == tasks.MATH_INSTRUCTION
    assert build_fixtures.EVAL_MMLU_INSTRUCTION == tasks.MMLU_INSTRUCTION
    assert build_fixtures.EVAL_CODE_INSTRUCTION == tasks.CODE_INSTRUCTION


def test_canonical_solutions_pass_their_tests(benchmarks):
    # One subprocess for all tasks (each in a fresh namespace) keeps this fast and isolated
    # from the test process; a failing task is named in the output.
    program = (
        "import json, sys\n"
        "failed = []\n"
        "for item in json.load(sys.stdin):\n"
        "    namespace = {}\n"
        "    try:\n"
        "        exec(item['prompt'] + item['canonical_solution'] + item['test'], namespace)\n"
        "        namespace['check'](namespace[item['entry_point']])\n"
        "    except Exception as error:\n"
        "        failed.append(f\"{item['task_id']}: {error!r}\")\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", program], input=json.dumps(benchmarks["code"]),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_tests_reject_a_wrong_solution(benchmarks):
    item = benchmarks["code"][0]
    namespace: dict = {}
    exec(item["prompt"] + "    return None\n" + item["test"], namespace)
    with pytest.raises(AssertionError):
        namespace["check"](namespace[item["entry_point"]])


# --------------------------------------------------------------------------------------------
# Train / eval disjointness
# --------------------------------------------------------------------------------------------

def test_pretraining_corpus_draws_only_from_the_train_split(monkeypatch):
    requested: Counter = Counter()

    def recording(generator):
        def wrapper(rng, split, *args, **kwargs):
            requested[split] += 1
            return generator(rng, split, *args, **kwargs)
        return wrapper

    for name in ("arithmetic_problem", "code_task", "multiple_choice"):
        monkeypatch.setattr(build_fixtures, name, recording(getattr(build_fixtures, name)))
    build_fixtures.pretraining_documents(count=2000)
    assert set(requested) == {"train"} and requested["train"] >= 2000


def _benchmark_texts(benchmarks) -> list[str]:
    """The distinctive text of each benchmark item, as it would appear in training text."""
    texts = [item["problem"] for item in benchmarks["math"]]
    texts += [f"{item['question']}\n{synthetic.format_choices(item['choices'])}" for item in benchmarks["mmlu"]]
    return texts


def test_benchmarks_do_not_occur_in_sources_or_pretraining_text(benchmarks, sources):
    training_text = "\n".join(
        [record_text(source, r) for source, records in sources.items() for r in records]
        + build_fixtures.pretraining_documents(count=CORPUS_PREFIX_DOCUMENTS)
    )
    leaked = [text for text in _benchmark_texts(benchmarks) if text in training_text]
    assert not leaked, leaked[:3]
    # Function names carry the parameter (add_seventeen): none may appear as a whole word.
    names = [item["entry_point"] for item in benchmarks["code"]]
    leaked_names = [name for name in names if re.search(rf"\b{name}\b", training_text)]
    assert not leaked_names, leaked_names


def test_the_calibration_set_is_the_dev_split_and_never_an_evaluation_item(benchmarks):
    from fixtures.benchmark_items import (
        N_CALIBRATION_BEYOND,
        N_CALIBRATION_IN_RANGE,
        calibration_questions,
    )

    questions = calibration_questions(0)
    assert benchmarks["mmlu_calibration"] == [mmlu_record(q) for q in questions]
    assert len(questions) == N_CALIBRATION_IN_RANGE + N_CALIBRATION_BEYOND
    assert all(synthetic.split_of(q.key) == "dev" for q in questions)
    assert len({q.key for q in questions}) == len(questions)
    evaluation = {(r["question"], tuple(r["choices"])) for r in benchmarks["mmlu"]}
    assert not evaluation & {(r["question"], tuple(r["choices"]))
                             for r in benchmarks["mmlu_calibration"]}
    beyond = questions[N_CALIBRATION_IN_RANGE:]
    assert all(min(q.key[1:]) >= 200 for q in beyond if q.kind != "sequence")


def test_the_routing_queries_are_the_dev_split_and_disjoint_from_1cs_pool():
    """4A-4C's held-out queries and 1C's failure pool are both the dev split; 1C trains on
    the teacher's answers to its pool, so the two never share a problem or a function."""
    from fixtures.benchmark_items import routing_queries

    dev_math, dev_mmlu, dev_code = routing_queries(build_fixtures.SEED)
    files = {name: read_jsonl(BENCHMARKS_DIR / f"routing_{name}.jsonl")
             for name in ("math", "mmlu", "code")}
    assert files["math"] == [math_record(p) for p in dev_math]
    assert files["mmlu"] == [mmlu_record(q) for q in dev_mmlu]
    assert files["code"] == [humaneval_record(i, t, "CogumiRouting") for i, t in enumerate(dev_code)]
    keys = [p.key for p in dev_math] + [q.key for q in dev_mmlu] + [t.key for t in dev_code]
    assert {synthetic.split_of(key) for key in keys} == {"dev"}
    assert len(set(keys)) == len(keys)
    pool_math = read_jsonl(BENCHMARKS_DIR / "math_dev.jsonl")
    assert not {r["problem"] for r in pool_math} & {r["problem"] for r in files["math"]}
    assert len(dev_code) == len(synthetic.code_keys("dev"))  # 1C's code pool is the train split


# --------------------------------------------------------------------------------------------
# What the teacher knows and the student does not
# --------------------------------------------------------------------------------------------

def _wording_marks(templates) -> list[str]:
    """The longest literal run of each template's question: text only that wording has."""
    return [max(re.split(r"\{[a-z]+\}", t.question), key=len).strip() for t in templates]


def test_the_teacher_only_wordings_are_in_no_student_text_and_in_the_teachers_corpus(sources, monkeypatch):
    marks = _wording_marks(synthetic.TEACHER_ONLY_TEMPLATES)
    assert len(set(marks)) == len(marks) and min(map(len, marks)) >= 15
    assert not set(marks) & set(_wording_marks(synthetic.ARITHMETIC_TEMPLATES))
    student_text = "\n".join(
        [record_text(source, r) for source, records in sources.items() for r in records]
        + build_fixtures.pretraining_documents(count=CORPUS_PREFIX_DOCUMENTS))
    assert not [m for m in marks if m in student_text]
    # The teacher's recipe words its arithmetic in both sets; its corpus then holds every one.
    assert build_fixtures.TEACHER_RECIPE["teacher_only_phrasings"] is True
    monkeypatch.setattr(build_fixtures, "CORPUS_TEMPLATES",
                        synthetic.ARITHMETIC_TEMPLATES + synthetic.TEACHER_ONLY_TEMPLATES)
    teacher_text = "\n".join(build_fixtures.pretraining_documents(count=CORPUS_PREFIX_DOCUMENTS))
    assert all(m in teacher_text for m in marks)


def test_math_pool_and_routing_queries_carry_the_teacher_only_wordings(benchmarks):
    marks = _wording_marks(synthetic.TEACHER_ONLY_TEMPLATES)

    def worded(records) -> int:
        return sum(any(m in r["problem"] for m in marks) for r in records)

    # A third of the evaluation's additions and subtractions (TEACHER_WORDING_SHARE), drawn by
    # a seeded coin: 48 of 150 as built.
    assert worded(benchmarks["math"]) == 48
    pool = read_jsonl(BENCHMARKS_DIR / "math_dev.jsonl")
    assert worded(pool) == len(pool) == 466 == len({r["problem"] for r in pool})
    train = read_jsonl(BENCHMARKS_DIR / "math_train.jsonl")
    assert worded(train) == len(train) == 200
    assert 0 < worded(read_jsonl(BENCHMARKS_DIR / "routing_math.jsonl")) < 60
