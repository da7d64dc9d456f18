// The transcript of what was said, as plain text and as subtitles (SRT, WebVTT): each
// final's translation, with the source text when it differs.

const MIN_CUE_MS = 1500;
const MAX_CUE_MS = 7000;
const MS_PER_CHARACTER = 60;

function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

function stamp(ms, separator) {
  const total = Math.max(0, Math.round(ms));
  const h = Math.floor(total / 3600000);
  const m = Math.floor(total / 60000) % 60;
  const s = Math.floor(total / 1000) % 60;
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(h)}:${pad(m)}:${pad(s)}${separator}${pad(total % 1000, 3)}`;
}

/**
 * Cues from finals: each starts when its final arrived (relative to the first) and stays
 * until the next one, as it did on screen, but no longer than MAX_CUE_MS; the last one
 * stays as long as it takes to read.
 */
function cues(finals) {
  if (finals.length === 0) return [];
  const origin = finals[0].serverTimestamp;
  return finals.map((final, i) => {
    const start = final.serverTimestamp - origin;
    const reading = Math.min(MAX_CUE_MS, Math.max(MIN_CUE_MS,
      final.translatedText.length * MS_PER_CHARACTER));
    const shown = i + 1 < finals.length
      ? Math.min(MAX_CUE_MS, finals[i + 1].serverTimestamp - origin - start)
      : reading;
    const end = start + Math.max(MIN_CUE_MS / 3, shown);
    const lines = [final.translatedText];
    if (final.originalText !== final.translatedText) lines.push(final.originalText);
    return { start, end, lines };
  });
}

export function toText(finals, { title = "Transcript" } = {}) {
  const lines = [title, ""];
  for (const final of finals) {
    lines.push(`[${clock(final.serverTimestamp)}]`);
    if (final.originalText !== final.translatedText) {
      lines.push(`${final.sourceLang}: ${final.originalText}`);
      lines.push(`${final.targetLang}: ${final.translatedText}`);
    } else {
      lines.push(final.translatedText);
    }
    lines.push("");
  }
  return lines.join("\n");
}

export function toSrt(finals) {
  return cues(finals)
    .map((cue, i) => [
      String(i + 1),
      `${stamp(cue.start, ",")} --> ${stamp(cue.end, ",")}`,
      ...cue.lines.map((line, n) => (n === 0 ? line : `<i>${line}</i>`)),
      "",
    ].join("\n"))
    .join("\n");
}

export function toVtt(finals) {
  const escape = (text) => text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  const body = cues(finals).map((cue) => [
    `${stamp(cue.start, ".")} --> ${stamp(cue.end, ".")}`,
    ...cue.lines.map((line, n) => (n === 0 ? escape(line) : `<i>${escape(line)}</i>`)),
    "",
  ].join("\n"));
  return ["WEBVTT", "", ...body].join("\n");
}

const FORMATS = {
  txt: { build: toText, type: "text/plain" },
  srt: { build: toSrt, type: "application/x-subrip" },
  vtt: { build: toVtt, type: "text/vtt" },
};

/** Save the transcript as `<name>.<format>` through the browser's download. */
export function downloadTranscript(finals, format, name, options = {}) {
  const { build, type } = FORMATS[format];
  const blob = new Blob([build(finals, options)], { type: `${type};charset=utf-8` });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = `${name}.${format}`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}
