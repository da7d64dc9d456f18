// "Speak it": read final translations aloud with the browser's own speech synthesis
// (nothing is sent anywhere). The queue never grows beyond a couple of sentences: a
// reader who falls behind skips ahead rather than lagging further and further.

const MAX_QUEUED = 2;

export const canSpeak = typeof window !== "undefined" && "speechSynthesis" in window;

export class Speaker {
  constructor() {
    this.enabled = false;
    this.queued = 0;
  }

  setEnabled(on) {
    this.enabled = on && canSpeak;
    if (!this.enabled && canSpeak) {
      speechSynthesis.cancel();
      this.queued = 0;
    }
  }

  /** Speak `text` in `lang` (a BCP 47 tag), with a matching voice when there is one. */
  say(text, lang) {
    if (!this.enabled || !text) return;
    if (this.queued >= MAX_QUEUED) {
      speechSynthesis.cancel();
      this.queued = 0;
    }
    const utterance = new SpeechSynthesisUtterance(text);
    utterance.lang = lang;
    const prefix = lang.toLowerCase();
    const voice = speechSynthesis.getVoices().find((v) => v.lang.toLowerCase().startsWith(prefix));
    if (voice) utterance.voice = voice;
    utterance.onend = () => {
      this.queued = Math.max(0, this.queued - 1);
    };
    utterance.onerror = utterance.onend;
    this.queued += 1;
    speechSynthesis.speak(utterance);
  }
}
