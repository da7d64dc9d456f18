// The listener page: join by code (or a link), read captions in a chosen language,
// change language without rejoining, resume after a drop with lastSeq.

import { CaptionView } from "./captions.js";
import { fillLanguageSelect, nativeName, preferredLanguage } from "./languages.js";
import { LiveSocket } from "./protocol.js";
import { api, languageOffer, socketUrl } from "./server.js";
import { Speaker, canSpeak } from "./speech.js";
import { downloadTranscript } from "./transcript.js";
import { $, setStatus, setUpPrefs, showAlert } from "./ui.js";

const LANGUAGE_KEY = "babel.listenerLanguage";
const POLICY_VIOLATION = 1008;
const SLOW_RETRIES = 4;
const CATCH_UP_MS = 1500;

const prefs = setUpPrefs();
const speaker = new Speaker();
const params = new URLSearchParams(location.search);

const form = $("[data-join-form]");
const codeInput = $("#join-code");
const joinLang = $("[data-join-lang]");
const nameInput = $("#join-name");
const joinError = $("[data-join-error]");
const joinButton = $("[data-join-button]");
const readerLang = $("[data-lang]");
const banner = $("[data-banner]");

let offer = null;
let lookup = 0;
let session = null;
let language = null;
let socket = null;
let view = null;
let joinedAt = 0;

// --- Joining ---------------------------------------------------------------------------

function storedLanguage() {
  try {
    return localStorage.getItem(LANGUAGE_KEY);
  } catch {
    return null;
  }
}

function rememberLanguage(lang) {
  try {
    localStorage.setItem(LANGUAGE_KEY, lang);
  } catch {
    // Not remembered: the menu still works.
  }
}

async function ensureOffer() {
  if (!offer) offer = await languageOffer();
  return offer;
}

async function lookUp(code) {
  const ticket = ++lookup;
  joinLang.disabled = true;
  try {
    const [{ session: info }, languages] = await Promise.all([api.sessionInfo(code), ensureOffer()]);
    if (ticket !== lookup) return;
    const codes = languages.targetsOf(info.sourceLang);
    const wanted = params.get("lang") || storedLanguage();
    const fallback = codes.find((lang) => lang !== info.sourceLang) || info.sourceLang;
    const chosen = codes.includes(wanted) ? wanted : preferredLanguage(codes, fallback);
    fillLanguageSelect(joinLang, codes, chosen, (lang) => languages.viaOf(info.sourceLang, lang));
    joinLang.disabled = false;
    showAlert(joinError, "");
  } catch (error) {
    if (ticket !== lookup) return;
    joinLang.replaceChildren(new Option("Enter the code first", ""));
    showAlert(joinError, error.status === 404
      ? "No live session has this code. Check it with the speaker and try again."
      : error.message);
  }
}

function normalizeCode() {
  const code = codeInput.value.toUpperCase().replace(/[^A-Z0-9]/g, "").slice(0, 6);
  codeInput.value = code;
  return code;
}

codeInput.addEventListener("input", () => {
  const code = normalizeCode();
  if (code.length === 6) {
    lookUp(code);
  } else {
    lookup += 1;
    joinLang.disabled = true;
    showAlert(joinError, "");
  }
});

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const code = normalizeCode();
  if (code.length !== 6) {
    showAlert(joinError, "The session code has 6 letters and digits.");
    codeInput.focus();
    return;
  }
  joinButton.disabled = true;
  try {
    await join(code, joinLang.value || undefined, nameInput.value.trim());
  } catch (error) {
    showAlert(joinError, error.status === 404
      ? "No live session has this code. Check it with the speaker and try again."
      : error.message);
  } finally {
    joinButton.disabled = false;
  }
});

async function join(code, lang, userName) {
  setStatus("connecting");
  const joined = await api.joinSession(code, lang, userName);
  const languages = await ensureOffer();
  session = { ...joined, userName };
  language = joined.targetLang;
  rememberLanguage(language);
  const url = new URL(location.href);
  url.searchParams.set("code", joined.sessionCode);
  url.searchParams.set("lang", language);
  history.replaceState(null, "", url);
  fillLanguageSelect(readerLang, languages.targetsOf(joined.sourceLang), language, (lang) =>
    languages.viaOf(joined.sourceLang, lang),
  );
  enterReader();
}

// --- Reading -------------------------------------------------------------------------

function socketPath() {
  const query = new URLSearchParams({ role: "listener", sessionId: session.sessionId, targetLang: language });
  if (session.userName) query.set("userName", session.userName);
  const resume = view.store.resumeFrom;
  if (resume !== null) query.set("lastSeq", String(resume));
  return socketUrl(`/translate?${query}`);
}

function enterReader() {
  $("[data-join-view]").hidden = true;
  $("[data-reader-view]").hidden = false;
  $("[data-code]").textContent = session.sessionCode;
  $("[data-session-chip]").hidden = false;
  document.title = `${session.sessionCode} · Live captions`;
  view = new CaptionView($("[data-captions]"), {
    readingMode: prefs.get("reading"),
    showOriginal: prefs.get("original"),
    onFinal: (final) => {
      // What arrives just after joining is catch-up, not news: it is not read out.
      if (performance.now() - joinedAt > CATCH_UP_MS) speaker.say(final.translatedText, final.targetLang);
    },
  });
  view.setReadingMode(prefs.get("reading"));
  view.setShowOriginal(prefs.get("original"));
  socket = new LiveSocket({
    url: socketPath,
    onMessage: handleMessage,
    onStateChange: handleState,
  });
  socket.start();
  $("#captions").focus({ preventScroll: true });
}

function handleState(state) {
  if (state === "connecting") setStatus("connecting");
  if (state === "reconnecting") {
    setStatus("reconnecting");
    const slow = socket.attempt >= SLOW_RETRIES;
    showBanner(slow
      ? "Can't reach the server. Still trying: captions you miss will come back when it answers."
      : "Connection lost. Reconnecting… Nothing will be missed.", "warn");
  }
}

function handleMessage(message) {
  switch (message.type) {
    case "session_joined":
      joinedAt = performance.now();
      setStatus("live");
      hideBanner();
      if (message.resumedFrom !== undefined && message.resumedFrom > (view.store.resumeFrom ?? -1)) {
        showBanner("You were away for a while: some earlier lines are no longer available.", "info");
      }
      break;
    case "translation":
      view.take(message);
      break;
    case "language_changed":
      language = message.targetLang;
      readerLang.value = language;
      rememberLanguage(language);
      break;
    case "session_ended":
      finish("The session has ended. Thank you for following along.");
      break;
    case "error":
      if (message.closing && message.code === POLICY_VIOLATION) {
        finish("This session is no longer available. It may have ended.", "error");
      } else if (!message.closing && language !== readerLang.value) {
        readerLang.value = language;
        showBanner(message.message, "warn");
      }
      break;
    default:
      break;
  }
}

function finish(text, tone = "info") {
  socket.stop();
  setStatus(tone === "error" ? "error" : "ended", tone === "error" ? "Unavailable" : "Ended");
  showBanner(text, tone, [
    actionButton("Download transcript", () => download("txt")),
    actionLink("Join another session", "listen.html"),
  ]);
}

function showBanner(text, tone, actions = []) {
  banner.hidden = false;
  banner.dataset.tone = tone;
  $("[data-banner-text]", banner).textContent = text;
  $("[data-banner-actions]", banner).replaceChildren(...actions);
}

function hideBanner() {
  banner.hidden = true;
}

function actionButton(label, onClick) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "button";
  button.textContent = label;
  button.addEventListener("click", onClick);
  return button;
}

function actionLink(label, href) {
  const link = document.createElement("a");
  link.className = "button";
  link.href = href;
  link.textContent = label;
  return link;
}

function download(format) {
  const names = `${nativeName(session.sourceLang)} → ${nativeName(language)}`;
  downloadTranscript(view.store.finals, format, `babel-${session.sessionCode}-${language}`, {
    title: `Session ${session.sessionCode} · ${names} · ${new Date().toLocaleDateString()}`,
  });
}

// --- Toolbar --------------------------------------------------------------------------

readerLang.addEventListener("change", () => {
  const wanted = readerLang.value;
  rememberLanguage(wanted);
  if (!socket.send({ type: "change_language", targetLang: wanted })) language = wanted;
  const url = new URL(location.href);
  url.searchParams.set("lang", wanted);
  history.replaceState(null, "", url);
});


function pressed(button, on) {
  button.setAttribute("aria-pressed", String(on));
}

const readingButton = $("[data-reading]");
pressed(readingButton, prefs.get("reading"));
readingButton.addEventListener("click", () => {
  const on = !prefs.get("reading");
  prefs.set("reading", on);
  pressed(readingButton, on);
  if (view) view.setReadingMode(on);
});

const speakButton = $("[data-speak]");
speakButton.hidden = !canSpeak;
speaker.setEnabled(prefs.get("speak"));
pressed(speakButton, speaker.enabled);
speakButton.addEventListener("click", () => {
  const on = !speaker.enabled;
  speaker.setEnabled(on);
  prefs.set("speak", on);
  pressed(speakButton, on);
});

const sheet = $("[data-more-sheet]");
$("[data-more]").addEventListener("click", () => sheet.showModal());
$("[data-close-sheet]").addEventListener("click", () => sheet.close());
const originalBox = $("[data-original]");
originalBox.checked = prefs.get("original");
originalBox.addEventListener("change", () => {
  prefs.set("original", originalBox.checked);
  if (view) view.setShowOriginal(originalBox.checked);
});
for (const button of sheet.querySelectorAll("[data-download]")) {
  button.addEventListener("click", () => download(button.dataset.download));
}
$("[data-leave]").addEventListener("click", () => {
  if (socket) socket.stop();
  location.href = "./";
});

// --- Start ------------------------------------------------------------------------------

const linkedCode = (params.get("code") || "").toUpperCase().replace(/[^A-Z0-9]/g, "").slice(0, 6);
if (linkedCode.length === 6) {
  codeInput.value = linkedCode;
  if (params.get("lang")) {
    join(linkedCode, params.get("lang"), "").catch((error) => {
      setStatus("idle");
      showAlert(joinError, error.status === 404
        ? "No live session has this code. It may have ended."
        : error.message);
      lookUp(linkedCode);
    });
  } else {
    lookUp(linkedCode).then(() => joinLang.focus());
  }
} else {
  ensureOffer().catch((error) => showAlert(joinError, error.message));
  codeInput.focus();
}
