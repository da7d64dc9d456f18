"""The ``google`` engine's language table: which locales the model takes in the
configured location, and how a session's language tag maps onto one of them.

Google lists the locales per location and model in the Locations API
(``LocationsMetadata``); ``LocaleTable.from_metadata`` reads that answer, and
``FALLBACK_LOCALES`` stands in when it cannot be had. Google spells some languages its
own way (``iw-IL`` for Hebrew, ``no-NO`` for Norwegian Bokmål, ``cmn-Hant-TW`` for
Mandarin in Taiwan, ``pa-Guru-IN`` for Punjabi): a tag is matched by language and
region, script or not, so ``he-IL``, ``nb-NO``, ``zh-TW`` and ``pa-IN`` find them.

Sans-IO: plain strings and the SDK's message types, no trio, no gRPC.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

PREFERRED = {
    "af": "af-ZA", "am": "am-ET", "ar": "ar-EG", "az": "az-AZ", "be": "be-BY",
    "bg": "bg-BG", "bn": "bn-IN", "bs": "bs-BA", "ca": "ca-ES", "cs": "cs-CZ",
    "cy": "cy-GB", "da": "da-DK", "de": "de-DE", "el": "el-GR", "en": "en-US",
    "es": "es-ES", "et": "et-EE", "eu": "eu-ES", "fa": "fa-IR", "fi": "fi-FI",
    "fil": "fil-PH", "fr": "fr-FR", "ga": "ga-IE", "gl": "gl-ES", "gu": "gu-IN",
    "he": "iw-IL", "hi": "hi-IN", "hr": "hr-HR", "hu": "hu-HU", "hy": "hy-AM",
    "id": "id-ID", "is": "is-IS", "it": "it-IT", "ja": "ja-JP", "ka": "ka-GE",
    "kk": "kk-KZ", "km": "km-KH", "kn": "kn-IN", "ko": "ko-KR", "lo": "lo-LA",
    "lt": "lt-LT", "lv": "lv-LV", "mk": "mk-MK", "ml": "ml-IN", "mn": "mn-MN",
    "mr": "mr-IN", "ms": "ms-MY", "my": "my-MM", "nb": "no-NO", "ne": "ne-NP",
    "nl": "nl-NL", "no": "no-NO", "pa": "pa-Guru-IN", "pl": "pl-PL", "pt": "pt-BR",
    "ro": "ro-RO", "ru": "ru-RU", "si": "si-LK", "sk": "sk-SK", "sl": "sl-SI",
    "sq": "sq-AL", "sr": "sr-RS", "sv": "sv-SE", "sw": "sw-KE", "ta": "ta-IN",
    "te": "te-IN", "th": "th-TH", "tl": "fil-PH", "tr": "tr-TR", "uk": "uk-UA",
    "ur": "ur-PK", "uz": "uz-UZ", "vi": "vi-VN", "zh": "cmn-Hans-CN", "zu": "zu-ZA",
}  # fmt: skip
"""A primary tag to the locale it means when the table holds it."""

GOOGLE_LANGUAGE = {"he": "iw", "nb": "no", "tl": "fil", "zh": "cmn", "jv": "jw"}
"""BCP-47 languages Google spells another way."""

FALLBACK_LOCALES = frozenset(
    [*PREFERRED.values(), "en-GB", "en-AU", "en-IN", "es-US", "es-MX", "fr-CA", "pt-PT",
     "de-AT", "de-CH", "ar-SA", "cmn-Hant-TW", "yue-Hant-HK", "nl-BE", "it-CH"]
)  # fmt: skip
"""The locales assumed when the Locations API cannot be asked (chirp_3's, roughly)."""


def _key(tag: str) -> str:
    return tag.replace("_", "-").lower()


class LocaleTable:
    """Google locales for one model in one location, and the tags that reach them.

    ``resolve`` gives the locale for a tag, or None: a tag Google does not list is
    refused here rather than sent to be refused by Google.
    """

    def __init__(self, locales: Iterable[str], *, source: str) -> None:
        self.locales = frozenset(locales)
        self.source = source
        """Where the table came from (``"Locations API"`` or ``"fallback"``), for logs."""
        self._by_key = {_key(locale): locale for locale in self.locales}

    @classmethod
    def from_metadata(cls, metadata: Any, model: str) -> LocaleTable:
        """The locales a ``LocationsMetadata`` lists for ``model``."""
        models = metadata.languages.models
        return cls(
            (locale for locale, entry in models.items() if model in entry.model_features),
            source="Locations API",
        )

    def resolve(self, tag: str) -> str | None:
        """The locale for ``tag`` (``en``, ``en-GB``, ``zh-TW``), or None."""
        exact = self._by_key.get(_key(tag))
        if exact is not None:
            return exact
        parts = _key(tag).split("-")
        language = GOOGLE_LANGUAGE.get(parts[0], parts[0])
        if len(parts) == 1:
            preferred = PREFERRED.get(parts[0])
            if preferred is not None and _key(preferred) in self._by_key:
                return self._by_key[_key(preferred)]
            same = [loc for key, loc in self._by_key.items() if key.split("-")[0] == language]
            return min(same, default=None)
        region = parts[-1]
        matches = [
            locale
            for key, locale in self._by_key.items()
            if key.split("-")[0] == language and key.split("-")[-1] == region
        ]
        return min(matches, default=None)

    def languages(self) -> frozenset[str]:
        """Every tag a session may ask for: the primary tags and the locales."""
        primaries = {tag for tag in PREFERRED if self.resolve(tag) is not None}
        spellings: set[str] = set()
        for locale in self.locales:
            primary, *rest = locale.split("-")
            languages = {primary, *(t for t, g in GOOGLE_LANGUAGE.items() if g == primary)}
            primaries.update(languages)
            for language in languages if rest else ():
                # BCP-47's spellings too: he-IL for iw-IL, zh-TW for cmn-Hant-TW.
                spellings.update({f"{language}-{'-'.join(rest)}", f"{language}-{rest[-1]}"})
        return frozenset(primaries) | self.locales | spellings

    def without(self, locale: str) -> LocaleTable:
        """The table less ``locale`` (which Google refused after all)."""
        return LocaleTable(self.locales - {locale}, source=self.source)
