// Small shared pieces of the pages: the connection status pill, alerts, the theme
// button, copying text.

import { Prefs, THEME_NAMES } from "./prefs.js";

const STATES = {
  idle: "Not connected",
  connecting: "Connecting…",
  live: "Live",
  waiting: "Connected",
  reconnecting: "Reconnecting…",
  ended: "Ended",
  error: "Problem",
};

export function $(selector, root = document) {
  const element = root.querySelector(selector);
  if (!element) throw new Error(`page is missing ${selector}`);
  return element;
}

/** Show a connection state in the page's `[data-status]` pill. */
export function setStatus(state, text) {
  const pill = document.querySelector("[data-status]");
  if (!pill) return;
  pill.dataset.state = state;
  $("[data-status-text]", pill).textContent = text || STATES[state] || state;
  document.body.dataset.connection = state;
}

/** Show `message` in an alert element, or hide it when `message` is empty. */
export function showAlert(element, message, tone = "error") {
  element.hidden = !message;
  element.textContent = message || "";
  element.dataset.tone = tone;
}

/** Preferences for this page, with the theme and text-size buttons wired up. */
export function setUpPrefs(defaults) {
  const prefs = new Prefs(defaults);
  const button = document.querySelector("[data-theme-button]");
  if (button) {
    const label = () => {
      const name = THEME_NAMES[prefs.get("theme")];
      button.setAttribute("aria-label", `Theme: ${name}. Change theme`);
      button.title = `Theme: ${name}`;
    };
    label();
    button.addEventListener("click", () => {
      prefs.nextTheme();
      label();
    });
  }
  const smaller = document.querySelector("[data-smaller]");
  const larger = document.querySelector("[data-larger]");
  if (smaller && larger) {
    const update = () => {
      smaller.disabled = prefs.atSmallest;
      larger.disabled = prefs.atLargest;
    };
    for (const [button, step] of [[smaller, -1], [larger, 1]]) {
      button.addEventListener("click", () => {
        prefs.resize(step);
        update();
      });
    }
    update();
  }
  return prefs;
}

export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    return false;
  }
}

/** Briefly replace a button's label, e.g. "Copied". */
export function flashLabel(button, text, ms = 1600) {
  const label = button.querySelector("[data-label]") || button;
  const before = label.textContent;
  label.textContent = text;
  setTimeout(() => {
    label.textContent = before;
  }, ms);
}
