// The host page: start a session, show its code, QR code and link, stream the
// microphone, show the transcript and who is listening in which language.

import { KeyField, UNAUTHORIZED } from "./apikey.js";
import { CaptionView } from "./captions.js";
import { Microphone } from "./capture.js";
import { fillLanguageSelect, nativeName, preferredLanguage } from "./languages.js";
import { LiveSocket } from "./protocol.js";
import { qrSvg } from "./qrcode.js";
import { api, languageOffer, socketUrl } from "./server.js";
import { downloadTranscript } from "./transcript.js";
import { $, copyText, flashLabel, setStatus, setUpPrefs, showAlert } from "./ui.js";

const SESSION_KEY = "babel.hostSession";
const POLICY_VIOLATION = 1008;
const MAX_BUFFERED_BYTES = 512 * 1024;
const QUIET_LEVEL = 0.12;
const QUIET_NOTE_MS = 8000;
const SLOW_RETRIES = 4;

setUpPrefs();

const sourceSelect = $("[data-source-lang]");
const startButton = $("[data-start-session]");
const keyField = new KeyField();
const setupError = $("[data-setup-error]");
const liveError = $("[data-live-error]");
const micButton = $("[data-mic]");
const micLabel = $("[data-mic-label]");
const micIcon = $("[data-mic-icon]");
const micNote = $("[data-mic-note]");
const meter = $("[data-meter]");
const meterFill = $("[data-meter-fill]");

let session = null;
let socket = null;
let view = null;
let initSentOn = null;
let ended = false;
let lastHeardVoice = 0;
let droppedChunks = 0;

const microphone = new Microphone({
  onChunk: sendAudio,
  onLevel: showLevel,
  onEnded: () => {
    updateMic();
    showAlert(liveError, "The microphone was disconnected. Plug it back in, then start it again.");
  },
});

// --- Setting up --------------------------------------------------------------------------

function loadStoredSession() {
  try {
    return JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null");
  } catch {
    return null;
  }
}

function storeSession(value) {
  try {
    if (value) sessionStorage.setItem(SESSION_KEY, JSON.stringify(value));
    else sessionStorage.removeItem(SESSION_KEY);
  } catch {
    // A reload then starts a new session instead of resuming this one.
  }
}

async function setUp() {
  try {
    const offer = await languageOffer();
    fillLanguageSelect(sourceSelect, offer.speech, preferredLanguage(offer.speech, offer.speech[0]));
    showAlert(setupError, "");
  } catch (error) {
    fillLanguageSelect(sourceSelect, ["en"], "en");
    showAlert(setupError, error.message);
    setStatus("error", "Server unreachable");
  }
}

$("[data-start-form]").addEventListener("submit", async (event) => {
  event.preventDefault();
  startButton.disabled = true;
  showAlert(setupError, "");
  try {
    const started = await api.startSession(sourceSelect.value || undefined, keyField.current());
    keyField.accepted();
    session = {
      sessionId: started.sessionId,
      sessionCode: started.sessionCode,
      wsUrl: started.wsUrl,
      sourceLang: started.sourceLang || sourceSelect.value,
    };
    storeSession(session);
    enterConsole();
  } catch (error) {
    if (error.status === UNAUTHORIZED) {
      showAlert(setupError, keyField.refused());
      setStatus("error", "API key needed");
    } else {
      showAlert(setupError, error.message);
      setStatus("error", error.unreachable ? "Server unreachable" : "Problem");
    }
  } finally {
    startButton.disabled = false;
  }
});

// --- The console ------------------------------------------------------------------------

function joinLink() {
  return new URL(`listen.html?code=${encodeURIComponent(session.sessionCode)}`, location.href).href;
}

function enterConsole() {
  ended = false;
  $("[data-setup-view]").hidden = true;
  $("[data-live-view]").hidden = false;
  $("[data-code]").textContent = session.sessionCode;
  $("[data-code]").setAttribute("aria-label", `Join code ${session.sessionCode.split("").join(" ")}`);
  $("[data-chip-code]").textContent = session.sessionCode;
  $("[data-session-chip]").hidden = false;
  document.title = `${session.sessionCode} · Hosting · Babel Live`;
  const link = joinLink();
  const anchor = $("[data-join-link]");
  anchor.href = link;
  anchor.textContent = link.replace(/^https?:\/\//, "");
  const qr = qrSvg(link, { label: `QR code to join session ${session.sessionCode}` });
  $("[data-qr]").innerHTML = qr;
  $("[data-present-qr]").innerHTML = qr;
  $("[data-present-code]").textContent = session.sessionCode;
  $("[data-present-link]").textContent = link.replace(/^https?:\/\//, "");
  micButton.disabled = false;
  view = new CaptionView($("[data-captions]"), { showOriginal: false });
  renderAudience({ listenerCount: 0, languageCounts: {} });
  socket = new LiveSocket({
    url: () => socketUrl(session.wsUrl),
    onOpen: () => {
      initSentOn = null;
      if (microphone.running) sendInit();
    },
    onMessage: handleMessage,
    onStateChange: handleState,
  });
  socket.start();
  micButton.focus();
}

function handleState(state) {
  if (state === "connecting") setStatus("connecting");
  if (state === "reconnecting") {
    setStatus("reconnecting");
    showAlert(liveError, socket.attempt >= SLOW_RETRIES
      ? "Can't reach the translation server. Still trying; your listeners stay connected for a while."
      : "Connection lost. Reconnecting…", "warn");
  }
}

function handleMessage(message) {
  switch (message.type) {
    case "session_ready":
      showAlert(liveError, "");
      updateMic();
      break;
    case "session_stats":
      renderAudience(message.stats);
      break;
    case "translation":
      view.take(message);
      break;
    case "session_ended":
      endLocally(message.reason === "shutdown"
        ? "The server was shut down, so the session has ended."
        : "The session has ended.");
      break;
    case "error":
      if (message.closing && message.code === POLICY_VIOLATION) {
        endLocally("This session is no longer available. Start a new one to carry on.");
      } else if (!message.closing) {
        showAlert(liveError, message.message, "warn");
      }
      break;
    default:
      break;
  }
}

function renderAudience(stats) {
  const total = stats.listenerCount || 0;
  $("[data-listener-count]").textContent = String(total);
  $("[data-listener-word]").textContent = "listening";
  const counts = Object.entries(stats.languageCounts || {}).sort((a, b) => b[1] - a[1]);
  $("[data-language-counts]").replaceChildren(...counts.map(([lang, count]) => {
    const item = document.createElement("li");
    item.lang = lang;
    item.dataset.lang = lang;
    item.append(nativeName(lang));
    const number = document.createElement("b");
    number.textContent = String(count);
    number.setAttribute("aria-label", `${count} listening`);
    item.append(number);
    return item;
  }));
  $("[data-no-listeners]").hidden = counts.length > 0;
}

// --- Microphone -------------------------------------------------------------------------

function sendInit() {
  if (socket.send({ type: "init", sourceLang: session.sourceLang, sampleRate: microphone.sampleRate })) {
    initSentOn = socket.ws;
  }
}

function sendAudio(pcm) {
  if (!socket || !socket.isOpen || initSentOn !== socket.ws) return;
  if (socket.buffered > MAX_BUFFERED_BYTES) {
    droppedChunks += 1;
    micNote.textContent = "Your connection is too slow: some audio is being skipped.";
    return;
  }
  socket.sendBinary(pcm);
}

function showLevel(level) {
  meterFill.style.setProperty("--level", level.toFixed(3));
  meter.setAttribute("aria-valuenow", String(Math.round(level * 100)));
  if (!microphone.running) return;
  const now = Date.now();
  if (level > QUIET_LEVEL) lastHeardVoice = now;
  if (droppedChunks > 0) return;
  micNote.textContent = now - lastHeardVoice > QUIET_NOTE_MS
    ? "It's very quiet. Check that the right microphone is selected and not muted."
    : "Listening. Speak as you normally would.";
}

function updateMic() {
  const on = microphone.running;
  micButton.setAttribute("aria-pressed", String(on));
  micLabel.textContent = on ? "Stop microphone" : "Start microphone";
  micIcon.setAttribute("href", on ? "img/icons.svg#stop" : "img/icons.svg#mic");
  if (!on) {
    micNote.textContent = ended
      ? "The session has ended. Start a new one to speak again."
      : "The microphone is off. Your audience sees captions once you speak.";
  }
  if (ended) return;
  if (socket && socket.isOpen) setStatus("live", on ? "On air" : "Ready");
}

micButton.addEventListener("click", async () => {
  if (microphone.running) {
    socket.send({ type: "audio_end" });
    microphone.stop();
    updateMic();
    return;
  }
  micButton.disabled = true;
  showAlert(liveError, "");
  try {
    await microphone.start();
    lastHeardVoice = Date.now();
    droppedChunks = 0;
    if (socket.isOpen) sendInit();
  } catch (error) {
    showAlert(liveError, error.message);
  } finally {
    micButton.disabled = ended;
    updateMic();
  }
});

// --- Sharing and ending -----------------------------------------------------------------

$("[data-copy-link]").addEventListener("click", async (event) => {
  const button = event.currentTarget;
  flashLabel(button, (await copyText(joinLink())) ? "Copied" : "Copy failed");
});

const presentDialog = $("[data-present-dialog]");
$("[data-present]").addEventListener("click", () => presentDialog.showModal());
$("[data-close-present]").addEventListener("click", () => presentDialog.close());

$("[data-download-host]").addEventListener("click", () => {
  downloadTranscript(view.store.finals, "txt", `babel-${session.sessionCode}-${session.sourceLang}`, {
    title: `Session ${session.sessionCode} · ${nativeName(session.sourceLang)} · ${new Date().toLocaleDateString()}`,
  });
});

const endDialog = $("[data-end-dialog]");
$("[data-end-session]").addEventListener("click", () => {
  if (ended) {
    storeSession(null);
    location.reload();
    return;
  }
  endDialog.showModal();
});
$("[data-cancel-end]").addEventListener("click", () => endDialog.close());
$("[data-confirm-end]").addEventListener("click", () => {
  endDialog.close();
  if (microphone.running) socket.send({ type: "audio_end" });
  endLocally("You ended the session. Your listeners have been told.");
});

function endLocally(text) {
  ended = true;
  microphone.stop();
  socket.stop(1000, "host ended the session");
  storeSession(null);
  updateMic();
  micButton.disabled = true;
  setStatus("ended");
  showAlert(liveError, text, "info");
  const endButton = $("[data-end-session]");
  endButton.textContent = "Start a new session";
  endButton.classList.remove("button--danger");
  endButton.classList.add("button--primary");
}

// --- Start ------------------------------------------------------------------------------

const stored = loadStoredSession();
if (stored && stored.sessionId && stored.wsUrl) {
  session = stored;
  enterConsole();
} else {
  setUp();
}
