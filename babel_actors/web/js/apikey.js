// The API key a server may ask for before it starts a session (BABEL_API_KEYS). The
// page sends none until the server refuses (401); then it asks for one, and keeps it in
// localStorage once the server has taken it. The key never goes into the page's URL.

import { $ } from "./ui.js";

const STORAGE_KEY = "babel.apiKey";

/** The HTTP status (and WebSocket `error.status`) of a missing or wrong key. */
export const UNAUTHORIZED = 401;

function savedKey() {
  try {
    return localStorage.getItem(STORAGE_KEY) || "";
  } catch {
    return "";
  }
}

function saveKey(key) {
  try {
    if (key) localStorage.setItem(STORAGE_KEY, key);
    else localStorage.removeItem(STORAGE_KEY);
  } catch {
    // Private mode or storage full: the key is asked for again next time.
  }
}

/**
 * A page's key field: `[data-key-field]` holding the password input `[data-key-input]`
 * (hidden until the server asks for a key), and `[data-key-saved]` with its
 * `[data-forget-key]` button (shown while a key is saved).
 */
export class KeyField {
  constructor(root = document) {
    this.field = $("[data-key-field]", root);
    this.input = $("[data-key-input]", this.field);
    this.saved = $("[data-key-saved]", root);
    this.sent = "";
    this.kept = "";
    $("[data-forget-key]", this.saved).addEventListener("click", () => this.forget());
    this.input.addEventListener("input", () => this.input.removeAttribute("aria-invalid"));
    this.showSaved();
  }

  /** The key to send now (empty: none): what was typed once asked, else the one kept. */
  current() {
    this.sent = this.field.hidden ? savedKey() || this.kept : this.input.value.trim();
    return this.sent;
  }

  /** The server took the key it was sent: keep it, put the field away. */
  accepted() {
    if (!this.field.hidden) saveKey(this.sent);
    this.kept = this.sent;
    this.field.hidden = true;
    this.input.value = "";
    this.input.removeAttribute("aria-invalid");
    this.showSaved();
  }

  /** The server refused (401): ask for a key; returns what to tell the user. */
  refused() {
    const remembered = this.field.hidden && this.sent !== "";
    this.kept = "";
    if (remembered) saveKey("");
    this.showSaved();
    this.ask();
    if (!this.sent) return "This server needs an API key to start a session. Enter it below.";
    this.input.setAttribute("aria-invalid", "true");
    this.input.select();
    return remembered
      ? "The saved API key was not accepted. Enter the current one."
      : "That API key was not accepted. Check it and try again.";
  }

  /** Forget the saved key, and offer the field to enter another. */
  forget() {
    saveKey("");
    this.kept = "";
    this.showSaved();
    this.ask();
  }

  ask() {
    this.field.hidden = false;
    this.input.focus();
  }

  showSaved() {
    this.saved.hidden = savedKey() === "";
  }
}
