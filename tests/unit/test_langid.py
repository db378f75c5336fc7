"""The batched language identifier (pipeline_tasks/langid.py) against py3langid's own classify, text by
text: the same language and the same probability (to float32 rounding) on thousands of real lines of
several languages, and on the lines that are easy to get wrong (empty, very short, all capitals, mixed)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from pipeline_tasks import langid
from tests.conftest import NEWSTEST, SAMPLE

# float32 sums of ~100 terms in another order: probabilities differ by a few 1e-6 at most.
PROB_TOL = 5e-5

CRAFTED = [
    "", " ", "a", "!!", "zz", "12345", "\t", ".", "é", "ß", "Я", "日本",
    "Il est exploité depuis 43 ans par la famille Janinet et Fils .",
    "L'hôtel se trouve à deux pas de la gare , au cœur de la vieille ville .",
    "La camera è dotata di aria condizionata , TV satellitare e bagno privato .",
    "Il ristorante propone piatti tipici della cucina toscana .",
    "Россия и Украина договорились о прекращении огня .",
    "В 54 садибах розміщено 124 пам &apos; ятки .",
    "Η Ελλάδα είναι μια χώρα στη νοτιοανατολική Ευρώπη .",
    "Београд је главни град Србије и највећи град у земљи .", "Beograd je glavni grad Srbije i najveći grad .",
    "Oʻzbekiston Respublikasi Markaziy Osiyoda joylashgan davlat .",   # sr, uz: aliased columns
    "Ўзбекистон Республикаси Марказий Осиёда жойлашган давлат .",
    "THE HOTEL IS CLOSED ON MONDAYS AND TUESDAYS",
    "DAS HOTEL IST MONTAGS GESCHLOSSEN",
    "ÇA VA TRÈS BIEN , MERCI",
    "The committee said : « Nous sommes d'accord » , and left .",
    "Der Ausschuss sagte : the report is adopted , und ging .",
    "Hotel Adlon Kempinski Berlin", "www.example.com/index.html", "info@example.com",
    "Mannheim , 17 July 2007 \x96 CropEnergies AG", "The milit\ufffdry aviation sector",
    "ǅemal ǈubljana ǋ", "ｆｕｌｌｗｉｄｔｈ ｔｅｘｔ", "e\u0301te\u0301 cafe\u0301",  # titlecase, fullwidth, NFD
    "x" * 3000, "Die " * 700, "日本語のテキストです。" * 40,   # long lines: the walk's tail in Python
]


def _lines(path, n=None) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return lines[:n] if n else lines


@pytest.fixture(scope="module")
def identifiers():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    reference = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    batched = langid.batch_identifier()
    assert batched._batched, "the batched walk disagreed with py3langid on its probes and fell back"
    return reference, batched


def _assert_same(reference, batched, texts: list[str]) -> None:
    langs, probs = batched.classify(texts)
    assert len(langs) == len(probs) == len(texts)
    worst = 0.0
    for text, lang, prob in zip(texts, langs, probs.tolist(), strict=True):
        want, want_prob = reference.classify(text)
        assert lang == want, (text[:80], lang, want)
        worst = max(worst, abs(prob - want_prob))
        assert abs(prob - want_prob) <= PROB_TOL, (text[:80], prob, want_prob)
    assert worst <= PROB_TOL


def test_real_lines_of_several_languages(identifiers):
    reference, batched = identifiers
    texts = (_lines(SAMPLE / "train.en", 3000) + _lines(SAMPLE / "train.de", 3000) + _lines(SAMPLE / "val.en", 1000)
             + _lines(SAMPLE / "test.de", 1000) + _lines(NEWSTEST / "newstest2017.en-de.en")
             + _lines(NEWSTEST / "newstest2017.en-de.de"))
    langs, _ = batched.classify(texts)
    assert {"en", "de"} <= set(langs) and len(set(langs)) > 5  # the sample's noise: other languages too
    _assert_same(reference, batched, texts)


def test_crafted_lines_and_the_walks_tail(identifiers):
    reference, batched = identifiers
    _assert_same(reference, batched, CRAFTED)           # few texts: mostly the Python tail of the walk
    _assert_same(reference, batched, CRAFTED * 30)      # many: the numpy steps, then the tail
    for text in CRAFTED:                                 # one at a time
        _assert_same(reference, batched, [text])


def test_a_text_without_features_gets_py3langids_uniform_answer(identifiers):
    reference, batched = identifiers
    langs, probs = batched.classify(["", "The committee adopted the report ."])
    assert (langs[0], pytest.approx(float(probs[0]), abs=PROB_TOL)) == reference.classify("")
    langs, probs = batched.classify([])
    assert langs == [] and probs.shape == (0,)


def test_a_py3langid_that_computes_otherwise_is_noticed_and_used_as_is(identifiers, caplog):
    """Should py3langid change its arithmetic, the batch disagrees on the probes: it says so and falls back."""
    reference, _ = identifiers

    class Changed:
        def __init__(self, inner):
            self._inner = inner

        def __getattr__(self, name):
            return getattr(self._inner, name)

        def classify(self, text):
            lang, prob = self._inner.classify(text)
            return lang, prob * 0.5

    with caplog.at_level(logging.WARNING, logger="pipeline_tasks.langid"):
        fallback = langid.BatchIdentifier(Changed(reference))
    assert "classifying one text at a time" in caplog.text
    text = "Il est exploité depuis 43 ans par la famille Janinet et Fils ."
    langs, probs = fallback.classify([text])
    want = reference.classify(text)
    assert langs == [want[0]] and float(probs[0]) == pytest.approx(want[1] * 0.5)


def test_an_identifier_without_probabilities_is_refused():
    with pytest.raises(ValueError, match="norm_probs=True"):
        langid.BatchIdentifier(SimpleNamespace(_norm_probs=False))
