// The home page: join by code, or go to hosting or solo mode.

import { languageOffer } from "./server.js";
import { nativeName } from "./languages.js";
import { setUpPrefs } from "./ui.js";

setUpPrefs();

const form = document.querySelector("[data-join-form]");
const code = form.querySelector("input");
code.addEventListener("input", () => {
  code.value = code.value.toUpperCase().replace(/[^A-Z0-9]/g, "").slice(0, 6);
});

const note = document.querySelector("[data-server-note]");
languageOffer()
  .then((offer) => {
    const targets = new Set(Object.values(offer.pairs).flat());
    offer.speech.forEach((lang) => targets.add(lang));
    const names = [...targets].map(nativeName).sort((a, b) => a.localeCompare(b));
    note.textContent = `Server online · ${names.length} languages: ${names.join(", ")}`;
  })
  .catch(() => {
    note.textContent = "The translation server can't be reached right now.";
  });
