"""The ``echo`` translator: returns its input, tagged with the target language.

For tests, the bench and embedders: costs nothing, never fails, counts its calls so
tests can assert that each (final, language) was translated once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from babel_actors.errors import UnsupportedLanguage

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
        self, text: str, *, source: str, target: str, context: Sequence[str] = ()
    ) -> str:
        if target not in self.targets(source):
            raise UnsupportedLanguage(self.name, target, self.targets(source))
        self.calls[(text, target)] += 1
        return f"[{target}] {text}"

    async def aclose(self) -> None:
        return None
