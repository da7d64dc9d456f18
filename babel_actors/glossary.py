"""A session's glossary: forced translations and words that are never translated.

The host sets it in ``init`` (see ``protocols/schemas/client.init.json``). The
translator honours it (the LLM's prompt; Apertium protects the words), and the speech
engine uses its words as recognition hints where the provider allows.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import attrs

MAX_ENTRIES = 500
"""Most terms, and most kept words, one glossary may hold (the schema's limits)."""
MAX_PHRASE_CHARS = 100
"""Longest source term, translation or kept word (the schema's limit; Google's own
phrase hints stop at 100 characters too)."""

_LANGUAGE = re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})*")


@attrs.frozen
class Term:
    """One source phrase and how it must be rendered."""

    source: str
    """The phrase as spoken, matched case-insensitively on word boundaries."""
    default: str | None
    """Its rendering in every target language without one of its own."""
    by_target: tuple[tuple[str, str], ...] = ()
    """``(target language, rendering)`` pairs."""

    def rendering(self, target: str) -> str | None:
        """How to render the term in ``target``, or None when the glossary says not."""
        primary = target.split("-")[0]
        for language, text in self.by_target:
            if language == target or language == primary:
                return text
        return self.default


@attrs.frozen
class Glossary:
    """Terms with forced translations, and words kept as they are. Empty is falsy."""

    terms: tuple[Term, ...] = ()
    """Forced translations, in the order the host gave them."""
    keep: tuple[str, ...] = ()
    """Words and names never translated (brands, people, places)."""

    def __bool__(self) -> bool:
        return bool(self.terms or self.keep)

    def phrases(self) -> tuple[str, ...]:
        """Every source phrase, for recognition hints, without duplicates."""
        return tuple(dict.fromkeys([*(term.source for term in self.terms), *self.keep]))

    def forced(self, target: str, text: str | None = None) -> tuple[tuple[str, str], ...]:
        """``(source, rendering)`` for ``target``; only those in ``text`` if given."""
        pairs = []
        for term in self.terms:
            rendering = term.rendering(target)
            if rendering is not None and (text is None or occurs(term.source, text)):
                pairs.append((term.source, rendering))
        return tuple(pairs)

    def kept(self, text: str | None = None) -> tuple[str, ...]:
        """Words kept as they are; only those in ``text`` if given."""
        return tuple(word for word in self.keep if text is None or occurs(word, text))


def occurs(phrase: str, text: str) -> bool:
    """Whether ``phrase`` is in ``text`` as whole words, ignoring case."""
    return phrase_pattern(phrase).search(text) is not None


def phrase_pattern(phrase: str) -> re.Pattern[str]:
    """``phrase`` as whole words, case-insensitive, any run of spaces between them."""
    words = [re.escape(word) for word in phrase.split()]
    return re.compile(r"(?<!\w)" + r"\s+".join(words) + r"(?!\w)", re.IGNORECASE)


def parse_glossary(value: object) -> Glossary:
    """The wire form (``init.glossary``) as a ``Glossary``; raises ``ValueError`` with
    a message a client developer can act on.

    ``{"terms": {"Holy Spirit": {"es": "Espíritu Santo"}, "Exbabel": "Exbabel"},
    "keep": ["Dr. Okafor"]}``: a term maps to one rendering for every language, or to
    renderings by target language.
    """
    if not isinstance(value, Mapping):
        raise ValueError("glossary must be an object with 'terms' and/or 'keep'")
    unknown = sorted(str(key)[:40] for key in value if key not in ("terms", "keep"))
    if unknown:
        raise ValueError(f"glossary has unknown fields {unknown}; it holds 'terms' and 'keep'")
    terms = value.get("terms", {})
    keep = value.get("keep", [])
    if not isinstance(terms, Mapping):
        raise ValueError("glossary.terms must map source phrases to translations")
    if not isinstance(keep, list):
        raise ValueError("glossary.keep must be a list of words")
    if len(terms) > MAX_ENTRIES or len(keep) > MAX_ENTRIES:
        raise ValueError(f"glossary.terms and glossary.keep hold at most {MAX_ENTRIES} each")
    parsed = tuple(_term(source, rendering) for source, rendering in terms.items())
    kept = tuple(dict.fromkeys(_phrase(word, "glossary.keep entries") for word in keep))
    return Glossary(terms=parsed, keep=kept)


def _term(source: object, rendering: object) -> Term:
    phrase = _phrase(source, "glossary.terms keys")
    if isinstance(rendering, str):
        return Term(phrase, _phrase(rendering, f"the translation of {phrase!r}"))
    if not isinstance(rendering, Mapping) or not rendering:
        raise ValueError(
            f"glossary.terms[{phrase!r}] must be a translation or an object of"
            ' translations by language, e.g. {"es": "..."}'
        )
    by_target = []
    for language, text in rendering.items():
        if not isinstance(language, str) or not _LANGUAGE.fullmatch(language):
            raise ValueError(f"glossary.terms[{phrase!r}]: {language!r} is not a language")
        by_target.append((language, _phrase(text, f"the translation of {phrase!r}")))
    return Term(phrase, None, tuple(by_target))


def _phrase(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be strings with a word in them")
    if len(value) > MAX_PHRASE_CHARS:
        raise ValueError(f"{what} must be at most {MAX_PHRASE_CHARS} characters")
    return " ".join(value.split())
