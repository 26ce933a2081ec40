"""Extraction rules and math-verify equivalence: the verifier must accept equal values in
different notations and reject different values, and pass@k must be the unbiased one."""

from __future__ import annotations

from math import comb

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cogumi.evaluation.answers import (
    extract_choice_letter,
    extract_code,
    extract_math_answer,
    last_boxed,
    math_answers_agree,
    math_equivalent,
    normalise_code,
)
from cogumi.evaluation.metrics import agreement, majority, pass_at_k


@pytest.mark.parametrize(
    "text,answer,rule",
    [
        ("so $\\boxed{\\frac{1}{2}}$ and The answer is 7", "\\frac{1}{2}", "boxed"),
        ("first \\boxed{1} then \\boxed{\\sqrt{2}}", "\\sqrt{2}", "boxed"),
        ("The answer is $0.5$.", "0.5", "answer_is"),
        ("The answer is **12**.", "12", "answer_is"),
        ("answer: 3 apples. Wait, the answer is 4", "4", "answer_is"),
        ("x = 3 and y = 1,000", "1000", "last_number"),
        ("I do not know", None, "none"),
    ],
)
def test_math_extraction_rules_in_order(text, answer, rule):
    got = extract_math_answer(text)
    assert (got.answer, got.rule) == (answer, rule)


def test_last_boxed_handles_nested_braces():
    assert last_boxed("\\boxed{\\frac{a}{b^{2}}}") == "\\frac{a}{b^{2}}"
    assert last_boxed("\\boxed{unclosed") is None


@pytest.mark.parametrize(
    "ref,ans",
    [("\\frac{1}{2}", "0.5"), ("12", "12.0"), ("x^2+1", "1+x^2"), ("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2"),
     ("\\text{(C)}", "\\text{(C)}"), ("3", "3")],
)
def test_math_verify_accepts_equivalent_forms(ref, ans):
    assert math_equivalent(ref, ans)


@pytest.mark.parametrize("ref,ans", [("\\frac{1}{2}", "0.6"), ("12", "13"), ("x^2+1", "x^2-1"),
                                     ("3", ""), ("3", None)])
def test_math_verify_rejects_different_values(ref, ans):
    assert not math_equivalent(ref, ans)


def test_missing_answers_never_agree():
    assert math_answers_agree("1/2", "0.5")
    assert not math_answers_agree(None, None)
    assert agreement([None, None, None], lambda a, b: a is not None and a == b) == (False, 0.0)


@pytest.mark.parametrize(
    "text,letter",
    [("The answer is (B).", "B"), ("C", "C"), ("I'd pick D here", "D"), ("answer: a", "A"),
     ("nothing", None), ("The answer is E", None)],
)
def test_choice_letter_extraction(text, letter):
    assert extract_choice_letter(text, 4).answer == letter


def test_code_extraction_and_normalisation():
    fenced = "Sure:\n```python\ndef f(x):\n    return x  # id\n```\nDone"
    assert extract_code(fenced).answer == "def f(x):\n    return x  # id\n"
    assert extract_code("    return 1\n").rule == "raw"
    assert extract_code("   ").answer is None
    assert normalise_code("def f(x):\n    return x  # c\n") == normalise_code("def f(x):  return x")
    assert normalise_code("def f(x): return x") != normalise_code("def f(x): return -x")


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 20).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_is_the_unbiased_estimator(nck):
    n, c, k = nck
    # Definition: probability that a random k-subset of the n samples has a correct one.
    exact = 1 - comb(n - c, k) / comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)


def test_pass_at_k_rejects_impossible_inputs():
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_agreement_and_majority():
    eq = lambda a, b: a is not None and a == b  # noqa: E731
    assert agreement(["1", "1", "1"], eq) == (True, 1.0)
    all_ok, share = agreement(["1", "1", "2"], eq)
    assert not all_ok and share == pytest.approx(1 / 3)
    assert majority(["2", "1", "1", None], eq) == 1
    assert majority([None, None], eq) is None


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=200))
def test_extractors_never_crash_on_arbitrary_text(text):
    # Model output is arbitrary; extraction must return an answer or None, never raise.
    extract_math_answer(text)
    extract_choice_letter(text, 4)
    extract_code(text)
    normalise_code(text)
    assert isinstance(math_equivalent("1", text), bool)
