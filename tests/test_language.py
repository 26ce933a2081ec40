"""English verification with py3langid: detection, the per-field rule, corpus counts."""

from __future__ import annotations

import pytest

from cogumi.data.language import check_english, detect_language, is_english, prose

SENTENCES = {
    "en": "The children walked to the library after school to borrow some books.",
    "es": "Los niños caminaron a la biblioteca después de la escuela para pedir libros.",
    "de": "Die Kinder gingen nach der Schule in die Bibliothek, um Bücher auszuleihen.",
    "fr": "Les enfants sont allés à la bibliothèque après l'école pour emprunter des livres.",
}


def test_detects_four_languages_with_confidence():
    results = detect_language(list(SENTENCES.values()))
    for (expected, _), (lang, confidence) in zip(SENTENCES.items(), results, strict=True):
        assert lang == expected
        assert 0.8 < confidence <= 1.0


def test_blank_text_is_undetermined():
    assert detect_language(["", "   \n"]) == [("und", 0.0), ("und", 0.0)]


def test_worker_pool_matches_in_process():
    texts = list(SENTENCES.values()) * 2
    assert detect_language(texts, workers=2, chunk=2) == detect_language(texts, workers=1)


def test_english_pair_is_kept():
    assert is_english("Explain why the sky is blue in two sentences.",
                      "Sunlight is scattered by the air, and blue light scatters the most.") \
        == (True, "english")


@pytest.mark.parametrize("lang", ["es", "de", "fr"])
def test_non_english_response_is_removed_with_reason(lang):
    keep, reason = is_english("Translate this sentence, please: " + SENTENCES["en"],
                              SENTENCES[lang])
    assert not keep
    assert reason.startswith(f"response identified as '{lang}'")


def test_non_english_instruction_is_removed():
    keep, reason = is_english(SENTENCES["de"], "Sure, here is the answer in English for you.")
    assert not keep and "instruction" in reason and "'de'" in reason


def test_code_and_formulas_are_judged_on_prose_only():
    keep, reason = is_english("Write a Python function that reverses a list of numbers.",
                              "```python\ndef reverse(xs):\n    return xs[::-1]\n```")
    assert keep and reason == "english"
    assert is_english("What is 2+2?", "4") == (True,
                                               "too little prose to identify the language")
    assert prose("See `x = 1` and $a^2$ at https://example.com ok") == "See and at ok"


def test_threshold_controls_removal():
    # Foreign, but the caller demands near-certainty before removing.
    keep, reason = is_english("Bonjour, comment allez-vous aujourd'hui mon ami?", "",
                              min_confidence=1.01)
    assert keep and reason.startswith("kept, low confidence")


def test_check_english_counts_and_share():
    records = [{"id": "en", "instruction": "Describe a cat.",
                "response": "A cat is a small furry animal that likes to sleep in the sun."},
               {"id": "es", "instruction": "Describe a cat.", "response": SENTENCES["es"]},
               {"id": "code", "instruction": "f(x)?", "response": "x**2"}]
    check = check_english(records, workers=1)
    assert check.keep_ids == {"en", "code"}
    assert [r["id"] for r in check.removed] == ["es"]
    assert check.removed[0]["response_language"][0] == "es"
    assert check.stats["english_share"] == pytest.approx(2 / 3)
    assert check.stats["by_category"] == {"english": 1, "uncertain": 0, "undetermined": 1,
                                          "non_english": 1}
    assert check.stats["removed_by_language"] == {"es": 1}


def test_bare_code_lines_are_not_judged_as_prose():
    # py3langid calls assert lines Luxembourgish at low confidence; they are not a language.
    tests = "assert add_four(59) == 63\nassert add_four(0) == 4\nassert add_four(-2) == 2"
    assert prose(tests) == ""
    assert is_english("Write test cases for the function add_four.", tests) == (True, "english")
    assert prose("def f(x):\n    return x\nThis returns its argument.") == \
        "This returns its argument."
    # prose that starts like a keyword is kept
    assert prose("Class A amplifiers conduct all the time.\nFrom the data, we see growth.") == \
        "Class A amplifiers conduct all the time. From the data, we see growth."


def test_check_english_reports_each_records_category():
    records = [{"id": "en", "instruction": "Describe a cat.",
                "response": "A cat is a small furry animal that likes to sleep in the sun."},
               {"id": "code", "instruction": "f(x)?", "response": "x**2"}]
    assert check_english(records, workers=1).categories == {"en": "english",
                                                            "code": "undetermined"}
