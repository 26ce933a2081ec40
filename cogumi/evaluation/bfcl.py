"""BFCL v4 (the Berkeley Function Calling Leaderboard) as a task: the data of the
``bfcl-eval`` package, its own prompt for prompting (non function-calling) models, its own
decoder and its own AST checker.

**What is BFCL's and what is ours.** Every step that decides a verdict is a function of
``bfcl_eval``, called as BFCL's evaluation runner calls it for a prompting model
(``eval_checker/eval_runner.py``, ``_evaluate_single_ast_entry``):

1. the prompt: ``bfcl_eval.utils.add_language_specific_hint_to_function_doc`` (the "Note that
   the provided function is in Python 3 syntax." hints) and
   ``bfcl_eval.model_handler.utils.system_prompt_pre_processing_chat_model``, BFCL's default
   system prompt for prompting models (``DEFAULT_SYSTEM_PROMPT_FORMAT``: the reply is a
   Python-style list of calls ``[func(a=1, b="x")]``, functions listed as JSON), put before
   the question's first turn, as ``base_oss_handler`` does;
2. the decoder: ``default_decode_ast_prompting`` (an unparseable reply: ``no_answer``), then
   ``bfcl_eval.utils.is_function_calling_format_output`` (a reply that parses but is not a
   list of calls: ``no_answer``);
3. the checker: ``bfcl_eval.eval_checker.ast_eval.ast_checker.ast_checker`` with the
   functions as the file states them (no hints) and the ``possible_answer`` ground truth
   (rejected: ``wrong_answer``, with BFCL's ``error_type`` and errors as the detail).

Ours: reading the files (``file:line`` errors, each entry matched to its answer by id),
the chat template, and generation.

**The lightest import path.** ``bfcl-eval``'s declared requirements pin numpy 1.26.4 and
pull every vendor SDK (openai, anthropic, cohere, mistral, google-genai, qwen-agent),
sentence-transformers and faiss; none is needed to check a call. It is installed with
``--no-deps`` (nox does) and the few modules the steps above import are dependencies of
cogumi: ``tree-sitter`` 0.21 with its Java and JavaScript grammars (BFCL's Java/JS
parsers, imported by the decoder module), ``tenacity`` and ``filelock``. One module cannot
be imported that way: ``ast_checker`` imports ``bfcl_eval.constants.model_config`` only
for ``MODEL_CONFIG_MAPPING[model].underscore_to_dot``, and that module imports every model
handler and so every SDK. For that one import a stand-in module is put in
``sys.modules`` (and removed again) whose mapping answers ``underscore_to_dot = False``,
which is BFCL's value for every prompting model: function names keep their dots
(``math.factorial``). Importing ``bfcl_eval.utils`` makes three folders (results, scores,
file locks) under ``BFCL_PROJECT_ROOT``; unless that is set, it is pointed at a folder
under the system's temporary directory, not at site-packages.

**Categories.** :data:`CATEGORIES`: the single-turn categories BFCL scores with its AST
checker (Python, Java, JavaScript; simple, multiple, parallel, parallel-multiple; live and
not). Not supported: ``irrelevance``, ``live_irrelevance`` and ``live_relevance`` (scored
by whether any call is made: always abstaining scores 100 % on irrelevance, so a pooled
accuracy would need its own chance level), and the multi-turn, memory, web-search and
format-sensitivity categories (stateful executable backends and agentic loops).
"""

from __future__ import annotations

import copy
import json
import os
import sys
import tempfile
import types
from functools import cache
from pathlib import Path
from typing import Any

from .tasks import BenchmarkPackageMissing, Item

VERSION_PREFIX = "BFCL_v4"

CATEGORIES = (
    "simple_python", "simple_java", "simple_javascript", "multiple", "parallel",
    "parallel_multiple", "live_simple", "live_multiple", "live_parallel",
    "live_parallel_multiple",
)
"""The categories this task loads and scores (BFCL's AST-checked, single-turn ones)."""

#: The model name passed to BFCL's checker; the stand-in mapping knows only this one.
MODEL_NAME = "cogumi-prompting"


def language_of(category: str) -> str:
    """BFCL's ``Language`` / ``ReturnFormat`` value for a category (as its runner picks it)."""
    if category.endswith("java"):
        return "java"
    if category.endswith("javascript"):
        return "javascript"
    return "python"


class _PromptingModel:
    """What BFCL's checker reads of a model's config: prompting models keep dots in names."""
    underscore_to_dot = False
    is_fc_model = False


@cache
def _bfcl() -> types.SimpleNamespace:
    """BFCL's prompt, decoder and checker functions, imported the light way (module doc)."""
    try:
        import bfcl_eval  # noqa: F401
    except ImportError:
        raise BenchmarkPackageMissing(
            "benchmark 'bfcl' needs the package bfcl-eval, which is not installed: pip "
            "install --no-deps bfcl-eval (nox sessions do; its own requirements are not "
            "needed)") from None
    os.environ.setdefault("BFCL_PROJECT_ROOT", str(Path(tempfile.gettempdir()) / "cogumi-bfcl"))
    name = "bfcl_eval.constants.model_config"
    inserted = name not in sys.modules
    if inserted:
        stand_in = types.ModuleType(name, "cogumi's stand-in: see cogumi.evaluation.bfcl")
        stand_in.MODEL_CONFIG_MAPPING = {MODEL_NAME.replace("_", "/"): _PromptingModel()}
        sys.modules[name] = stand_in
    try:
        from bfcl_eval.constants.enums import Language, ReturnFormat
        from bfcl_eval.eval_checker.ast_eval import ast_checker as checker_module
        from bfcl_eval.model_handler.utils import (
            default_decode_ast_prompting,
            system_prompt_pre_processing_chat_model,
        )
        from bfcl_eval.utils import (
            add_language_specific_hint_to_function_doc,
            is_function_calling_format_output,
        )
    except ImportError as e:
        raise BenchmarkPackageMissing(
            f"benchmark 'bfcl': bfcl-eval's checker needs the module {e.name!r}, which is not "
            f"installed (cogumi's dependencies list it)") from None
    finally:
        if inserted:
            del sys.modules[name]
    if MODEL_NAME.replace("_", "/") not in checker_module.MODEL_CONFIG_MAPPING:
        raise RuntimeError("bfcl_eval's ast_checker was imported before cogumi's stand-in "
                           "model config; import cogumi.evaluation.bfcl first")
    return types.SimpleNamespace(
        Language=Language, ReturnFormat=ReturnFormat, ast_checker=checker_module.ast_checker,
        decode=default_decode_ast_prompting, system_prompt=system_prompt_pre_processing_chat_model,
        add_hints=add_language_specific_hint_to_function_doc,
        is_call_list=is_function_calling_format_output)


# ------------------------------------------------------------------------------ loading
def load_bfcl(data_dir: Path, categories: tuple[str, ...]
              ) -> tuple[list[Item], list[str], bytes]:
    """Items of ``BFCL_v4_<category>.json`` joined by id with
    ``possible_answer/BFCL_v4_<category>.json`` (both JSON lines); returns (items, problems
    as ``file:line: why``, the bytes of every file read, for the task digest)."""
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        raise ValueError(f"BFCL categories {unknown} are not supported; supported: "
                         f"{', '.join(CATEGORIES)}")
    if len(set(categories)) != len(categories):
        raise ValueError(f"BFCL categories repeat: {list(categories)}")
    data_dir = Path(data_dir)
    items: list[Item] = []
    problems: list[str] = []
    blobs: list[bytes] = []
    seen: dict[str, str] = {}
    for category in categories:
        q_path = data_dir / f"{VERSION_PREFIX}_{category}.json"
        a_path = data_dir / "possible_answer" / f"{VERSION_PREFIX}_{category}.json"
        for p in (q_path, a_path):
            if not p.is_file():
                raise FileNotFoundError(f"benchmark file not found: {p}")
        q_raw, a_raw = q_path.read_bytes(), a_path.read_bytes()
        blobs += [category.encode(), q_raw, a_raw]
        answers: dict[str, Any] = {}
        for lineno, rec, bad in _json_lines(a_raw, a_path):
            if bad:
                problems.append(bad)
                continue
            if not isinstance(rec.get("id"), str) or not isinstance(rec.get("ground_truth"), list):
                problems.append(f"{a_path}:{lineno}: needs a string 'id' and a list 'ground_truth'")
                continue
            answers[rec["id"]] = rec["ground_truth"]
        for lineno, rec, bad in _json_lines(q_raw, q_path):
            if bad:
                problems.append(bad)
                items.append(_malformed(lineno, bad.split(": ", 1)[1]))
                continue
            why = _entry_problem(rec)
            if why is None and rec["id"] not in answers:
                why = f"no possible answer with id {rec['id']!r} in {a_path}"
            if why is None and rec["id"] in seen:
                why = f"duplicate id {rec['id']!r} (also in {seen[rec['id']]})"
            if why is not None:
                problems.append(f"{q_path}:{lineno}: {why}")
                items.append(_malformed(lineno, why))
                continue
            seen[rec["id"]] = f"{q_path.name}:{lineno}"
            fields = {"id": rec["id"], "question": rec["question"], "function": rec["function"],
                      "ground_truth": answers[rec["id"]], "bfcl_category": category}
            items.append(Item(rec["id"], category, answers[rec["id"]], fields, lineno))
    return items, problems, b"\0".join(blobs)


def _json_lines(raw: bytes, path: Path):
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as e:
            yield lineno, None, f"{path}:{lineno}: not UTF-8 ({e.reason} at byte {e.start})"
            continue
        except json.JSONDecodeError as e:
            yield lineno, None, f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})"
            continue
        if not isinstance(rec, dict):
            yield lineno, None, f"{path}:{lineno}: expected a JSON object"
            continue
        yield lineno, rec, None


def _entry_problem(rec: dict) -> str | None:
    if not isinstance(rec.get("id"), str) or not rec["id"]:
        return "missing field 'id'"
    q = rec.get("question")
    if not (isinstance(q, list) and len(q) == 1 and isinstance(q[0], list) and q[0]):
        return "field 'question' must be one turn: a list holding one non-empty list of messages"
    for m in q[0]:
        if not (isinstance(m, dict) and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str)):
            return "field 'question': each message needs a string 'role' and 'content'"
    fn = rec.get("function")
    if not (isinstance(fn, list) and fn):
        return "field 'function' must be a non-empty list of function documents"
    for f in fn:
        if not (isinstance(f, dict) and isinstance(f.get("name"), str)
                and isinstance(f.get("description"), str)
                and isinstance((f.get("parameters") or {}).get("properties"), dict)):
            return "field 'function': each needs 'name', 'description' and 'parameters.properties'"
    return None


def _malformed(lineno: int, why: str) -> Item:
    return Item(id=f"line{lineno}", category="malformed", reference=None, fields={},
                line=lineno, malformed=why)


# ------------------------------------------------------------------ prompt and verdict
def messages(item: Item) -> list[dict[str, str]]:
    """BFCL's prompt for a prompting model: its system prompt listing the functions (with
    its language hints), then the question's first turn."""
    b = _bfcl()
    f = item.fields
    entry = b.add_hints([{"id": f["id"], "function": copy.deepcopy(f["function"])}])[0]
    turn = copy.deepcopy(f["question"][0])
    return [{"role": m["role"], "content": m["content"]}
            for m in b.system_prompt(turn, entry["function"], f["id"])]


def decode(text: str, category: str) -> tuple[list | None, str]:
    """The reply decoded by BFCL into ``[{name: {param: value}}, ...]``, or (None, why)."""
    b = _bfcl()
    try:
        calls = b.decode(text, b.ReturnFormat(language_of(category)), False)
    except Exception as e:  # BFCL's decoder raises whatever ast/tree-sitter raise
        return None, f"ast_decoder:decoder_failed: {type(e).__name__}: {e}"[:300]
    if not b.is_call_list(calls):
        return None, "ast_decoder:decoder_wrong_output_format"
    return calls, ""


def check(item: Item, calls: list) -> tuple[bool, str]:
    """BFCL's AST checker on decoded calls: (valid, BFCL's error_type and errors)."""
    b = _bfcl()
    category = item.fields["bfcl_category"]
    result = b.ast_checker(item.fields["function"], calls, item.fields["ground_truth"],
                           b.Language(language_of(category)), category, MODEL_NAME)
    if result["valid"]:
        return True, ""
    return False, f"{result.get('error_type')}: {'; '.join(map(str, result.get('error', [])))}"[:500]


def canonical(calls: list) -> str:
    """Decoded calls as one string (for records and for agreement between samples)."""
    return json.dumps(calls, sort_keys=True, default=repr)
