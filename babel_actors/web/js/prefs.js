// Reader preferences, kept in localStorage: caption size, theme, reading mode, showing
// the original, speaking translations aloud. Applied to <html> as data attributes and
// a CSS variable, so the stylesheet does the rest.

const KEY = "babel.prefs";
const SIZES = [1.25, 1.5, 1.75, 2, 2.5, 3, 3.5, 4.25];
const THEMES = ["auto", "light", "dark", "contrast"];
const DEFAULTS = { size: 3, theme: "auto", reading: false, original: false, speak: false };

function load() {
  try {
    return { ...DEFAULTS, ...JSON.parse(localStorage.getItem(KEY) || "{}") };
  } catch {
    return { ...DEFAULTS };
  }
}

export const THEME_NAMES = { auto: "Automatic", light: "Light", dark: "Dark", contrast: "High contrast" };

export class Prefs {
  constructor(defaults = {}) {
    this.values = { ...DEFAULTS, ...defaults, ...load() };
    this.listeners = [];
    this.apply();
  }

  get(name) {
    return this.values[name];
  }

  set(name, value) {
    this.values[name] = value;
    try {
      localStorage.setItem(KEY, JSON.stringify(this.values));
    } catch {
      // Private mode or storage full: the choice lasts for this page only.
    }
    this.apply();
    this.listeners.forEach((listener) => listener(name, value));
  }

  onChange(listener) {
    this.listeners.push(listener);
  }

  /** Step the caption size by `delta` steps; returns whether it changed. */
  resize(delta) {
    const next = Math.min(SIZES.length - 1, Math.max(0, this.values.size + delta));
    if (next === this.values.size) return false;
    this.set("size", next);
    return true;
  }

  get atSmallest() {
    return this.values.size === 0;
  }

  get atLargest() {
    return this.values.size === SIZES.length - 1;
  }

  nextTheme() {
    const next = THEMES[(THEMES.indexOf(this.values.theme) + 1) % THEMES.length];
    this.set("theme", next);
    return next;
  }

  apply() {
    const root = document.documentElement;
    const size = SIZES[Math.min(SIZES.length - 1, Math.max(0, Number(this.values.size) || 0))];
    root.style.setProperty("--caption-size", `${size}rem`);
    root.dataset.theme = THEMES.includes(this.values.theme) ? this.values.theme : "auto";
  }
}
