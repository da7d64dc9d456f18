// AudioWorklet processor: the microphone's first channel as 16-bit PCM at the context's
// own rate, posted in chunks of `chunkMs` with the chunk's loudness (RMS, 0..1).

class PcmCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const chunkMs = (options.processorOptions && options.processorOptions.chunkMs) || 100;
    this.chunkLength = Math.max(128, Math.round((sampleRate * chunkMs) / 1000));
    this.chunk = new Int16Array(this.chunkLength);
    this.filled = 0;
    this.sumOfSquares = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;
    for (let i = 0; i < channel.length; i++) {
      const sample = Math.max(-1, Math.min(1, channel[i]));
      this.sumOfSquares += sample * sample;
      this.chunk[this.filled++] = sample < 0 ? sample * 0x8000 : sample * 0x7fff;
      if (this.filled === this.chunkLength) {
        const rms = Math.sqrt(this.sumOfSquares / this.chunkLength);
        this.port.postMessage({ pcm: this.chunk.buffer, rms }, [this.chunk.buffer]);
        this.chunk = new Int16Array(this.chunkLength);
        this.filled = 0;
        this.sumOfSquares = 0;
      }
    }
    return true;
  }
}

registerProcessor("pcm-capture", PcmCapture);
