/* The SER page: record (MediaRecorder) or pick/drop a file, check its length here, send it to
   POST v1/predict, and show the label, the six probabilities, the waveform and the timings. A file
   longer than the service's utterance limit goes to POST v1/jobs instead: the page polls the job and
   draws its timeline (timeline.js). Live mode captures the microphone with an AudioWorklet
   (live-capture.js) and streams float32 PCM over the WebSocket v1/stream, drawing windows as they come.

   Plain browser JavaScript, no build step, nothing fetched from elsewhere. URLs are relative, so the
   page works at / and /emotion and behind a path prefix. */
"use strict";

(function () {
  const DEFAULT_LABELS = ["neutral", "happy", "sad", "angry", "fear", "disgust"];
  const KEY_STORAGE = "ser-api-key";
  // MediaRecorder and the timer do not stop at exactly the same instant; stopping a little before
  // the limit keeps an auto-stopped recording inside the service's maximum.
  const AUTO_STOP_MARGIN_S = 0.25;
  // Containers the service decodes, in order of preference (Safari records only MP4/AAC).
  const RECORDING_TYPES = [
    ["audio/webm;codecs=opus", "webm"],
    ["audio/webm", "webm"],
    ["audio/ogg;codecs=opus", "ogg"],
    ["audio/mp4", "m4a"],
  ];

  // Files up to this size are decoded here (for the length and the waveform); larger ones are sent as
  // they are: decoding hours of audio would take more memory than the page should.
  const DECODE_MAX_BYTES = 64 * 1024 * 1024;
  // Live frames: about 100 ms of audio each.
  const LIVE_FRAME_S = 0.1;
  // Raw PCM rates above this are resampled by a second AudioContext (the service takes up to 48 kHz).
  const LIVE_MAX_RATE = 48000;
  // After "stop", how long to wait for the live summary before giving up on it.
  const SUMMARY_WAIT_MS = 30000;
  // Plain words for the close codes of v1/stream, used when the service gives no reason.
  const CLOSE_WORDS = {
    1000: "the service ended the stream without a summary",
    1005: "the connection closed without a reason",
    1001: "the service is shutting down",
    1006: "the connection to the service was lost",
    1007: "the service could not decode the audio",
    1008: "the service refused the stream",
    1009: "an audio frame was too large for the service",
    1011: "the service had an internal error",
    1013: "the service is busy or not ready; try again later",
  };

  const $ = (id) => document.getElementById(id);
  const el = {
    modelLine: $("model-line"),
    demoNote: $("demo-note"),
    limitsHint: $("limits-hint"),
    recordButton: $("record-button"),
    recordButtonText: $("record-button-text"),
    timer: $("timer"),
    timerMax: $("timer-max"),
    timerFill: $("timer-fill"),
    recordStatus: $("record-status"),
    dropzone: $("dropzone"),
    fileInput: $("file-input"),
    preview: $("preview"),
    clipName: $("clip-name"),
    clipDuration: $("clip-duration"),
    clipNote: $("clip-note"),
    player: $("player"),
    keyDetails: $("api-key-details"),
    keyInput: $("api-key-input"),
    sendButton: $("send-button"),
    progress: $("progress"),
    progressText: $("progress-text"),
    error: $("error"),
    resultSection: $("result-section"),
    resultFor: $("result-for"),
    resultLabel: $("result-label"),
    resultConfidence: $("result-confidence"),
    resultUncertain: $("result-uncertain"),
    bars: $("bars"),
    waveform: $("waveform"),
    waveformCaption: $("waveform-caption"),
    resultModel: $("result-model"),
    resultDuration: $("result-duration"),
    resultTime: $("result-time"),
    resultRequest: $("result-request"),
    announce: $("announce"),
    longHint: $("long-hint"),
    jobProgress: $("job-progress"),
    jobBar: $("job-bar"),
    jobPercent: $("job-percent"),
    jobText: $("job-text"),
    cancelButton: $("cancel-button"),
    liveButton: $("live-button"),
    liveButtonText: $("live-button-text"),
    liveTimer: $("live-timer"),
    liveTimerMax: $("live-timer-max"),
    liveStatus: $("live-status"),
    liveNow: $("live-now"),
    liveNowHeading: document.querySelector("#live-now .live-now-heading"),
    liveLabel: $("live-label"),
    liveConfidence: $("live-confidence"),
    liveSpeech: $("live-speech"),
    liveDelay: $("live-delay"),
    liveError: $("live-error"),
    timelineSection: $("timeline-section"),
    timelinePlayer: $("timeline-player"),
  };

  const limits = { minSeconds: 0.5, maxSeconds: 30, maxUploadBytes: null, jobMaxSeconds: null, jobMaxBytes: null };
  let labels = DEFAULT_LABELS.slice();
  let clip = null; // {blob, name, origin, duration, buffer, problem}
  let clipSerial = 0;
  let busy = false;
  let recording = null; // {state: "starting" | "recording" | "stopping", recorder, startedAt, auto, tick, autoStop}
  let shownBuffer = null; // the AudioBuffer drawn in the result, redrawn on resize
  let infoRetry = 0;
  let job = null; // {id, cancelled} while a long recording is analysed
  let live = null; // the live session (see startLive)
  let cursorFrame = 0;
  const timeline = window.SERTimeline.create({ labels: () => labels, seek: seekTimelinePlayer });
  const { clock, span } = window.SERTimeline;

  // --- helpers -----------------------------------------------------------------------------------

  /** 0.5 -> "0.5 s", 30 -> "30 s" (a limit, shown without trailing zeros). */
  function seconds(value) {
    return `${Number(value.toFixed(2))} s`;
  }

  function preciseSeconds(value) {
    return `${value.toFixed(2)} s`;
  }

  function megabytes(bytes) {
    const mb = bytes / (1024 * 1024);
    if (mb >= 1024) return `${Number((mb / 1024).toFixed(1))} GB`;
    return mb >= 10 ? `${Math.round(mb)} MB` : `${mb.toFixed(1)} MB`;
  }

  function percent(p) {
    return `${(100 * p).toFixed(1)}%`;
  }

  function apiHeaders() {
    const key = el.keyInput.value.trim();
    return key ? { "X-API-Key": key } : {};
  }

  /** Search a JSON object (depth-first, a few levels) for the first value under one of ``names``. */
  function findValue(obj, names, depth = 0) {
    if (!obj || typeof obj !== "object" || depth > 4) return undefined;
    for (const name of names) {
      if (Object.prototype.hasOwnProperty.call(obj, name) && obj[name] !== null) return obj[name];
    }
    for (const value of Object.values(obj)) {
      const found = findValue(value, names, depth + 1);
      if (found !== undefined) return found;
    }
    return undefined;
  }

  function showError(message) {
    el.error.textContent = message;
    // On a phone the message can be below the fold; bring it into view.
    const rect = el.error.getBoundingClientRect();
    if (rect.bottom > window.innerHeight || rect.top < 0) el.error.scrollIntoView({ block: "nearest" });
  }

  function clearError() {
    el.error.textContent = "";
  }

  function announce(message) {
    // Clearing first makes screen readers repeat an identical message.
    el.announce.textContent = "";
    window.setTimeout(() => {
      el.announce.textContent = message;
    }, 50);
  }

  async function readJson(response) {
    try {
      return await response.json();
    } catch (_) {
      return null;
    }
  }

  /** ``text`` as a sentence: a capital first, a full stop last. */
  function sentence(text) {
    let message = String(text).trim();
    message = message.charAt(0).toUpperCase() + message.slice(1);
    if (!/[.!?]$/.test(message)) message += ".";
    return message;
  }

  function sleep(ms) {
    return new Promise((resolve) => window.setTimeout(resolve, ms));
  }

  /** "recording.flac" -> "recording". */
  function stemOf(name) {
    const stem = String(name || "").replace(/\.[^.]*$/, "");
    return stem || "recording";
  }

  /** The service's own words for a failed request, else a plain description of the status. */
  function errorMessage(response, body) {
    let message = null;
    if (body && typeof body.error === "string" && body.error) {
      message = body.error;
    } else if (body && typeof body.detail === "string") {
      message = body.detail;
    } else if (body && Array.isArray(body.detail) && body.detail.length) {
      message = body.detail.map((d) => d.msg || String(d)).join("; ");
    }
    if (message) {
      message = sentence(message);
    } else {
      message = `The service answered ${response.status} ${response.statusText || ""}`.trim() + ".";
    }
    const retry = response.headers.get("Retry-After");
    if (retry && /^\d+$/.test(retry)) message += ` Try again in ${retry} s.`;
    if (response.status === 401 || response.status === 403) {
      message += " Enter a valid API key under “API key” and try again.";
    }
    return message;
  }

  // --- service info ------------------------------------------------------------------------------

  function applyLimits() {
    el.limitsHint.textContent =
      `Speak for between ${seconds(limits.minSeconds)} and ${seconds(limits.maxSeconds)}` +
      (limits.maxUploadBytes ? `; files up to ${megabytes(limits.maxUploadBytes)}.` : ".");
    el.timerMax.textContent = `of ${seconds(limits.maxSeconds)}`;
    const most = [
      limits.jobMaxSeconds ? `up to ${span(limits.jobMaxSeconds)}` : null,
      limits.jobMaxBytes ? megabytes(limits.jobMaxBytes) : null,
    ].filter(Boolean);
    el.longHint.textContent =
      `A file longer than ${seconds(limits.maxSeconds)} gets a timeline of its emotions` +
      (most.length ? ` (${most.join(", ")}).` : ".");
  }

  async function loadInfo() {
    let response;
    try {
      response = await fetch("v1/info", { headers: apiHeaders() });
    } catch (_) {
      el.modelLine.textContent = "Could not reach the service; check that it is running.";
      return;
    }
    const body = await readJson(response);
    if (!response.ok || !body) {
      if (response.status === 401 || response.status === 403) {
        el.keyDetails.open = true;
        el.modelLine.textContent = "The service needs an API key: enter it under “API key” below.";
      } else {
        el.modelLine.textContent = response.ok
          ? "The service did not describe itself."
          : errorMessage(response, body);
      }
      return;
    }
    // GET /v1/info: {model: {name, version} | null, model_state, labels, settings: {min_seconds, ...}}.
    const settings = body.settings && typeof body.settings === "object" ? body.settings : body;
    const number = (names) => {
      const value = Number(findValue(settings, names));
      return Number.isFinite(value) && value > 0 ? value : null;
    };
    limits.minSeconds = number(["min_seconds"]) ?? limits.minSeconds;
    limits.maxSeconds = number(["max_seconds"]) ?? limits.maxSeconds;
    limits.maxUploadBytes = number(["max_upload_bytes"]) ?? limits.maxUploadBytes;
    limits.jobMaxSeconds = number(["job_max_seconds"]) ?? limits.jobMaxSeconds;
    limits.jobMaxBytes = number(["job_max_bytes"]) ?? limits.jobMaxBytes;
    if (Array.isArray(body.labels) && body.labels.length) labels = body.labels.map(String);
    const model = body.model;
    el.demoNote.textContent = body.demo && body.notice ? `Demo model: ${body.notice}.` : "";
    el.demoNote.hidden = !el.demoNote.textContent;
    if (model && model.name) {
      el.modelLine.textContent = `Model: ${model.name}` + (model.version ? `, version ${model.version}` : "");
    } else if (body.model_state === "failed") {
      el.modelLine.textContent = "The service could not load its model; it cannot analyse audio now.";
    } else {
      // The service answers before its model is loaded; ask again until it is.
      const state = body.model_state ? ` (${body.model_state})` : "";
      el.modelLine.textContent = `The service is loading its model${state}…`;
      window.clearTimeout(infoRetry);
      infoRetry = window.setTimeout(loadInfo, 2000);
    }
    applyLimits();
    if (clip) checkClip(clip);
  }

  // --- the clip: recorded or chosen ----------------------------------------------------------------

  async function decodeBlob(blob) {
    const Offline = window.OfflineAudioContext || window.webkitOfflineAudioContext;
    if (!Offline) return null;
    // A 16 kHz context keeps a 30 s clip small; decodeAudioData resamples to the context's rate.
    const context = new Offline(1, 1, 16000);
    const data = await blob.arrayBuffer();
    return new Promise((resolve, reject) => {
      const pending = context.decodeAudioData(data, resolve, reject);
      if (pending && typeof pending.catch === "function") pending.catch(reject);
    });
  }

  /** Sets ``c.problem`` to why this clip cannot be sent (or null), and ``c.long`` to whether it goes to
   *  POST v1/jobs (a file longer than the utterance limit, or too large for v1/predict); updates the page. */
  function checkClip(c) {
    let problem = null;
    const what = c.origin === "recording" ? "The recording" : "This file";
    const tooLargeForPredict = Boolean(limits.maxUploadBytes && c.blob.size > limits.maxUploadBytes);
    c.long =
      c.origin === "file" &&
      c.blob.size > 0 &&
      ((c.duration !== null && c.duration > limits.maxSeconds) || tooLargeForPredict);
    if (c.long) {
      if (limits.jobMaxBytes && c.blob.size > limits.jobMaxBytes) {
        problem =
          `Too large: this file is ${megabytes(c.blob.size)}; the service accepts recordings up to ` +
          `${megabytes(limits.jobMaxBytes)}.`;
      } else if (c.duration !== null && limits.jobMaxSeconds && c.duration > limits.jobMaxSeconds) {
        problem =
          `Too long: this file is ${span(c.duration)} long and the service analyses recordings of at most ` +
          `${span(limits.jobMaxSeconds)}. Cut it into parts.`;
      }
    } else if (c.blob.size === 0) {
      problem =
        c.origin === "recording"
          ? "Nothing was recorded. Check that the microphone works and record again."
          : "This file is empty (0 bytes). Choose an audio file.";
    } else if (limits.maxUploadBytes && c.blob.size > limits.maxUploadBytes) {
      problem =
        `Too large: ${what.toLowerCase()} is ${megabytes(c.blob.size)}; the service accepts files up to ` +
        `${megabytes(limits.maxUploadBytes)}.`;
    } else if (c.duration !== null && c.duration < limits.minSeconds) {
      problem =
        `Too short: ${what.toLowerCase()} is ${preciseSeconds(c.duration)} long and the service needs at least ` +
        `${seconds(limits.minSeconds)} of speech. ` +
        (c.origin === "recording" ? "Record again and keep speaking a little longer." : "Choose a longer clip.");
    } else if (c.duration !== null && c.duration > limits.maxSeconds) {
      problem =
        `Too long: ${what.toLowerCase()} is ${preciseSeconds(c.duration)} long and the service accepts at most ` +
        `${seconds(limits.maxSeconds)}. Trim it or record a shorter clip.`;
    }
    c.problem = problem;
    if (c !== clip) return;
    const notes = [];
    if (c.undecodable) {
      notes.push("This browser cannot read this file, so it cannot check its length; the service will still try.");
    }
    if (c.long && !problem) {
      notes.push(
        (c.duration !== null && c.duration > limits.maxSeconds
          ? `It is longer than ${seconds(limits.maxSeconds)}, so`
          : `It is larger than ${megabytes(limits.maxUploadBytes)}, so`) +
          " the service will make a timeline of it: the emotion of each few seconds of speech.",
      );
    }
    el.clipNote.textContent = notes.join(" ");
    el.clipNote.hidden = !notes.length;
    if (problem) {
      showError(problem);
      announce(problem);
    } else {
      clearError();
    }
    updateButtons();
  }

  async function setClip(blob, name, origin, recordedSeconds, autoStopped = false) {
    clearError();
    const serial = ++clipSerial;
    if (el.player.src) URL.revokeObjectURL(el.player.src);
    clip = { blob, name, origin, duration: recordedSeconds ?? null, buffer: null, problem: null, pending: true };
    el.player.src = URL.createObjectURL(blob);
    el.clipName.textContent = name;
    el.clipDuration.textContent = "";
    el.clipNote.hidden = true;
    el.preview.hidden = false;
    updateButtons();

    let buffer = null;
    // Decoding a file larger than the service accepts, or very large, would only waste memory.
    const decodeLimit = Math.max(limits.maxUploadBytes || 0, DECODE_MAX_BYTES);
    if (blob.size > 0 && blob.size <= decodeLimit && !(limits.jobMaxBytes && blob.size > limits.jobMaxBytes)) {
      try {
        buffer = await decodeBlob(blob);
      } catch (_) {
        buffer = null;
      }
    }
    if (serial !== clipSerial) return; // another clip replaced this one meanwhile
    clip.pending = false;
    clip.buffer = buffer;
    if (buffer) clip.duration = buffer.duration;
    el.clipDuration.textContent = clip.duration !== null ? `(${preciseSeconds(clip.duration)})` : "";
    // A file too large to decode here is not "unreadable": it is sent as it is.
    clip.undecodable = !buffer && origin === "file" && blob.size > 0 && blob.size <= decodeLimit;
    checkClip(clip);
    if (origin === "recording") {
      const stopped = autoStopped ? `Stopped at the ${seconds(limits.maxSeconds)} limit.` : "Recording stopped.";
      el.recordStatus.textContent = clip.problem
        ? stopped
        : `${stopped} Listen to it below, then press “Analyse emotion”.`;
    } else {
      el.recordStatus.textContent = "";
    }
  }

  function updateButtons() {
    const recordingNow = recording !== null;
    const liveNow = live !== null;
    el.sendButton.disabled = busy || recordingNow || liveNow || !clip || clip.pending || clip.problem !== null;
    el.recordButton.disabled = liveNow || (recording !== null && recording.state === "starting");
    el.fileInput.disabled = recordingNow;
    el.liveButton.disabled =
      recordingNow || busy || (liveNow && live.state !== "running" && live.state !== "connecting");
    const liveOn = liveNow && live.state !== "stopping";
    el.liveButton.classList.toggle("is-recording", liveOn);
    el.liveButtonText.textContent = !liveNow
      ? "Start live"
      : live.state === "stopping"
        ? "Finishing…"
        : "Stop live";
  }

  // --- recording ---------------------------------------------------------------------------------

  function recordingType() {
    if (typeof MediaRecorder === "undefined") return null;
    for (const [type, extension] of RECORDING_TYPES) {
      if (MediaRecorder.isTypeSupported(type)) return { type, extension };
    }
    return { type: "", extension: "webm" };
  }

  function showTimer(elapsed) {
    el.timer.textContent = `${elapsed.toFixed(1)} s`;
    const fraction = Math.min(1, elapsed / limits.maxSeconds);
    el.timerFill.style.width = `${(100 * fraction).toFixed(1)}%`;
  }

  async function startRecording() {
    clearError();
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      showError(
        "Recording needs a secure page (served over https, or from localhost) and a browser that allows the " +
          "microphone. You can still upload a file.",
      );
      return;
    }
    const format = recordingType();
    if (!format) {
      showError("This browser cannot record audio (no MediaRecorder). You can still upload a file.");
      return;
    }
    recording = { state: "starting" };
    updateButtons();
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        // Echo cancellation and noise suppression reshape the voice the model listens to.
        audio: { echoCancellation: false, noiseSuppression: false },
      });
    } catch (err) {
      recording = null;
      updateButtons();
      const denied = err && (err.name === "NotAllowedError" || err.name === "SecurityError");
      showError(
        denied
          ? "Microphone access was refused. Allow the microphone for this page and try again, or upload a file."
          : `The microphone could not be opened (${(err && err.name) || "unknown error"}). You can still upload a file.`,
      );
      return;
    }
    const chunks = [];
    let recorder;
    try {
      recorder = new MediaRecorder(stream, format.type ? { mimeType: format.type } : undefined);
    } catch (err) {
      stream.getTracks().forEach((track) => track.stop());
      recording = null;
      updateButtons();
      showError(`This browser cannot record audio here (${err.name || "MediaRecorder failed"}). You can still upload a file.`);
      return;
    }
    const session = { state: "recording", recorder, startedAt: performance.now(), auto: false, tick: 0, autoStop: 0 };
    recorder.addEventListener("dataavailable", (event) => {
      if (event.data && event.data.size > 0) chunks.push(event.data);
    });
    recorder.addEventListener("stop", () => {
      const elapsed = (performance.now() - session.startedAt) / 1000;
      window.clearInterval(session.tick);
      window.clearTimeout(session.autoStop);
      stream.getTracks().forEach((track) => track.stop());
      recording = null;
      el.recordButton.classList.remove("is-recording");
      el.recordButtonText.textContent = "Record";
      showTimer(elapsed);
      el.recordStatus.textContent = "Recording stopped.";
      const type = recorder.mimeType || format.type || "audio/webm";
      setClip(new Blob(chunks, { type }), `recording.${format.extension}`, "recording", elapsed, session.auto);
    });

    recording = session;
    // A timeslice delivers data as it comes, so a very short recording still holds what was said.
    recorder.start(250);
    el.recordButton.classList.add("is-recording");
    el.recordButtonText.textContent = "Stop";
    el.recordStatus.textContent =
      `Recording… press Stop when you are done (it stops by itself at ${seconds(limits.maxSeconds)}).`;
    showTimer(0);
    session.tick = window.setInterval(() => showTimer((performance.now() - session.startedAt) / 1000), 100);
    session.autoStop = window.setTimeout(
      () => {
        if (session.state === "recording") {
          session.auto = true;
          stopRecording();
        }
      },
      Math.max(0, limits.maxSeconds - AUTO_STOP_MARGIN_S) * 1000,
    );
    updateButtons();
  }

  function stopRecording() {
    if (!recording || recording.state !== "recording") return;
    recording.state = "stopping";
    recording.recorder.stop();
  }

  // --- sending and the result --------------------------------------------------------------------

  async function send() {
    if (!clip || busy || live || clip.problem !== null || clip.pending) return;
    if (clip.long) {
      sendJob(clip);
      return;
    }
    const sent = clip;
    busy = true;
    clearError();
    updateButtons();
    el.progress.hidden = false;
    el.resultSection.setAttribute("aria-busy", "true");
    const started = performance.now();
    el.progressText.textContent = "Analysing…";
    const tick = window.setInterval(() => {
      el.progressText.textContent = `Analysing… ${((performance.now() - started) / 1000).toFixed(1)} s`;
    }, 200);
    announce("Analysing the audio.");

    try {
      const form = new FormData();
      form.append("file", sent.blob, sent.name);
      let response;
      try {
        response = await fetch("v1/predict", { method: "POST", body: form, headers: apiHeaders() });
      } catch (_) {
        throw new Error("Could not reach the service. Check your connection and try again.");
      }
      const body = await readJson(response);
      if (!response.ok) {
        if (response.status === 401 || response.status === 403) el.keyDetails.open = true;
        throw new Error(errorMessage(response, body));
      }
      if (!body || typeof body.probabilities !== "object") {
        throw new Error("The service answered, but not with a result this page understands.");
      }
      renderResult(body, sent, performance.now() - started);
    } catch (err) {
      showError(err.message);
    } finally {
      window.clearInterval(tick);
      busy = false;
      el.progress.hidden = true;
      el.resultSection.removeAttribute("aria-busy");
      updateButtons();
    }
  }

  function renderBars(probabilities, top) {
    const order = labels.filter((name) => name in probabilities);
    for (const name of Object.keys(probabilities)) if (!order.includes(name)) order.push(name);
    el.bars.replaceChildren();
    for (const name of order) {
      const p = Number(probabilities[name]) || 0;
      const row = window.SERTimeline.barRow(name, p, name === top, percent(p));
      el.bars.appendChild(row);
    }
  }

  function drawWaveform(buffer) {
    const { ctx, width, height } = window.SERTimeline.clearedCanvas(el.waveform);
    const style = getComputedStyle(document.documentElement);
    const mid = height / 2;

    if (!buffer) {
      ctx.fillStyle = style.getPropertyValue("--muted").trim() || "#4b5563";
      ctx.font = "14px system-ui, sans-serif";
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.fillText("This browser cannot draw this file's waveform", width / 2, mid);
      return;
    }

    const channels = [];
    for (let c = 0; c < buffer.numberOfChannels; c++) channels.push(buffer.getChannelData(c));
    const n = buffer.length;
    const columns = Math.floor(width);
    const lows = new Float32Array(columns);
    const highs = new Float32Array(columns);
    let peak = 0;
    for (let x = 0; x < columns; x++) {
      const start = Math.floor((x * n) / columns);
      const end = Math.max(start + 1, Math.floor(((x + 1) * n) / columns));
      let lo = Infinity;
      let hi = -Infinity;
      for (let i = start; i < end && i < n; i++) {
        let v = 0;
        for (const data of channels) v += data[i];
        v /= channels.length;
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
      if (lo === Infinity) lo = hi = 0;
      lows[x] = lo;
      highs[x] = hi;
      peak = Math.max(peak, Math.abs(lo), Math.abs(hi));
    }
    // Scaled to the peak so quiet speech is still visible; the caption gives the true level.
    const scale = peak > 0 ? (0.95 * mid) / peak : 0;
    ctx.fillStyle = style.getPropertyValue("--border").trim() || "#cbd2dc";
    ctx.fillRect(0, Math.floor(mid), width, 1);
    ctx.fillStyle = style.getPropertyValue("--accent").trim() || "#1d4ed8";
    for (let x = 0; x < columns; x++) {
      const top = mid - highs[x] * scale;
      const bottom = mid - lows[x] * scale;
      ctx.fillRect(x, top, 1, Math.max(1, bottom - top));
    }
    const peakDb = peak > 0 ? `${(20 * Math.log10(peak)).toFixed(0)} dBFS` : "silent";
    el.waveformCaption.textContent =
      `Waveform of the audio sent: ${preciseSeconds(buffer.duration)}, peak ${peakDb.replace("-", "−")}.`;
  }

  // Why the service says not to trust the label ("" when it does not say so).
  function uncertaintyText(body) {
    if (!body.uncertain) return "";
    const reasons = Array.isArray(body.uncertain_reasons) ? body.uncertain_reasons : [];
    const text = [];
    if (reasons.includes("out_of_distribution")) {
      text.push("this recording is unlike the model's training data (a different microphone, room, noise or voice)");
    }
    if (reasons.includes("low_confidence")) text.push("no emotion clearly stands out");
    return `Uncertain: ${text.join("; ") || "the model flags this prediction"}. Treat the label with caution.`;
  }

  function renderResult(body, sent, roundTripMs) {
    const top = String(body.label);
    el.resultFor.textContent = `for ${sent.name}`;
    el.resultLabel.textContent = top;
    const confidence = Number(body.confidence);
    el.resultConfidence.textContent = Number.isFinite(confidence) ? `${percent(confidence)} confident` : "";
    const why = uncertaintyText(body);
    el.resultUncertain.textContent = why;
    el.resultUncertain.hidden = !why;
    renderBars(body.probabilities, top);

    const model = body.model || {};
    el.resultModel.textContent =
      [model.name, model.version ? `version ${model.version}` : null].filter(Boolean).join(", ") || "unknown";
    const duration = Number(body.duration_s);
    el.resultDuration.textContent = Number.isFinite(duration) ? preciseSeconds(duration) : "unknown";
    const t = body.timings_ms || {};
    const ms = (v) => `${Math.round(Number(v))} ms`;
    const parts = ["decode", "queue", "inference"]
      .filter((k) => Number.isFinite(Number(t[k])))
      .map((k) => `${k} ${ms(t[k])}`);
    const total = Number.isFinite(Number(t.total)) ? `${ms(t.total)} in the service` : null;
    el.resultTime.textContent =
      [total && parts.length ? `${total} (${parts.join(", ")})` : total, `${ms(roundTripMs)} round trip`]
        .filter(Boolean)
        .join("; ");
    el.resultRequest.textContent = body.request_id || "—";

    el.resultSection.hidden = false;
    hideTimeline();
    shownBuffer = sent.buffer;
    el.waveformCaption.textContent = "Waveform of the audio sent.";
    drawWaveform(shownBuffer);

    announce(
      `Result: ${top}` +
        (Number.isFinite(confidence) ? `, ${percent(confidence)} confident.` : ".") +
        (why ? ` ${why}` : ""),
    );
    const rect = el.resultSection.getBoundingClientRect();
    if (rect.top > window.innerHeight * 0.6 || rect.top < 0) {
      el.resultSection.scrollIntoView({ block: "start" });
    }
  }

  // --- long recordings: a job, then its timeline --------------------------------------------------

  function showJobProgress(words, progress) {
    const p = Math.min(1, Math.max(0, Number(progress) || 0));
    el.jobProgress.hidden = false;
    el.jobBar.value = Math.round(100 * p);
    el.jobBar.setAttribute("aria-valuetext", `${Math.floor(100 * p)}%`);
    el.jobPercent.textContent = `${Math.floor(100 * p)}%`;
    el.jobText.textContent = words;
  }

  /** What a queued or running job is doing, in plain words. */
  function jobWords(current, sent) {
    if (current.state === "queued") return "Waiting for the service to start on it…";
    const done = Number(current.audio_seconds_done);
    const of = sent.duration ? ` of ${span(sent.duration)}` : "";
    return Number.isFinite(done) && done > 0
      ? `Analysing: ${span(done)}${of} of audio done.`
      : "Analysing the recording…";
  }

  /** Why a job ended without a timeline, in plain words (the service's own where it gives them). */
  function jobFailure(current) {
    const why = current.error && current.error.error ? ` ${sentence(current.error.error)}` : "";
    if (current.state === "cancelled") return `The analysis was cancelled.${why}`;
    if (current.state === "interrupted") {
      return `The service restarted during the analysis; send the file again.${why}`;
    }
    return `The analysis failed.${why || " The service gave no reason."}`;
  }

  async function pollJob(id) {
    let failures = 0;
    for (;;) {
      let response;
      try {
        response = await fetch(`v1/jobs/${encodeURIComponent(id)}`, { headers: apiHeaders(), cache: "no-store" });
      } catch (_) {
        // A dropped connection is often brief; the job goes on in the service meanwhile.
        if (++failures >= 5) throw new Error("Lost contact with the service while it analysed the recording.");
        await sleep(1000 * failures);
        continue;
      }
      const body = await readJson(response);
      if (!response.ok) {
        if (response.status === 401 || response.status === 403) el.keyDetails.open = true;
        throw new Error(errorMessage(response, body));
      }
      if (!body || typeof body.state !== "string") {
        throw new Error("The service answered, but not with a job this page understands.");
      }
      return body;
    }
  }

  async function sendJob(sent) {
    const current = { id: null, cancelled: false };
    job = current;
    busy = true;
    clearError();
    updateButtons();
    el.cancelButton.hidden = true;
    showJobProgress(`Uploading ${sent.name} (${megabytes(sent.blob.size)})…`, 0);
    announce("Uploading the recording for a timeline.");
    try {
      const form = new FormData();
      form.append("file", sent.blob, sent.name);
      let response;
      try {
        response = await fetch("v1/jobs", { method: "POST", body: form, headers: apiHeaders() });
      } catch (_) {
        throw new Error("Could not reach the service. Check your connection and try again.");
      }
      let body = await readJson(response);
      if (!response.ok) {
        if (response.status === 401 || response.status === 403) el.keyDetails.open = true;
        throw new Error(errorMessage(response, body));
      }
      if (!body || typeof body.id !== "string") {
        throw new Error("The service answered, but not with a job this page understands.");
      }
      current.id = body.id;
      el.cancelButton.hidden = false;
      const started = performance.now();
      while (body.state === "queued" || body.state === "running") {
        showJobProgress(jobWords(body, sent), body.progress);
        const waited = performance.now() - started;
        await sleep(waited < 10000 ? 500 : waited < 60000 ? 1000 : 2000);
        if (current.cancelled) return;
        body = await pollJob(current.id);
        if (current.cancelled) return;
      }
      if (body.state !== "done" || !body.result) throw new Error(jobFailure(body));
      showJobProgress("Done.", 1);
      renderTimeline(body.result, sent);
    } catch (err) {
      if (!current.cancelled) showError(err.message);
    } finally {
      // A cancelled job has handed the page back already (another may be running by now).
      if (job === current) {
        job = null;
        busy = false;
        el.jobProgress.hidden = true;
        updateButtons();
      }
    }
  }

  async function cancelJob() {
    const current = job;
    if (!current || current.cancelled || !current.id) return;
    current.cancelled = true;
    el.jobProgress.hidden = true;
    busy = false;
    job = null;
    updateButtons();
    let message = "The analysis was cancelled.";
    try {
      const response = await fetch(`v1/jobs/${encodeURIComponent(current.id)}`, {
        method: "DELETE",
        headers: apiHeaders(),
      });
      if (!response.ok) {
        message = `The analysis could not be cancelled: ${errorMessage(response, await readJson(response))}`;
      }
    } catch (_) {
      message = "The analysis could not be cancelled: the service could not be reached.";
    }
    showError(message);
    announce(message);
  }

  function hideTimeline() {
    if (live) return; // the live session's timeline stays while it runs
    el.timelineSection.hidden = true;
    el.timelinePlayer.pause();
  }

  function renderTimeline(result, sent) {
    el.resultSection.hidden = true;
    el.player.pause();
    if (el.timelinePlayer.src) URL.revokeObjectURL(el.timelinePlayer.src);
    el.timelinePlayer.src = URL.createObjectURL(sent.blob);
    el.timelinePlayer.hidden = false;
    timeline.show(result, {
      title: "2. Timeline",
      name: sent.name,
      stem: stemOf(sent.name),
      duration: sent.duration,
      buffer: sent.buffer,
      hasAudio: true,
    });
    const summary = result.summary || {};
    const segments = (result.segments || []).length;
    announce(
      result.reason === "no_speech"
        ? "The timeline is ready: no speech was found in the recording."
        : `The timeline is ready: ${segments} segment${segments === 1 ? "" : "s"}, mostly ${summary.dominant}.`,
    );
    const rect = el.timelineSection.getBoundingClientRect();
    if (rect.top > window.innerHeight * 0.6 || rect.top < 0) el.timelineSection.scrollIntoView({ block: "start" });
  }

  /** The timeline's seek hook: plays the analysed file from ``t`` seconds; false where there is none. */
  function seekTimelinePlayer(t) {
    if (live || el.timelinePlayer.hidden || !el.timelinePlayer.src) return false;
    el.timelinePlayer.currentTime = t;
    timeline.setCursor(t);
    return true;
  }

  function followPlayer() {
    window.cancelAnimationFrame(cursorFrame);
    timeline.setCursor(el.timelinePlayer.currentTime || 0);
    if (!el.timelinePlayer.paused) cursorFrame = window.requestAnimationFrame(followPlayer);
  }

  // --- live mode: microphone -> AudioWorklet -> WebSocket v1/stream -> windows as they come ---------

  function showLiveError(message) {
    el.liveError.textContent = message;
    const rect = el.liveError.getBoundingClientRect();
    if (rect.bottom > window.innerHeight || rect.top < 0) el.liveError.scrollIntoView({ block: "nearest" });
  }

  function streamUrl() {
    const url = new URL("v1/stream", window.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.search = "";
    url.hash = "";
    return url.href;
  }

  /** Float32 samples as little-endian bytes (what "f32le" means, whatever this machine's order). */
  const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
  function f32le(samples) {
    if (LITTLE_ENDIAN) {
      return samples.buffer.byteLength === samples.byteLength ? samples.buffer : samples.slice().buffer;
    }
    const view = new DataView(new ArrayBuffer(samples.length * 4));
    samples.forEach((v, i) => view.setFloat32(4 * i, v, true));
    return view.buffer;
  }

  function sentSeconds(session) {
    return session.rate ? session.sentSamples / session.rate : 0;
  }

  /** The clock: audio sent past the service's limit is not analysed, so it stops at the limit. */
  function liveSeconds(session) {
    const sent = sentSeconds(session);
    return session.maxSeconds ? Math.min(sent, session.maxSeconds) : sent;
  }

  /** Stops the microphone and the audio graph of ``session`` (safe to call more than once). */
  function releaseMicrophone(session) {
    window.clearInterval(session.tick);
    if (session.node) {
      session.node.port.onmessage = null;
      session.node.disconnect();
    }
    if (session.source) session.source.disconnect();
    if (session.stream) session.stream.getTracks().forEach((track) => track.stop());
    if (session.context && session.context.state !== "closed") session.context.close().catch(() => {});
    session.node = session.source = session.stream = null;
  }

  async function startLive() {
    if (live || recording || busy) return;
    el.liveError.textContent = "";
    const Context = window.AudioContext || window.webkitAudioContext;
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      showLiveError(
        "Live mode needs a secure page (served over https, or from localhost) and a browser that allows the " +
          "microphone.",
      );
      return;
    }
    if (!Context || typeof AudioWorkletNode === "undefined" || typeof WebSocket === "undefined") {
      showLiveError(
        "This browser cannot stream live audio (it lacks AudioWorklet or WebSocket). You can still record or " +
          "upload a file.",
      );
      return;
    }
    const session = {
      state: "connecting",
      context: null,
      stream: null,
      source: null,
      node: null,
      socket: null,
      rate: 0,
      sentSamples: 0,
      peaks: window.SERTimeline.livePeaks(),
      error: null,
      summary: false,
      stopAsked: false,
      tick: 0,
      maxSeconds: null,
      slowSaid: false,
      lastLabel: null,
    };
    live = session;
    updateButtons();
    el.liveStatus.textContent = "Opening the microphone…";
    try {
      // Made inside the click, so that the browser lets it start.
      session.context = new Context();
      session.stream = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false, channelCount: 1 },
      });
      if (session.context.sampleRate > LIVE_MAX_RATE) {
        // A 96 kHz sound card: let the browser resample rather than send twice the data.
        session.context.close().catch(() => {});
        session.context = new Context({ sampleRate: LIVE_MAX_RATE });
      }
      await session.context.audioWorklet.addModule("static/live-capture.js");
      if (session.context.state === "suspended") await session.context.resume();
    } catch (err) {
      releaseMicrophone(session);
      live = null;
      updateButtons();
      el.liveStatus.textContent = "";
      const denied = err && (err.name === "NotAllowedError" || err.name === "SecurityError");
      showLiveError(
        denied
          ? "Microphone access was refused. Allow the microphone for this page and try again."
          : `Live mode could not start (${(err && (err.message || err.name)) || "unknown error"}).`,
      );
      return;
    }
    if (live !== session || session.state !== "connecting") {
      releaseMicrophone(session); // stopped while the microphone opened
      return;
    }
    session.rate = session.context.sampleRate;
    el.liveStatus.textContent = "Connecting to the service…";
    el.liveTimer.textContent = "0.0 s";
    el.liveTimerMax.textContent = "";
    el.liveNow.hidden = true;
    el.resultSection.hidden = true;
    el.timelinePlayer.pause();
    el.timelinePlayer.hidden = true;
    timeline.startLive({ peaks: session.peaks });

    const socket = new WebSocket(streamUrl());
    session.socket = socket;
    socket.binaryType = "arraybuffer";
    socket.addEventListener("open", () => {
      const start = { type: "start", format: "f32le", sample_rate: session.rate, channels: 1 };
      const key = el.keyInput.value.trim();
      if (key) start.api_key = key;
      socket.send(JSON.stringify(start));
    });
    socket.addEventListener("message", (event) => onLiveEvent(session, event));
    socket.addEventListener("close", (event) => onLiveClose(session, event));
  }

  /** The service is ready: the microphone's frames start to flow. */
  function startCapture(session, ready) {
    const context = session.context;
    session.source = context.createMediaStreamSource(session.stream);
    session.node = new AudioWorkletNode(context, "live-capture", {
      numberOfInputs: 1,
      numberOfOutputs: 1,
      outputChannelCount: [1],
      channelCount: 1,
      channelCountMode: "explicit",
      channelInterpretation: "speakers",
      processorOptions: { frameSamples: Math.round(session.rate * LIVE_FRAME_S) },
    });
    session.node.port.onmessage = (event) => sendFrame(session, event.data);
    // A silent path to the speakers keeps the graph running in every browser.
    const mute = context.createGain();
    mute.gain.value = 0;
    session.source.connect(session.node).connect(mute).connect(context.destination);

    session.state = "running";
    const max = Number(ready.max_seconds);
    session.maxSeconds = Number.isFinite(max) && max > 0 ? max : null;
    el.liveTimerMax.textContent = session.maxSeconds ? `of ${span(session.maxSeconds)}` : "";
    el.liveStatus.textContent = "Listening: speak now. Press “Stop live” when you are done.";
    el.liveNowHeading.textContent = "Hearing now";
    el.liveLabel.textContent = "…";
    el.liveConfidence.textContent = "Waiting for speech";
    el.liveSpeech.textContent = "";
    el.liveDelay.textContent = "—";
    el.liveNow.hidden = false;
    session.tick = window.setInterval(() => {
      el.liveTimer.textContent = `${liveSeconds(session).toFixed(1)} s`;
      timeline.growTo(liveSeconds(session));
    }, 200);
    updateButtons();
    announce("Live analysis started.");
  }

  function sendFrame(session, samples) {
    const socket = session.socket;
    if (session.state !== "running" || !socket || socket.readyState !== WebSocket.OPEN) return;
    socket.send(f32le(samples));
    session.sentSamples += samples.length;
    session.peaks.add(samples, session.rate);
    // Back-pressure shows as bytes waiting in the browser: say so rather than let results drift silently.
    if (!session.slowSaid && socket.bufferedAmount > session.rate * 4 * 3) {
      session.slowSaid = true;
      el.liveStatus.textContent = "The connection is slow: results will come late.";
    }
  }

  function onLiveEvent(session, event) {
    if (typeof event.data !== "string") return;
    let message;
    try {
      message = JSON.parse(event.data);
    } catch (_) {
      return;
    }
    if (!message || typeof message !== "object") return;
    switch (message.type) {
      case "ready":
        if (session.state !== "connecting") break;
        try {
          startCapture(session, message);
        } catch (err) {
          // e.g. a browser that cannot connect this microphone to this AudioContext
          const why = (err && (err.message || err.name)) || "unknown error";
          session.error = { message: `the microphone could not be connected (${why})` };
          session.socket.close(1000, "capture failed");
        }
        break;
      case "speech_start":
        el.liveSpeech.textContent = `Speech from ${clock(Number(message.time) || 0)}`;
        break;
      case "speech_end":
        el.liveSpeech.textContent =
          `Pause (speech ${clock(Number(message.start) || 0)}–${clock(Number(message.end) || 0)})`;
        break;
      case "window": {
        const w = {
          start: Number(message.start),
          end: Number(message.end),
          label: String(message.label),
          confidence: Number(message.confidence),
          probabilities: message.probabilities || {},
          uncertain: Boolean(message.uncertain),
          uncertain_reasons: message.uncertain_reasons || [],
        };
        if (!Number.isFinite(w.start) || !Number.isFinite(w.end)) break;
        const lag = sentSeconds(session) - w.end;
        timeline.addWindow(w, lag);
        if (w.label !== session.lastLabel) {
          session.lastLabel = w.label;
          el.liveLabel.textContent = w.label; // polite aria-live: heard when it changes
        }
        el.liveConfidence.textContent =
          `${(100 * w.confidence).toFixed(0)}% confident` + (w.uncertain ? " (uncertain)" : "");
        el.liveDelay.textContent = `${Math.max(0, lag).toFixed(1)} s`;
        el.liveDelay.dataset.lagS = lag.toFixed(3);
        break;
      }
      case "warning": {
        const warning = message.warning || {};
        if (warning.message) el.liveStatus.textContent = sentence(warning.message);
        break;
      }
      case "summary":
        session.summary = true;
        if (message.timeline && typeof message.timeline === "object") {
          const stamp = new Date().toISOString().slice(0, 19).replace(/[-:]/g, "").replace("T", "-");
          timeline.show(message.timeline, {
            title: "Live timeline",
            name: "this live session",
            stem: `live-${stamp}`,
            duration: Number(message.audio_seconds) || liveSeconds(session),
            peaks: session.peaks,
            live: true,
            hasAudio: false,
          });
        }
        if (!session.error) {
          el.liveStatus.textContent = "Stopped. The summary of the session is below.";
          announce("Live analysis stopped; the summary is below.");
        }
        break;
      case "error":
        session.error = message.error || {};
        if (session.error.type === "unauthorized" || session.error.type === "forbidden") el.keyDetails.open = true;
        break;
      default:
        break; // an event this page does not know yet
    }
  }

  function onLiveClose(session, event) {
    window.clearTimeout(session.summaryWait);
    releaseMicrophone(session);
    if (session.state === "closed") return; // stopped before it was streaming
    const before = session.state;
    session.state = "closed";
    if (live === session) live = null;
    el.liveTimer.textContent = `${liveSeconds(session).toFixed(1)} s`;
    el.liveNowHeading.textContent = "Last heard";
    updateButtons();
    if (session.summary && !session.error) return; // the normal end: the summary is shown
    // The service ended the stream (at its length limit it still sends the summary first), or the
    // connection broke: say why in the service's words, and keep what was drawn.
    let reason = null;
    if (session.error && session.error.message) reason = sentence(session.error.message);
    else if (event.reason) reason = sentence(event.reason);
    else reason = sentence(CLOSE_WORDS[event.code] || `the connection closed (code ${event.code})`);
    const drawn = session.summary
      ? " The summary of what was heard is below."
      : timeline.windows.length
        ? " What was drawn is kept below."
        : "";
    const message =
      before === "connecting"
        ? `Live mode could not start: ${reason}`
        : `Live analysis stopped: ${reason}${drawn} Press “Start live” to start again.`;
    el.liveStatus.textContent = "";
    showLiveError(message);
    announce(message);
  }

  function stopLive() {
    const session = live;
    if (!session || session.state === "stopping" || session.state === "closed") return;
    const wasRunning = session.state === "running";
    session.state = "stopping";
    session.stopAsked = true;
    releaseMicrophone(session);
    updateButtons();
    const socket = session.socket;
    if (!socket || socket.readyState !== WebSocket.OPEN || !wasRunning) {
      // Not streaming yet: nothing to summarise.
      if (socket) socket.close(1000, "stopped by the user");
      session.state = "closed";
      if (live === session) live = null;
      el.liveStatus.textContent = "Stopped.";
      updateButtons();
      return;
    }
    socket.send(JSON.stringify({ type: "stop" }));
    el.liveStatus.textContent = "Finishing: waiting for the summary…";
    session.summaryWait = window.setTimeout(() => {
      if (socket.readyState === WebSocket.OPEN) {
        session.error = { message: "the service did not send the summary in time" };
        socket.close(1000, "no summary");
      }
    }, SUMMARY_WAIT_MS);
  }

  // --- wiring ------------------------------------------------------------------------------------

  el.recordButton.addEventListener("click", () => {
    if (recording && recording.state === "recording") stopRecording();
    else if (!recording) startRecording();
  });

  el.fileInput.addEventListener("change", () => {
    const file = el.fileInput.files && el.fileInput.files[0];
    if (file) setClip(file, file.name, "file", null);
    el.fileInput.value = ""; // so choosing the same file again fires "change"
  });

  ["dragenter", "dragover"].forEach((type) =>
    el.dropzone.addEventListener(type, (event) => {
      event.preventDefault();
      el.dropzone.classList.add("is-dragover");
    }),
  );
  ["dragleave", "dragend"].forEach((type) =>
    el.dropzone.addEventListener(type, () => el.dropzone.classList.remove("is-dragover")),
  );
  el.dropzone.addEventListener("drop", (event) => {
    event.preventDefault();
    el.dropzone.classList.remove("is-dragover");
    if (recording) return;
    const file = event.dataTransfer && event.dataTransfer.files && event.dataTransfer.files[0];
    if (file) setClip(file, file.name, "file", null);
  });
  // A file dropped next to the zone would otherwise make the browser leave the page to open it.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());

  el.sendButton.addEventListener("click", send);
  el.cancelButton.addEventListener("click", cancelJob);
  el.liveButton.addEventListener("click", () => {
    if (live) stopLive();
    else startLive();
  });
  // Leaving the page ends a live session (the service then closes it too).
  window.addEventListener("pagehide", () => {
    if (live && live.socket) live.socket.close(1000, "page closed");
  });

  ["play", "seeked", "timeupdate", "pause"].forEach((type) => el.timelinePlayer.addEventListener(type, followPlayer));
  // One player at a time.
  el.timelinePlayer.addEventListener("play", () => el.player.pause());
  el.player.addEventListener("play", () => el.timelinePlayer.pause());

  // Chrome's MediaRecorder writes WebM without a duration, so the player shows none; seeking far past
  // the end makes the browser find the real end, after which the player goes back to the start.
  el.player.addEventListener("loadedmetadata", () => {
    if (el.player.duration !== Infinity) return;
    const onDurationChange = () => {
      if (!Number.isFinite(el.player.duration)) return;
      el.player.removeEventListener("durationchange", onDurationChange);
      el.player.currentTime = 0;
    };
    el.player.addEventListener("durationchange", onDurationChange);
    el.player.currentTime = 1e7;
  });

  try {
    el.keyInput.value = window.sessionStorage.getItem(KEY_STORAGE) || "";
  } catch (_) {
    // Storage can be disabled; the key then lasts as long as the page.
  }
  el.keyInput.addEventListener("input", () => {
    try {
      const key = el.keyInput.value.trim();
      if (key) window.sessionStorage.setItem(KEY_STORAGE, key);
      else window.sessionStorage.removeItem(KEY_STORAGE);
    } catch (_) {
      // see above
    }
  });
  el.keyInput.addEventListener("change", loadInfo);

  let resizeFrame = 0;
  window.addEventListener("resize", () => {
    if (el.resultSection.hidden) return;
    window.cancelAnimationFrame(resizeFrame);
    resizeFrame = window.requestAnimationFrame(() => drawWaveform(shownBuffer));
  });

  // The waveform's colours come from the colour scheme; repaint it when the scheme changes.
  const darkScheme = window.matchMedia("(prefers-color-scheme: dark)");
  const repaint = () => {
    if (!el.resultSection.hidden) drawWaveform(shownBuffer);
  };
  if (darkScheme.addEventListener) darkScheme.addEventListener("change", repaint);

  applyLimits();
  updateButtons();
  loadInfo();
})();
