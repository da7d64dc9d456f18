// The solo page: speak in one language, read yourself in another. A solo connection
// is a private session; after a drop the page opens a new one and carries on.

import { KeyField, UNAUTHORIZED } from "./apikey.js";
import { CaptionView } from "./captions.js";
import { Microphone } from "./capture.js";
import { fillLanguageSelect, nativeName, preferredLanguage } from "./languages.js";
import { LiveSocket } from "./protocol.js";
import { languageOffer, socketUrl } from "./server.js";
import { Speaker, canSpeak } from "./speech.js";
import { downloadTranscript } from "./transcript.js";
import { $, setStatus, setUpPrefs, showAlert } from "./ui.js";

const TARGET_KEY = "babel.soloTarget";

const prefs = setUpPrefs();
const speaker = new Speaker();
const sourceSelect = $("[data-source]");
const targetSelect = $("[data-target]");
const micButton = $("[data-mic]");
const micLabel = $("[data-mic-label]");
const micIcon = $("[data-mic-icon]");
const micNote = $("[data-mic-note]");
const meter = $("[data-meter]");
const meterFill = $("[data-meter-fill]");
const errorBox = $("[data-error]");
const keyField = new KeyField();

let offer = null;
let socket = null;
let sessionId = null;
let initSentOn = null;

const view = new CaptionView($("[data-captions]"), {
  showOriginal: true,
  readingMode: prefs.get("reading"),
  onFinal: (final) => speaker.say(final.translatedText, final.targetLang),
});
view.setReadingMode(prefs.get("reading"));

const microphone = new Microphone({
  onChunk: (pcm) => {
    if (socket && socket.isOpen && initSentOn === socket.ws) socket.sendBinary(pcm);
  },
  onLevel: (level) => {
    meterFill.style.setProperty("--level", level.toFixed(3));
    meter.setAttribute("aria-valuenow", String(Math.round(level * 100)));
  },
  onEnded: () => stop("The microphone was disconnected."),
});

function fillTargets() {
  const codes = offer.targetsOf(sourceSelect.value).filter((lang) => lang !== sourceSelect.value);
  let stored = null;
  try {
    stored = localStorage.getItem(TARGET_KEY);
  } catch {
    stored = null;
  }
  const current = targetSelect.value;
  const chosen = codes.includes(current) ? current : codes.includes(stored) ? stored : codes[0];
  fillLanguageSelect(targetSelect, codes.length ? codes : [sourceSelect.value], chosen);
}

function sendInit() {
  const sent = socket.send({
    type: "init",
    sourceLang: sourceSelect.value,
    targetLang: targetSelect.value,
    sampleRate: microphone.sampleRate,
  });
  if (sent) initSentOn = socket.ws;
}

/** The solo socket's path; a key rides in the query, as a browser cannot set headers. */
function soloPath() {
  const query = new URLSearchParams({ targetLang: targetSelect.value });
  const key = keyField.current();
  if (key) query.set("apiKey", key);
  return `/translate?${query}`;
}

function connect() {
  socket = new LiveSocket({
    url: () => socketUrl(soloPath()),
    onOpen: () => {
      initSentOn = null;
      sendInit();
    },
    onMessage: (message) => {
      if (message.type === "session_ready") {
        if (sessionId !== null && message.sessionId !== sessionId) view.store.restartNumbering();
        sessionId = message.sessionId;
        keyField.accepted();
        setStatus("live", microphone.running ? "Listening" : "Ready");
        showAlert(errorBox, "");
      } else if (message.type === "translation") {
        view.take(message);
      } else if (message.type === "error" && message.status === UNAUTHORIZED) {
        refused();
      } else if (message.type === "error") {
        showAlert(errorBox, message.message, message.closing ? "error" : "warn");
      }
    },
    onStateChange: (state) => {
      if (state === "connecting") setStatus("connecting");
      if (state === "reconnecting") setStatus("reconnecting");
    },
  });
  socket.start();
}

/** The server wants a (different) key: stop, and ask for one. */
function refused() {
  socket.stop();
  socket = null;
  microphone.stop();
  updateMic();
  setStatus("error", "API key needed");
  showAlert(errorBox, keyField.refused());
}

function updateMic() {
  const on = microphone.running;
  micButton.setAttribute("aria-pressed", String(on));
  micLabel.textContent = on ? "Stop" : "Start speaking";
  micIcon.setAttribute("href", on ? "img/icons.svg#stop" : "img/icons.svg#mic");
  micNote.textContent = on
    ? "Listening. Speak in short sentences for the best translation."
    : "Press start, then speak. Only you see the translation.";
  if (socket && socket.isOpen) setStatus("live", on ? "Listening" : "Ready");
}

function stop(note) {
  if (socket) socket.send({ type: "audio_end" });
  microphone.stop();
  updateMic();
  if (note) showAlert(errorBox, note);
}

async function startSpeaking() {
  micButton.disabled = true;
  showAlert(errorBox, "");
  try {
    await microphone.start();
    if (!socket) connect();
    else if (socket.isOpen) sendInit();
  } catch (error) {
    showAlert(errorBox, error.message);
  } finally {
    micButton.disabled = false;
    updateMic();
  }
}

micButton.addEventListener("click", () => {
  if (microphone.running) stop();
  else startSpeaking();
});

$("[data-key-form]").addEventListener("submit", (event) => {
  event.preventDefault();
  if (!microphone.running) startSpeaking();
  else if (socket) socket.reconnect();
});

sourceSelect.addEventListener("change", () => {
  fillTargets();
  if (socket && socket.isOpen && microphone.running) sendInit();
});

targetSelect.addEventListener("change", () => {
  try {
    localStorage.setItem(TARGET_KEY, targetSelect.value);
  } catch {
    // Not remembered.
  }
  if (socket && socket.isOpen && microphone.running) sendInit();
});

// --- Display ------------------------------------------------------------------------------

const readingButton = $("[data-reading]");
readingButton.setAttribute("aria-pressed", String(prefs.get("reading")));
readingButton.addEventListener("click", () => {
  const on = !prefs.get("reading");
  prefs.set("reading", on);
  readingButton.setAttribute("aria-pressed", String(on));
  view.setReadingMode(on);
});

const speakButton = $("[data-speak]");
speakButton.hidden = !canSpeak;
speaker.setEnabled(prefs.get("speak"));
speakButton.setAttribute("aria-pressed", String(speaker.enabled));
speakButton.addEventListener("click", () => {
  speaker.setEnabled(!speaker.enabled);
  prefs.set("speak", speaker.enabled);
  speakButton.setAttribute("aria-pressed", String(speaker.enabled));
});

$("[data-download]").addEventListener("click", () => {
  const names = `${nativeName(sourceSelect.value)} → ${nativeName(targetSelect.value)}`;
  downloadTranscript(view.store.finals, "txt", `babel-solo-${targetSelect.value}`, {
    title: `Solo translation · ${names} · ${new Date().toLocaleDateString()}`,
  });
});

// --- Start ------------------------------------------------------------------------------

languageOffer()
  .then((languages) => {
    offer = languages;
    fillLanguageSelect(sourceSelect, offer.speech, preferredLanguage(offer.speech, offer.speech[0]));
    fillTargets();
  })
  .catch((error) => {
    setStatus("error", "Server unreachable");
    showAlert(errorBox, error.message);
    micButton.disabled = true;
  });
