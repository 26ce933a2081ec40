"""Answer extraction and equivalence: the verifiers behind every accuracy number.

MATH: the final answer is taken by the first rule that finds one, in this order:
``\\boxed{...}`` (the last one), ``The answer is X`` (the last one), the last number in the
text. Equivalence is decided by ``math-verify`` (symbolic/numeric), never string equality.
GSM8K is scored by the final number: the last number of the answer found that way, equal
to the reference number as an exact fraction (``18`` = ``18.00``, ``1,000`` = ``1000``).
Multiple choice: the letter after "The answer is", else a lone letter line, else the last
standalone capital letter among the options. Code: the first fenced block, else the text.
"""

from __future__ import annotations

import ast
import re
import threading
from dataclasses import dataclass
from fractions import Fraction

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_ANSWER_IS = re.compile(r"answer\s*(?:is|:)[ \t:]*", re.IGNORECASE)


@dataclass(frozen=True)
class Extracted:
    answer: str | None
    rule: str  # "boxed" | "answer_is" | "last_number" | "none"


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), with nested braces."""
    best = None
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
            i += 1
        if depth == 0:
            best = text[m.end() : i - 1].strip()
    if best is None:
        # "\boxed 5" (no braces) is valid LaTeX and appears in MATH solutions.
        found = re.findall(r"\\boxed\s+([^\s$]+)", text)
        if found:
            best = found[-1]
    return best


def extract_math_answer(text: str) -> Extracted:
    boxed = last_boxed(text)
    if boxed:
        return Extracted(boxed, "boxed")
    matches = list(_ANSWER_IS.finditer(text))
    if matches:
        rest = text[matches[-1].end() :].strip()
        ans = rest.splitlines()[0].strip() if rest else ""
        prev = None
        while prev != ans:  # peel "$", "**", "." and spaces in any order
            prev = ans
            ans = ans.strip().strip("$*").rstrip(".")
        if ans:
            return Extracted(ans, "answer_is")
    nums = _NUMBER.findall(text)
    if nums:
        return Extracted(nums[-1].replace(",", ""), "last_number")
    return Extracted(None, "none")


def final_number(found: Extracted) -> Extracted:
    """The last number of an extracted answer ("$18.00 per day" -> ``18.00``); none when it
    holds no number. The rule says where the answer was found."""
    if found.answer is None:
        return found
    nums = _NUMBER.findall(found.answer)
    if not nums:
        return Extracted(None, "none")
    rule = found.rule if found.rule == "last_number" else f"{found.rule}, final number"
    return Extracted(nums[-1].replace(",", ""), rule)


def numbers_equal(reference: str, answer: str | None) -> bool:
    """Two numbers equal as exact fractions (``18`` = ``18.0``; ``1/2`` = ``0.5``)."""
    if answer is None:
        return False
    try:
        return Fraction(reference.replace(",", "")) == Fraction(answer.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return False


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _mv_parse(s: str):
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    timeout = 5 if _in_main_thread() else None  # math-verify's alarm() only works there
    cfg = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    parsed = parse("\\boxed{" + s + "}", extraction_config=cfg, parsing_timeout=timeout)
    if not parsed:
        parsed = parse(s, extraction_config=cfg, parsing_timeout=timeout)
    return parsed


def math_equivalent(reference: str, answer: str | None) -> bool:
    """True when math-verify judges ``answer`` equivalent to ``reference``.

    Both are first parsed as the content of a ``\\boxed{}``; math-verify then compares
    them symbolically and numerically (``1/2`` = ``0.5`` = ``\\frac{1}{2}``)."""
    if answer is None or not answer.strip():
        return False
    from math_verify import verify

    gold, pred = _mv_parse(reference), _mv_parse(answer)
    if not gold or not pred:
        # Neither side parses as math: fall back to normalised text (e.g. "\text{(C)}").
        return _norm_text(reference) == _norm_text(answer)
    timeout = 5 if _in_main_thread() else None
    try:
        return bool(verify(gold, pred, timeout_seconds=timeout))
    except Exception:  # math-verify raises on pathological input; that is "not equal"
        return False


def _norm_text(s: str) -> str:
    s = re.sub(r"\\text\{([^}]*)\}", r"\1", s)
    return re.sub(r"[\s$\\{}]", "", s).lower()


def math_answers_agree(a: str | None, b: str | None) -> bool:
    """Two sampled answers agree when math-verify says they are equivalent. A missing
    answer agrees with nothing (not even another missing one)."""
    if a is None or b is None:
        return False
    return a == b or math_equivalent(a, b)


LETTERS = "ABCDEFGHIJ"


def extract_choice_letter(text: str, n_options: int) -> Extracted:
    letters = LETTERS[:n_options]
    stated = re.findall(rf"answer\s*(?:is|:)\s*[:\s]*\(?\**([{letters}])\b", text, re.IGNORECASE)
    if stated:
        return Extracted(stated[-1].upper(), "answer_is")
    lone = re.findall(rf"^\s*\(?([{letters}])[).:]?\s*$", text, re.MULTILINE)
    if lone:
        return Extracted(lone[-1], "lone_letter")
    found = re.findall(rf"\b([{letters}])\b", text)
    if found:
        return Extracted(found[-1], "last_letter")
    return Extracted(None, "none")


def extract_code(text: str) -> Extracted:
    """The first fenced code block (```python or ```), else the whole text."""
    m = re.search(r"```(?:python|py|Python)?[ \t]*\n(.*?)(?:```|$)", text, re.DOTALL)
    if m and m.group(1).strip():
        return Extracted(m.group(1), "fenced")
    if text.strip():
        return Extracted(text, "raw")
    return Extracted(None, "none")


def normalise_code(code: str | None) -> str | None:
    """Code compared for consistency: the AST dump (ignores comments, spacing, quotes),
    else whitespace-collapsed text when it does not parse."""
    if code is None:
        return None
    try:
        return ast.dump(ast.parse(code))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return " ".join(code.split())
