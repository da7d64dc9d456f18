"""The ``echo`` translator: returns its input, tagged with the target language.

For tests, the bench and embedders: costs nothing, never fails, counts its calls so
tests can assert that each (final, language) was translated once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from babel_actors.errors import UnsupportedLanguage
from babel_actors.glossary import Glossary, phrase_pattern

ECHO_LANGUAGES = frozenset({"en", "es", "fr", "de", "it", "pt", "ca", "gl", "eo"})


class EchoTranslator:
    """``translate("hello", target="es")`` gives ``"[es] hello"``."""

    name = "echo"

    def __init__(self, languages: frozenset[str] = ECHO_LANGUAGES) -> None:
        self._languages = languages
        self.calls: Counter[tuple[str, str]] = Counter()
        """How often each (text, target) was translated."""

    def sources(self) -> frozenset[str]:
        return self._languages

    def targets(self, source: str) -> frozenset[str]:
        return self._languages - {source} if source in self._languages else frozenset()

    async def translate(
        self,
        text: str,
        *,
        source: str,
        target: str,
        context: Sequence[str] = (),
        glossary: Glossary | None = None,
        partial: bool = False,
    ) -> str:
        """``[es] text``; a glossary's forced terms replace theirs, so tests can see it."""
        if target not in self.targets(source):
            raise UnsupportedLanguage(self.name, target, self.targets(source))
        self.calls[(text, target)] += 1
        for term, rendering in glossary.forced(target, text) if glossary else ():
            text = phrase_pattern(term).sub(rendering, text)
        return f"[{target}] {text}"

    async def aclose(self) -> None:
        return None
