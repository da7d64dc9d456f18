// The microphone: getUserMedia into an AudioContext at the device's own rate, and an
// AudioWorklet that hands over 16-bit PCM chunks (sent as binary WebSocket frames after
// an `init` naming that rate). The server resamples, so nothing is resampled here.

const CHUNK_MS = 100;

/** Why the microphone could not start, in words for the person at the device. */
export class MicrophoneError extends Error {
  constructor(message, kind) {
    super(message);
    this.kind = kind;
  }
}

function explain(error) {
  switch (error && error.name) {
    case "NotAllowedError":
    case "SecurityError":
      return new MicrophoneError(
        "Microphone access was blocked. Allow the microphone for this site in your browser's settings, then try again.",
        "permission",
      );
    case "NotFoundError":
    case "OverconstrainedError":
      return new MicrophoneError("No microphone was found. Plug one in, then try again.", "missing");
    case "NotReadableError":
    case "AbortError":
      return new MicrophoneError(
        "The microphone is busy or unavailable. Close other apps that use it, then try again.",
        "busy",
      );
    default:
      return new MicrophoneError(`The microphone could not start (${(error && error.message) || error}).`, "other");
  }
}

/** Loudness for a meter: RMS mapped from -60..0 dBFS onto 0..1. */
export function levelOf(rms) {
  if (rms <= 0) return 0;
  return Math.max(0, Math.min(1, (20 * Math.log10(rms) + 60) / 60));
}

export class Microphone {
  /** `onChunk(arrayBuffer)` gets each PCM chunk, `onLevel(0..1)` its loudness. */
  constructor({ onChunk, onLevel = () => {}, onEnded = () => {} }) {
    this.onChunk = onChunk;
    this.onLevel = onLevel;
    this.onEnded = onEnded;
    this.context = null;
    this.stream = null;
    this.node = null;
  }

  get running() {
    return this.context !== null;
  }

  get sampleRate() {
    return this.context ? this.context.sampleRate : null;
  }

  /** Ask for the microphone and start capturing; resolves to the sample rate. */
  async start() {
    if (this.running) return this.sampleRate;
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new MicrophoneError("This page needs a secure (https) address to use the microphone.", "insecure");
    }
    let stream;
    try {
      // The recogniser wants the raw signal: browser clean-up smears quiet words.
      stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
      });
    } catch (error) {
      throw explain(error);
    }
    const context = new AudioContext({ latencyHint: "interactive" });
    try {
      await context.audioWorklet.addModule(new URL("./pcm-worklet.js", import.meta.url));
      const source = context.createMediaStreamSource(stream);
      const node = new AudioWorkletNode(context, "pcm-capture", {
        numberOfInputs: 1,
        numberOfOutputs: 0,
        channelCount: 1,
        channelCountMode: "explicit",
        processorOptions: { chunkMs: CHUNK_MS },
      });
      node.port.onmessage = ({ data }) => {
        this.onLevel(levelOf(data.rms));
        this.onChunk(data.pcm);
      };
      source.connect(node);
      if (context.state === "suspended") await context.resume();
      this.node = node;
    } catch (error) {
      stream.getTracks().forEach((track) => track.stop());
      await context.close();
      throw new MicrophoneError(`Audio capture could not start (${error.message || error}).`, "other");
    }
    for (const track of stream.getAudioTracks()) {
      track.addEventListener("ended", () => {
        this.stop();
        this.onEnded();
      });
    }
    this.stream = stream;
    this.context = context;
    return context.sampleRate;
  }

  stop() {
    if (this.node) this.node.port.onmessage = null;
    if (this.stream) this.stream.getTracks().forEach((track) => track.stop());
    if (this.context) this.context.close();
    this.node = null;
    this.stream = null;
    this.context = null;
    this.onLevel(0);
  }
}
