"""Verifiers that accept a teacher's answer before it becomes a training example.

The same verifiers as the evaluation suite (cogumi.evaluation), on the inputs a request's
``check`` carries (the teacher never sees them):

| ``check["kind"]`` | inputs | accepted when |
| --- | --- | --- |
| ``math`` | ``reference``, ``answer_type`` ("expression" or "number") | the extracted final answer is math-verify-equivalent to the reference (GSM8K-style "number": equal as exact fractions) |
| ``mmlu`` | ``answer`` (option index), ``n_options`` | the extracted letter is the answer's |
| ``code`` | ``prompt``, ``test``, ``entry_point`` (HumanEval fields) | the extracted code passes the tests in the sandbox, judged by the harness (a verdict the sandboxed program reported itself is not trusted) |
| ``tool_call`` | ``function``, ``ground_truth``, ``bfcl_category``, ``id``, ``question`` | BFCL's decoder parses the reply and BFCL's AST checker accepts the calls |

:func:`check_for_item` makes a ``check`` from an evaluation-schema item of a task.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cogumi.evaluation import answers as A
from cogumi.evaluation.tasks import Item, Task

KINDS = ("math", "mmlu", "code", "tool_call")


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str  # "accepted", or why not: no_answer, wrong_answer, failed tests' reason, ...
    detail: str = ""
    verified_by: str = ""


def check_for_item(task: Task, item: Item) -> dict[str, Any]:
    """The verifier's inputs for an item of an evaluation-schema task."""
    f = item.fields
    if task.kind == "math":
        return {"kind": "math", "reference": item.reference, "answer_type": task.answer_type}
    if task.kind == "mmlu":
        return {"kind": "mmlu", "answer": int(item.reference), "n_options": len(f["choices"])}
    if task.kind == "code":
        return {"kind": "code", "prompt": f["prompt"], "test": f["test"],
                "entry_point": f["entry_point"]}
    if task.kind == "tool_call":
        return {"kind": "tool_call", **{k: f[k] for k in ("id", "question", "function",
                                                           "ground_truth", "bfcl_category")}}
    raise ValueError(f"no verifier for task kind {task.kind!r}")


class ExampleVerifier:
    """``verifier([(request, text), ...]) -> [Verdict, ...]``, in order. Code runs in one
    :class:`cogumi.evaluation.sandbox.Sandbox` (made on first use), ``workers`` at a time."""

    def __init__(self, sandbox=None, workers: int = 2) -> None:
        self._sandbox = sandbox
        self.workers = workers

    @property
    def sandbox(self):
        if self._sandbox is None:
            from cogumi.evaluation.sandbox import Sandbox
            self._sandbox = Sandbox()
        return self._sandbox

    def __call__(self, pairs: Sequence[tuple[dict[str, Any], str]]) -> list[Verdict]:
        verdicts: list[Verdict | None] = [None] * len(pairs)
        jobs: list[tuple[int, Any]] = []
        for i, (request, text) in enumerate(pairs):
            check = request.get("check") or {}
            kind = check.get("kind")
            if kind not in KINDS:
                verdicts[i] = Verdict(False, "no_verifier", f"check.kind {kind!r} is not one of "
                                                           f"{', '.join(KINDS)}")
            elif not text.strip():
                verdicts[i] = Verdict(False, "empty_response")
            elif kind == "math":
                verdicts[i] = _math(check, text)
            elif kind == "mmlu":
                verdicts[i] = _mmlu(check, text)
            elif kind == "tool_call":
                verdicts[i] = _tool_call(check, text)
            else:
                code = A.extract_code(text).answer
                if code is None:
                    verdicts[i] = Verdict(False, "no_answer", "no code in the response")
                else:
                    jobs.append((i, _code_job(check, code)))
        if jobs:
            results = self.sandbox.run_many([j for _, j in jobs], workers=self.workers)
            for (i, _), res in zip(jobs, results, strict=True):
                if res.passed and res.judge == "trusted" and res.verified:
                    verdicts[i] = Verdict(True, "accepted", "", "tests in the sandbox")
                elif res.passed:
                    # Passing tests the program reported itself (or outside namespace
                    # isolation) could be forged: never training data.
                    verdicts[i] = Verdict(False, "unverified_verdict",
                                          f"judge {res.judge}, verified {res.verified}")
                else:
                    verdicts[i] = Verdict(False, res.reason, res.detail[:300])
        return [v for v in verdicts if v is not None]


def _math(check: dict, text: str) -> Verdict:
    found = A.extract_math_answer(text)
    if check.get("answer_type", "expression") == "number":
        found = A.final_number(found)
        ok = A.numbers_equal(str(check["reference"]), found.answer)
    else:
        ok = A.math_equivalent(str(check["reference"]), found.answer)
    if found.answer is None:
        return Verdict(False, "no_answer", "no final answer found")
    return Verdict(ok, "accepted" if ok else "wrong_answer",
                   "" if ok else f"answer {found.answer!r} ({found.rule})", "math-verify"
                   if check.get("answer_type", "expression") != "number" else "final number")


def _mmlu(check: dict, text: str) -> Verdict:
    found = A.extract_choice_letter(text, int(check["n_options"]))
    if found.answer is None:
        return Verdict(False, "no_answer", "no option letter found")
    ok = found.answer == A.LETTERS[int(check["answer"])]
    return Verdict(ok, "accepted" if ok else "wrong_answer",
                   "" if ok else f"letter {found.answer}", "option letter")


def _tool_call(check: dict, text: str) -> Verdict:
    from cogumi.evaluation import bfcl
    item = Item(id=check["id"], category=check["bfcl_category"], reference=check["ground_truth"],
                fields={k: check[k] for k in ("id", "question", "function", "ground_truth",
                                               "bfcl_category")}, line=0)
    calls, why = bfcl.decode(text, check["bfcl_category"])
    if calls is None:
        return Verdict(False, "no_answer", why)
    ok, why = bfcl.check(item, calls)
    return Verdict(ok, "accepted" if ok else "wrong_answer", why, "BFCL AST checker")


def _code_job(check: dict, code: str):
    from cogumi.evaluation.runner import build_job
    item = Item(id="teacher", category="code", reference=None,
                fields={k: check[k] for k in ("prompt", "test", "entry_point")}, line=0)
    return build_job(item, code)
