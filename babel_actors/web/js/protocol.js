// One WebSocket to /translate that comes back by itself: it reconnects after a drop
// with growing, jittered delays (at once when the browser comes back online), keeps the
// connection alive with pings, and notices a connection that went silent.

const PING_EVERY_MS = 15000;
const SILENT_AFTER_MS = 40000;
const OPEN_TIMEOUT_MS = 10000;
const FIRST_RETRY_MS = 500;
const MAX_RETRY_MS = 10000;

/**
 * States: "connecting" (first attempt), "open", "reconnecting", "closed" (stopped by
 * the page: ended or failed for good).
 *
 * `url()` is called for every attempt, so a resume position (lastSeq) or a changed
 * language goes into the next connection. `onMessage(message)` gets each JSON message;
 * `onOpen()` runs on each new connection; `onStateChange(state, detail)` on changes.
 */
export class LiveSocket {
  constructor({ url, onMessage, onOpen = () => {}, onStateChange = () => {} }) {
    this.url = url;
    this.onMessage = onMessage;
    this.onOpen = onOpen;
    this.onStateChange = onStateChange;
    this.state = "idle";
    this.ws = null;
    this.attempt = 0;
    this.stopped = false;
    this.retryTimer = null;
    this.pingTimer = null;
    this.openTimer = null;
    this.lastHeard = 0;
    this.wasOpen = false;
    this.handleOnline = () => this.retryNow();
    this.handleVisible = () => {
      if (document.visibilityState === "visible") this.retryNow();
    };
  }

  start() {
    this.stopped = false;
    window.addEventListener("online", this.handleOnline);
    document.addEventListener("visibilitychange", this.handleVisible);
    this.connect();
  }

  /** Close for good (session ended, fatal error, user left). */
  stop(code = 1000, reason = "") {
    this.stopped = true;
    window.removeEventListener("online", this.handleOnline);
    document.removeEventListener("visibilitychange", this.handleVisible);
    this.clearTimers();
    clearTimeout(this.retryTimer);
    const ws = this.ws;
    this.ws = null;
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(code, reason);
    this.setState("closed");
  }

  get isOpen() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  /** Bytes queued in the browser and not yet sent (a slow uplink shows here). */
  get buffered() {
    return this.ws ? this.ws.bufferedAmount : 0;
  }

  send(message) {
    if (!this.isOpen) return false;
    this.ws.send(JSON.stringify(message));
    return true;
  }

  sendBinary(data) {
    if (!this.isOpen) return false;
    this.ws.send(data);
    return true;
  }

  /** Drop the current connection and open a new one now (it resumes like a drop). */
  reconnect() {
    if (this.ws) this.ws.close(4000, "reconnect");
  }

  connect() {
    if (this.stopped) return;
    this.setState(this.wasOpen ? "reconnecting" : "connecting");
    let ws;
    try {
      ws = new WebSocket(this.url());
    } catch (error) {
      this.setState("closed", { message: String(error.message || error) });
      return;
    }
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this.openTimer = setTimeout(() => ws.close(), OPEN_TIMEOUT_MS);
    ws.onopen = () => {
      clearTimeout(this.openTimer);
      this.attempt = 0;
      this.wasOpen = true;
      this.lastHeard = Date.now();
      this.pingTimer = setInterval(() => this.keepAlive(), PING_EVERY_MS);
      this.setState("open");
      this.onOpen();
    };
    ws.onmessage = (event) => {
      this.lastHeard = Date.now();
      if (typeof event.data !== "string") return;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if (message && typeof message.type === "string") this.onMessage(message);
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.clearTimers();
      if (this.stopped) return;
      this.scheduleRetry(event);
    };
  }

  keepAlive() {
    if (Date.now() - this.lastHeard > SILENT_AFTER_MS) {
      this.ws.close(4000, "silent");
      return;
    }
    this.send({ type: "ping", timestamp: Date.now() });
  }

  scheduleRetry(event) {
    const delay = Math.min(MAX_RETRY_MS, FIRST_RETRY_MS * 2 ** this.attempt);
    this.attempt += 1;
    this.setState(this.wasOpen ? "reconnecting" : "connecting", {
      code: event.code,
      retryInMs: delay,
    });
    this.retryTimer = setTimeout(() => this.connect(), delay * (0.7 + Math.random() * 0.6));
  }

  retryNow() {
    if (this.stopped || this.ws !== null) return;
    clearTimeout(this.retryTimer);
    this.connect();
  }

  clearTimers() {
    clearTimeout(this.openTimer);
    clearInterval(this.pingTimer);
  }

  setState(state, detail = {}) {
    const changed = state !== this.state;
    this.state = state;
    if (changed || detail.code !== undefined) this.onStateChange(state, detail);
  }
}
