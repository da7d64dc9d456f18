// Language names for menus: each language in its own words ("Español"), so a listener
// finds theirs whatever the page's language.

// Autonyms the browser may not know (its locale data is trimmed on some systems).
const AUTONYMS = {
  an: "Aragonés", ast: "Asturianu", br: "Brezhoneg", eu: "Euskara", gl: "Galego",
  oc: "Occitan", cy: "Cymraeg", ca: "Català", eo: "Esperanto",
};

export function nativeName(code) {
  if (AUTONYMS[code]) return AUTONYMS[code];
  try {
    const name = new Intl.DisplayNames([code], { type: "language" }).of(code);
    if (name && name !== code) return name.charAt(0).toLocaleUpperCase(code) + name.slice(1);
  } catch {
    // An unknown tag: show the code itself.
  }
  return code;
}

/** Fill a <select> with `codes`, selecting `chosen` when it is among them. `viaOf`
 * (optional) names the languages a translation into a code passes through: such an
 * option reads "Português (via Español)", so a listener knows it took two hops. */
export function fillLanguageSelect(select, codes, chosen, viaOf = () => []) {
  select.replaceChildren(
    ...codes.map((code) => {
      const option = document.createElement("option");
      option.value = code;
      const via = viaOf(code);
      option.textContent = via.length
        ? `${nativeName(code)} (via ${via.map(nativeName).join(", ")})`
        : nativeName(code);
      option.dataset.hops = String(via.length + 1);
      option.lang = code;
      return option;
    }),
  );
  if (chosen && codes.includes(chosen)) select.value = chosen;
}

/** The first of the browser's preferred languages that is in `codes`. */
export function preferredLanguage(codes, fallback) {
  for (const tag of navigator.languages || [navigator.language || ""]) {
    const primary = tag.toLowerCase().split("-")[0];
    if (codes.includes(tag)) return tag;
    if (codes.includes(primary)) return primary;
  }
  return fallback;
}
