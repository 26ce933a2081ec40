"""Record-level quality filters for phase 0: empty, over-long, truncated and refusal-only.

    issue = quality_issue(instruction, response, settings)
    # None, or (rule, reason): ("truncated", "response ends mid-sentence (last word 'the')")

Each rule has a threshold in the profile's [data] section (see cogumi.profile.DataConfig);
the first rule that applies is the record's reason, in the order of RULES. The rules are
deliberately narrow: a removed record is lost training data, so each one fires only on a
signal that is hard to produce by a complete, helpful answer.
"""

from __future__ import annotations

import re
from typing import Protocol

from cogumi.data.language import looks_like_code

RULES = ("empty_instruction", "empty_response", "over_long", "truncated", "refusal")
REMOVAL_RULES = ("duplicate_id", *RULES, "non_english", "exact_duplicate", "near_duplicate")
"""Every rule by which phase 0 removes a record, in pipeline order (cogumi.phases.curate);
each is a removed.<rule> metric."""


class QualitySettings(Protocol):
    min_response_chars: int
    max_record_chars: int
    truncated_min_chars: int
    refusal_max_chars: int


# Words a finished English sentence does not end on. A long answer whose last word is one of
# these (with no punctuation after it) was cut off, typically at a generation token limit.
_DANGLING = frozenset("the a an and or of to with for that which but because by from".split())
_CUT_PUNCTUATION = tuple(",;:(-")

# Refusals that start the response: an optional apology, then "I can't ..." or "As an AI ...".
# Only short responses are tested (refusal_max_chars): a long answer that starts with an
# apology and then helps is not a refusal.
_REFUSAL = re.compile(
    r"^\W*(?:(?:i'?m|i am)\s+(?:really\s+|very\s+)?sorry|sorry|i apologi[sz]e|unfortunately)?"
    r"[\s,.!]*(?:but\s+)?(?:as an ai(?:\s+(?:language\s+)?model)?(?:\s+developed\s+by\s+\w+)?"
    r"[\s,]*)?i\s*(?:can(?:'|’)?t|cannot|can not|am (?:not able|unable)|'m (?:not able|unable)"
    r"|won'?t|will not|must decline|do not|don'?t)\s+(?:help|assist|provide|answer|do|fulfil"
    r"|comply|respond|generate|create|write|engage|support|discuss|give|share|complete)",
    re.IGNORECASE)
_AS_AN_AI = re.compile(r"^\W*as an ai(?:\s+(?:language\s+)?model)?\b.{0,80}\b(?:cannot|can't|"
                       r"don't|do not|am not able|am unable)\b", re.IGNORECASE | re.DOTALL)


def truncation(response: str, min_chars: int) -> str | None:
    """Why the response looks cut off, or None.

    An unclosed code fence (an odd number of ```) is truncation at any length. A response of
    at least ``min_chars`` whose last line is prose and that stops on a comma, colon,
    semicolon, opening bracket or dash, or on a word like "the" or "and", ends mid-sentence.
    A missing final full stop alone is not enough: short answers ("Paris"), answers like
    "So the answer is yes" and code end without one.
    """
    if response.count("```") % 2 == 1:
        return "unclosed code fence"
    if min_chars <= 0 or len(response) < min_chars:
        return None
    text = response.rstrip()
    last_line = text.rsplit("\n", 1)[-1]
    if not last_line.strip() or looks_like_code(last_line):
        return None
    if text.endswith(_CUT_PUNCTUATION):
        return f"response ends mid-sentence (on {text[-1]!r})"
    last_word = last_line.split()[-1]
    if last_word.lower() in _DANGLING:
        return f"response ends mid-sentence (last word {last_word!r})"
    return None


def is_refusal(response: str, max_chars: int) -> bool:
    """A short response that only declines (``max_chars`` 0 turns the rule off)."""
    if max_chars <= 0 or len(response) > max_chars:
        return False
    return bool(_REFUSAL.search(response) or _AS_AN_AI.search(response))


def quality_issue(instruction: str, response: str, settings: QualitySettings
                  ) -> tuple[str, str] | None:
    """(rule, reason) for the first quality rule the record breaks, or None."""
    instruction, response = instruction.strip(), response.strip()
    if not instruction:
        return "empty_instruction", "empty instruction"
    if len(response) < max(1, settings.min_response_chars):
        return "empty_response", (f"response shorter than {settings.min_response_chars} "
                                  f"characters ({len(response)})" if response
                                  else "empty response")
    total = len(instruction) + len(response)
    if total > settings.max_record_chars:
        return "over_long", f"over {settings.max_record_chars} characters ({total})"
    cut = truncation(response, settings.truncated_min_chars)
    if cut:
        return "truncated", f"truncated: {cut}"
    if is_refusal(response, settings.refusal_max_chars):
        return "refusal", "refusal only: " + " ".join(response.split())[:80]
    return None
