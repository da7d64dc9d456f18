// The server's address and its HTTP API. The address is the page's own origin unless
// config.js sets window.BABEL_SERVER (pages published apart from the server).

const REQUEST_TIMEOUT_MS = 10000;

/** Origin of the babel-actors server, without a trailing slash. */
export function serverOrigin() {
  const configured = String(globalThis.BABEL_SERVER || "").trim().replace(/\/+$/, "");
  return configured || location.origin;
}

/** The WebSocket URL of a server path such as "/translate?role=host&...". */
export function socketUrl(path) {
  const url = new URL(path, serverOrigin() + "/");
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

/** A failed API call. `status` is 0 when the server could not be reached at all. */
export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }

  get unreachable() {
    return this.status === 0;
  }
}

async function request(method, path, body, headers = {}) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
  let response;
  try {
    response = await fetch(serverOrigin() + path, {
      method,
      headers: body === undefined ? headers : { ...headers, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: controller.signal,
      cache: "no-store",
    });
  } catch {
    throw new ApiError("Can't reach the translation server. Check your connection.", 0);
  } finally {
    clearTimeout(timer);
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok || !data || data.success === false) {
    const message = (data && data.error) || `The server answered ${response.status}.`;
    throw new ApiError(message, response.status);
  }
  return data;
}

export const api = {
  health: () => request("GET", "/health"),
  /** `apiKey` (sent as X-API-Key) when the server asks for one (BABEL_API_KEYS). */
  startSession: (sourceLang, apiKey) =>
    request("POST", "/session/start", { sourceLang }, apiKey ? { "x-api-key": apiKey } : {}),
  joinSession: (sessionCode, targetLang, userName) =>
    request("POST", "/session/join", { sessionCode, targetLang, userName: userName || undefined }),
  sessionInfo: (code) => request("GET", `/session/${encodeURIComponent(code)}/info`),
};

/** Languages the server offers: what it recognises, and what each translates into. */
export async function languageOffer() {
  const health = await api.health();
  return {
    speech: health.sttLanguages || ["en"],
    pairs: health.mtPairs || {},
    routes: health.mtRoutes || {},
    targetsOf(source) {
      return [source, ...(this.pairs[source] || []).filter((lang) => lang !== source)];
    },
    /** The languages between `source` and `target` on the server's route (mtRoutes). */
    viaOf(source, target) {
      const route = (this.routes[source] || {})[target] || [];
      return route.slice(1, -1);
    },
  };
}
