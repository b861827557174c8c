/* The SER page: record (MediaRecorder) or pick/drop a file, check its length here, send it to
   POST v1/predict, and show the label, the six probabilities, the waveform and the timings.

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
  };

  const limits = { minSeconds: 0.5, maxSeconds: 30, maxUploadBytes: null };
  let labels = DEFAULT_LABELS.slice();
  let clip = null; // {blob, name, origin, duration, buffer, problem}
  let clipSerial = 0;
  let busy = false;
  let recording = null; // {state: "starting" | "recording" | "stopping", recorder, startedAt, auto, tick, autoStop}
  let shownBuffer = null; // the AudioBuffer drawn in the result, redrawn on resize
  let infoRetry = 0;

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
      message = message.charAt(0).toUpperCase() + message.slice(1);
      if (!/[.!?]$/.test(message)) message += ".";
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

  /** Sets ``c.problem`` to why this clip cannot be sent (or null) and updates the page. */
  function checkClip(c) {
    let problem = null;
    const what = c.origin === "recording" ? "The recording" : "This file";
    if (c.blob.size === 0) {
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
    // Decoding a file larger than the service accepts would only waste memory.
    if (blob.size > 0 && !(limits.maxUploadBytes && blob.size > limits.maxUploadBytes)) {
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
    const undecodable = !buffer && origin === "file" && blob.size > 0;
    el.clipNote.textContent = undecodable
      ? "This browser cannot read this file, so it cannot check its length; the service will still try."
      : "";
    el.clipNote.hidden = !undecodable;
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
    el.sendButton.disabled = busy || recordingNow || !clip || clip.pending || clip.problem !== null;
    el.recordButton.disabled = recording !== null && recording.state === "starting";
    el.fileInput.disabled = recordingNow;
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
    if (!clip || busy || clip.problem !== null || clip.pending) return;
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
      const row = document.createElement("li");
      row.className = "bar-row" + (name === top ? " is-top" : "");
      row.dataset.emotion = name;

      const label = document.createElement("span");
      label.className = "bar-name";
      label.textContent = name;

      const track = document.createElement("span");
      track.className = "bar-track";
      track.setAttribute("aria-hidden", "true");
      const fill = document.createElement("span");
      fill.className = "bar-fill";
      fill.dataset.emotion = name;
      fill.style.display = "block";
      fill.style.width = `${(100 * Math.min(1, Math.max(0, p))).toFixed(1)}%`;
      track.appendChild(fill);

      const value = document.createElement("span");
      value.className = "bar-value";
      value.textContent = percent(p);

      row.append(label, track, value);
      el.bars.appendChild(row);
    }
  }

  function drawWaveform(buffer) {
    const canvas = el.waveform;
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(1, canvas.clientWidth);
    const height = Math.max(1, canvas.clientHeight);
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
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
