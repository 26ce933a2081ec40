"""English verification for phase 0, with py3langid (a naive Bayes byte n-gram classifier over
about 97 languages whose model ships inside the wheel, so nothing is downloaded).

    detect_language(["The cat sat.", "El gato."])  # [("en", 0.98), ("es", 0.86)]
    is_english(instruction, response)             # (True, "english") or (False, reason)
    check_english(records)                        # verdicts and counts for a whole corpus

Confidences are py3langid's normalised probabilities, which it calibrates across text lengths
(scores are scaled by 1/sqrt(bytes) before the softmax): a clear sentence scores above 0.9,
code, formulas and one-word answers score below 0.1 whatever language they are given.

The rule (``is_english``): each of instruction and response is judged on its prose, that is,
with fenced and inline code, LaTeX and URLs taken out. A field with fewer than
``MIN_PROSE_LETTERS`` letters left is not judged (a formula, a code block, "Yes."). A record
is removed only when a judged field is identified as another language with confidence at
least ``min_confidence``; a field identified as another language with lower confidence is
kept and counted as uncertain. Instruction and response are judged separately because a long
English instruction would otherwise mask a response in another language (translation tasks:
"Translate to French: ..." with a French answer is not an English pair).
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cogumi.data.workers import pool_context

__all__ = ["DEFAULT_MIN_CONFIDENCE", "MIN_PROSE_LETTERS", "EnglishCheck", "check_english",
           "detect_language", "is_english", "looks_like_code", "prose"]

DEFAULT_MIN_CONFIDENCE = 0.5
MIN_PROSE_LETTERS = 20
MAX_DETECT_CHARS = 2000
"""Only the first this many characters are classified: the language of a longer text is
settled well before that, and the classifier's cost grows with the length."""

_identifier = None


def _get_identifier():
    global _identifier
    if _identifier is None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier
        _identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return _identifier


def _detect_chunk(texts: list[str]) -> list[tuple[str, float]]:
    identifier = _get_identifier()
    out = []
    for text in texts:
        text = text[:MAX_DETECT_CHARS]
        if not text.strip():
            out.append(("und", 0.0))
            continue
        lang, confidence = identifier.classify(text)
        out.append((lang, round(float(confidence), 4)))
    return out


def detect_language(texts: Sequence[str], workers: int | None = 1,
                    chunk: int = 2000) -> list[tuple[str, float]]:
    """(ISO 639-1 code, confidence in [0, 1]) for each text, in order. Empty or blank texts
    give ("und", 0.0). workers=None uses every core; below 4 chunks it runs in this
    process, since loading the model in each worker costs about half a second."""
    texts = list(texts)
    chunks = [texts[lo:lo + chunk] for lo in range(0, len(texts), chunk)]
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
    if workers <= 1 or len(chunks) < 4:
        return [result for part in chunks for result in _detect_chunk(part)]
    with pool_context().Pool(min(workers, len(chunks))) as pool:
        return [result for part in pool.map(_detect_chunk, chunks, chunksize=1)
                for result in part]


_FENCED = re.compile(r"```.*?(?:```|\Z)|~~~.*?(?:~~~|\Z)", re.S)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LATEX = re.compile(r"\$\$.*?\$\$|\$[^$\n]*\$|\\\[.*?\\\]|\\\(.*?\\\)", re.S)
_URL = re.compile(r"\b(?:https?://|www\.)\S+")
_LETTER = re.compile(r"[^\W\d_]")
# Lines of source code outside a fence (CodeAlpaca's outputs, test asserts): identifiers and
# keywords are not a natural language, and py3langid calls them Luxembourgish or Latin with
# low confidence, which would count an English record as uncertain. Keywords must start the
# line in lower case, so prose ("Class A amplifiers", "From the data") is not matched.
_CODE_LINE = re.compile(
    r"^\s*(?:def|class|return|import|from\s+\S+\s+import|assert|elif|raise|yield|#include"
    r"|public|private|static|void|var|let|const|function|SELECT|INSERT|UPDATE)\b|^\s*print\("
    r"|==|!=|<=|>=|\+=|-=|\*=|=>|->|&&|\|\||;\s*$|[{}]\s*$|^\s*[}\])]"
    r"|^\s*[A-Za-z_][\w.]*(?:\[[^\]]*\])?\s*=\s*\S"  # assignment: x = ..., a.b[i] = ...
    r"|^\s*[A-Za-z_][\w.]*\([^)]*\)\s*:?\s*$"        # a call or a header alone on a line
    r"|^(?: {4}|\t)")                                   # an indented block


def looks_like_code(line: str) -> bool:
    """Whether one line of text looks like source code rather than prose."""
    return bool(_CODE_LINE.search(line))


def prose(text: str) -> str:
    """The text without fenced or inline code, LaTeX, URLs and lines that look like code:
    what a language can be identified from."""
    for pattern in (_FENCED, _INLINE_CODE, _LATEX, _URL):
        text = pattern.sub(" ", text)
    return " ".join(word for line in text.splitlines() if not looks_like_code(line)
                    for word in line.split())


def _letters(text: str) -> int:
    return len(_LETTER.findall(text))


def _field_text(text: str) -> str | None:
    """The prose to judge, or None when there is too little of it."""
    cleaned = prose(text or "")
    return cleaned if _letters(cleaned[:MAX_DETECT_CHARS]) >= MIN_PROSE_LETTERS else None


def _verdict(judged: dict[str, tuple[str, float] | None], min_confidence: float
             ) -> tuple[bool, str, str]:
    """(keep, reason, category) from each field's detection (None = not judged).
    category: english | uncertain | undetermined | non_english."""
    for name, detection in judged.items():
        if detection is not None:
            lang, confidence = detection
            if lang != "en" and confidence >= min_confidence:
                return False, f"{name} identified as '{lang}' ({confidence:.2f})", "non_english"
    if all(d is None for d in judged.values()):
        return True, "too little prose to identify the language", "undetermined"
    doubts = [f"{name} '{d[0]}' at {d[1]:.2f} < {min_confidence}"
              for name, d in judged.items() if d is not None and d[0] != "en"]
    if doubts:
        return True, "kept, low confidence: " + "; ".join(doubts), "uncertain"
    return True, "english", "english"


def is_english(instruction: str, response: str,
               min_confidence: float = DEFAULT_MIN_CONFIDENCE) -> tuple[bool, str]:
    """Whether a pair is kept as English, and why (see the module docstring for the rule)."""
    judged = {}
    for name, text in (("instruction", instruction), ("response", response)):
        cleaned = _field_text(text)
        judged[name] = None if cleaned is None else _detect_chunk([cleaned])[0]
    keep, reason, _ = _verdict(judged, min_confidence)
    return keep, reason


@dataclass
class EnglishCheck:
    keep_ids: set[str]
    removed: list[dict]
    """One dict per removed record: id, reason, instruction_language, response_language
    (each [code, confidence], or None when not judged)."""
    stats: dict = field(default_factory=dict)
    """records, kept, removed, english_share (kept / records), by category
    (english, uncertain, undetermined, non_english), removed_by_language, min_confidence."""
    categories: dict[str, str] = field(default_factory=dict)
    """Record id -> english | uncertain | undetermined | non_english, so a caller can measure
    the language mix of any subset (phase 0: of the records it finally keeps)."""


def check_english(records: Iterable[dict], min_confidence: float = DEFAULT_MIN_CONFIDENCE,
                  workers: int | None = None) -> EnglishCheck:
    """Apply ``is_english`` to every record (dicts with id, instruction, response), batched
    over workers."""
    records = list(records)
    fields = [(_field_text(r.get("instruction") or ""), _field_text(r.get("response") or ""))
              for r in records]
    texts = [text for pair in fields for text in pair if text is not None]
    detections = iter(detect_language(texts, workers=workers))
    categories: Counter = Counter()
    removed_languages: Counter = Counter()
    keep_ids, removed = set(), []
    category_of: dict[str, str] = {}
    for record, (instruction, response) in zip(records, fields, strict=True):
        judged = {"instruction": None if instruction is None else next(detections),
                  "response": None if response is None else next(detections)}
        keep, reason, category = _verdict(judged, min_confidence)
        categories[category] += 1
        category_of[record["id"]] = category
        if keep:
            keep_ids.add(record["id"])
            continue
        languages = {f"{name}_language": None if d is None else list(d)
                     for name, d in judged.items()}
        removed.append({"id": record["id"], "reason": reason, **languages})
        removed_languages.update(d[0] for d in judged.values()
                                 if d is not None and d[0] != "en" and d[1] >= min_confidence)
    total = len(records)
    stats = {
        "records": total, "kept": len(keep_ids), "removed": len(removed),
        "english_share": round(len(keep_ids) / total, 6) if total else math.nan,
        "by_category": {c: categories.get(c, 0)
                        for c in ("english", "uncertain", "undetermined", "non_english")},
        "removed_by_language": dict(removed_languages.most_common()),
        "min_confidence": min_confidence, "min_prose_letters": MIN_PROSE_LETTERS,
        "detector": "py3langid (norm_probs=True)",
    }
    return EnglishCheck(keep_ids, removed, stats, category_of)
