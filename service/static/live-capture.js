/* The live mode's AudioWorklet: gathers the microphone's mono samples (the node mixes its input down to
   one channel) into frames of ``frameSamples`` (about 100 ms at the AudioContext's rate) and posts each
   frame's Float32Array to the page, which sends it over the WebSocket. Loaded by app.js with
   audioContext.audioWorklet.addModule("static/live-capture.js"). */
"use strict";

class LiveCaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const wanted = options && options.processorOptions && options.processorOptions.frameSamples;
    this.frameSamples = Math.max(128, Math.round(wanted || 4800));
    this.frame = new Float32Array(this.frameSamples);
    this.filled = 0;
    this.running = true;
    this.port.onmessage = (event) => {
      // "stop": send what is gathered, then let the node be collected.
      if (event.data === "stop") {
        this.flush();
        this.running = false;
      }
    };
  }

  flush() {
    if (this.filled === 0) return;
    const frame = this.frame.slice(0, this.filled);
    this.port.postMessage(frame, [frame.buffer]);
    this.filled = 0;
  }

  process(inputs) {
    if (!this.running) return false;
    const input = inputs[0];
    const samples = input && input[0];
    if (samples) {
      let offset = 0;
      while (offset < samples.length) {
        const take = Math.min(samples.length - offset, this.frameSamples - this.filled);
        this.frame.set(samples.subarray(offset, offset + take), this.filled);
        this.filled += take;
        offset += take;
        if (this.filled === this.frameSamples) {
          this.port.postMessage(this.frame, [this.frame.buffer]);
          this.frame = new Float32Array(this.frameSamples);
          this.filled = 0;
        }
      }
    }
    return true;
  }
}

registerProcessor("live-capture", LiveCaptureProcessor);
