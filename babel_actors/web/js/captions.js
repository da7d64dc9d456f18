// Captions: the protocol's seqId rules (protocols/README.md, "seqId") and their display.
// Finals are settled and kept in order; one partial at a time is shown, replaced in
// place, and dropped once a final at or past it arrives. Only finals are announced to
// screen readers: they go into a polite live region, the partial stays outside it.

const MAX_SHOWN_FINALS = 200;

/** What the page holds of a session's captions; pure logic, no DOM. */
export class CaptionStore {
  constructor() {
    this.finals = [];
    this.partial = null;
    this.lastFinalSeq = -1;
  }

  /**
   * Take one `translation` message. Returns "final", "partial", or "ignored" (a replay
   * already held, or a partial older than the one shown).
   */
  apply(message) {
    if (message.seqId <= this.lastFinalSeq) return "ignored";
    if (!message.isPartial) {
      this.finals.push(message);
      this.lastFinalSeq = message.seqId;
      if (this.partial && this.partial.seqId <= message.seqId) this.partial = null;
      return "final";
    }
    if (this.partial && message.seqId < this.partial.seqId) return "ignored";
    this.partial = message;
    return "partial";
  }

  /** A new session numbers from scratch (a solo user's reconnect): keep what is shown. */
  restartNumbering() {
    this.lastFinalSeq = -1;
    this.partial = null;
  }

  /** The resume point for `lastSeq`, or null when no final is held. */
  get resumeFrom() {
    return this.lastFinalSeq >= 0 ? this.lastFinalSeq : null;
  }
}

/**
 * Renders a CaptionStore into `root`, which holds `[data-finals]` (the live region) and
 * `[data-partial]`. `showOriginal` adds the source text under each translation;
 * `readingMode` shows finals only.
 */
export class CaptionView {
  constructor(root, { showOriginal = false, readingMode = false, onFinal = () => {} } = {}) {
    this.root = root;
    this.scroller = root.closest("[data-scroller]") || root;
    this.finalsList = root.querySelector("[data-finals]");
    this.partialLine = root.querySelector("[data-partial]");
    this.empty = root.querySelector("[data-empty]");
    this.jump = document.querySelector("[data-jump-live]");
    this.showOriginal = showOriginal;
    this.readingMode = readingMode;
    this.onFinal = onFinal;
    this.store = new CaptionStore();
    this.pinned = true;
    this.scroller.addEventListener("scroll", () => this.noteScroll(), { passive: true });
    if (this.jump) this.jump.addEventListener("click", () => this.scrollToLive(true));
    this.renderPartial();
  }

  /** Take a `translation` message; returns what the store made of it. */
  take(message) {
    const wasPinned = this.isAtBottom();
    const kind = this.store.apply(message);
    if (kind === "final") {
      this.appendFinal(message);
      this.onFinal(message);
    }
    if (kind !== "ignored") {
      this.renderPartial();
      this.afterChange(wasPinned);
    }
    return kind;
  }

  setReadingMode(on) {
    this.readingMode = on;
    this.root.classList.toggle("is-reading", on);
    this.renderPartial();
  }

  setShowOriginal(on) {
    this.showOriginal = on;
    this.root.classList.toggle("show-original", on);
  }

  appendFinal(message) {
    const item = document.createElement("li");
    item.className = "caption caption--final";
    item.dataset.seq = String(message.seqId);
    const text = document.createElement("p");
    text.className = "caption__text";
    text.lang = message.targetLang;
    text.textContent = message.translatedText;
    item.append(text);
    const differs = message.translatedText !== message.originalText;
    if (differs) {
      const original = document.createElement("p");
      original.className = "caption__original";
      original.lang = message.sourceLang;
      original.textContent = message.originalText;
      item.append(original);
    }
    if (!message.hasTranslation && message.targetLang !== message.sourceLang) {
      item.classList.add("caption--untranslated");
      const flag = document.createElement("span");
      flag.className = "caption__flag";
      flag.textContent = "not translated";
      item.append(flag);
    }
    this.finalsList.append(item);
    while (this.finalsList.children.length > MAX_SHOWN_FINALS) {
      this.finalsList.firstElementChild.remove();
    }
    if (this.empty) this.empty.hidden = true;
  }

  renderPartial() {
    const partial = this.readingMode ? null : this.store.partial;
    const line = this.partialLine;
    if (!partial) {
      line.hidden = true;
      line.textContent = "";
      delete line.dataset.seq;
      return;
    }
    line.hidden = false;
    line.dataset.seq = String(partial.seqId);
    line.lang = partial.hasTranslation ? partial.targetLang : partial.sourceLang;
    line.classList.toggle("is-source", !partial.hasTranslation);
    line.textContent = partial.translatedText;
    if (this.empty) this.empty.hidden = true;
  }

  isAtBottom() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 48;
  }

  noteScroll() {
    this.pinned = this.isAtBottom();
    if (this.jump && this.pinned) this.jump.hidden = true;
  }

  afterChange(wasPinned) {
    if (wasPinned || this.pinned) {
      this.scrollToLive(false);
    } else if (this.jump) {
      this.jump.hidden = false;
    }
  }

  scrollToLive(smooth) {
    this.pinned = true;
    if (this.jump) this.jump.hidden = true;
    const reduce = window.matchMedia("(prefers-reduced-motion: reduce)").matches;
    this.scroller.scrollTo({
      top: this.scroller.scrollHeight,
      behavior: smooth && !reduce ? "smooth" : "auto",
    });
  }
}
