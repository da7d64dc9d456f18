"""The session glossary: its wire form, matching, and how Apertium and echo honour it."""

from __future__ import annotations

import json

import pytest

from babel_actors.engines.apertium import _protect, reformat
from babel_actors.errors import ProtocolError
from babel_actors.glossary import Glossary, Term, occurs, parse_glossary
from babel_actors.wire.client import Init, parse_text

WIRE = {
    "terms": {"Holy Spirit": {"es": "Espíritu Santo", "pt-BR": "Espírito Santo"}, "Grace": "Grace"},
    "keep": ["Exbabel", "Exbabel"],
}


def test_the_wire_form_parses_to_terms_by_language_and_kept_words() -> None:
    glossary = parse_glossary(WIRE)
    assert glossary.terms == (
        Term("Holy Spirit", None, (("es", "Espíritu Santo"), ("pt-BR", "Espírito Santo"))),
        Term("Grace", "Grace"),
    )
    assert glossary.keep == ("Exbabel",)
    assert glossary.phrases() == ("Holy Spirit", "Grace", "Exbabel")
    assert glossary.forced("es") == (("Holy Spirit", "Espíritu Santo"), ("Grace", "Grace"))
    assert glossary.forced("pt-BR")[0] == ("Holy Spirit", "Espírito Santo")
    assert glossary.forced("fr") == (("Grace", "Grace"),)
    assert glossary.forced("es", "by grace alone") == (("Grace", "Grace"),)
    assert not parse_glossary({}) and parse_glossary({"keep": ["x"]})


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], "must be an object"),
        ({"terms": []}, "glossary.terms must map"),
        ({"keep": "x"}, "glossary.keep must be a list"),
        ({"terms": {"a": 3}}, "must be a translation or an object"),
        ({"terms": {"a": {"Spanish": "b"}}}, "is not a language"),
        ({"terms": {" ": "b"}}, "with a word in them"),
        ({"terms": {}, "kept": ["x"]}, "unknown fields \\['kept'\\]"),
        ({"keep": ["a" + " " * 99 + "b"]}, "at most 100 characters"),
        ({"keep": ["x" * 101]}, "at most 100 characters"),
        ({"keep": [str(n) for n in range(501)]}, "at most 500"),
    ],
)
def test_malformed_glossaries_are_refused_with_a_reason(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_glossary(value)
    with pytest.raises(ProtocolError, match=message):
        parse_text(json.dumps({"type": "init", "glossary": value}), max_sample_rate=96000)


def test_init_carries_the_glossary() -> None:
    message = parse_text(json.dumps({"type": "init", "glossary": WIRE}), max_sample_rate=96000)
    assert isinstance(message, Init) and message.glossary == parse_glossary(WIRE)
    plain = parse_text('{"type": "init", "sourceLang": "en"}', max_sample_rate=96000)
    assert isinstance(plain, Init) and plain.glossary is None


def test_phrases_match_whole_words_ignoring_case_and_spacing() -> None:
    assert occurs("Holy Spirit", "the holy   spirit came")
    assert not occurs("Grace", "graceful")
    assert occurs("Dr. Okafor", "thanks, dr. okafor!")


def test_apertium_requests_carry_forced_renderings_in_superblanks() -> None:
    glossary = Glossary(terms=(Term("holy spirit", "Espíritu Santo"),), keep=("[x]",))
    request = _protect("The Holy Spirit and [x] here.", glossary, "es")
    assert request == "The [Espíritu Santo] and [\\[x\\]] here."
    assert reformat(request) == "The Espíritu Santo and [x] here."
