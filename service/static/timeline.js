/* The timeline view of the SER page: coloured emotion bands over the waveform, the six probability
   lines, a time axis, the player's cursor, the segment list, the summary and the CSV/JSON downloads.

   app.js shows a whole timeline at once (an uploaded recording's, or a live session's summary) with
   show(), or lets one grow window by window in live mode with addWindow(). Times are seconds from the
   start of the recording (live: from the first audio sent). Plain browser JavaScript, no build step. */
"use strict";

window.SERTimeline = (function () {
  const INITIALS = { neutral: "N", happy: "H", sad: "S", angry: "A", fear: "F", disgust: "D" };
  // Each emotion's line has its own dash pattern as well as its own colour (never colour alone).
  const DASHES = { neutral: "", happy: "8 4", sad: "2 3", angry: "10 3 2 3", fear: "4 4", disgust: "1 2 6 2" };
  // Waveform peaks kept per second of audio (10 ms each).
  const PEAKS_PER_SECOND = 100;
  // Windows closer than this (s) count as touching: one line, one band.
  const JOIN_S = 0.05;

  const $ = (id) => document.getElementById(id);

  /** 83.4 -> "1:23.4"; 3723 -> "1:02:03.0" (rounded once, so 59.96 reads 1:00.0). */
  function clock(t, decimals = 1) {
    const unit = 10 ** decimals;
    const total = Math.round(Math.abs(t) * unit);
    const h = Math.floor(total / (3600 * unit));
    const m = Math.floor(total / (60 * unit)) % 60;
    const ss = ((total % (60 * unit)) / unit).toFixed(decimals).padStart(decimals ? 3 + decimals : 2, "0");
    const sign = t < 0 && total > 0 ? "−" : "";
    return h ? `${sign}${h}:${String(m).padStart(2, "0")}:${ss}` : `${sign}${m}:${ss}`;
  }

  /** A length in plain words: "12.3 s", "4 min 05 s", "1 h 02 min". */
  function span(seconds) {
    if (!Number.isFinite(seconds)) return "unknown";
    if (seconds < 59.95) return `${seconds.toFixed(1)} s`;
    const whole = Math.round(seconds);
    if (whole < 3600) return `${Math.floor(whole / 60)} min ${String(whole % 60).padStart(2, "0")} s`;
    const minutes = Math.round(seconds / 60);
    const rest = minutes % 60;
    return `${Math.floor(minutes / 60)} h` + (rest ? ` ${String(rest).padStart(2, "0")} min` : "");
  }

  function percent(p) {
    return `${Math.round(100 * p)}%`;
  }

  /** Each window's own stretch of time: overlapping neighbours split their overlap at their centres. */
  function windowSpans(windows) {
    const sorted = windows.slice().sort((a, b) => a.start - b.start);
    return sorted.map((w, i) => {
      const centre = (w.start + w.end) / 2;
      const prev = sorted[i - 1];
      const next = sorted[i + 1];
      const left = prev && prev.end > w.start ? Math.max(w.start, (prev.start + prev.end + 2 * centre) / 4) : w.start;
      const right = next && next.start < w.end ? Math.min(w.end, (next.start + next.end + 2 * centre) / 4) : w.end;
      return { window: w, left, right: Math.max(left, right) };
    });
  }

  /** Consecutive window stretches with one label, merged: what live mode shows until the summary comes. */
  function bandsFromWindows(windows) {
    const bands = [];
    for (const { window: w, left, right } of windowSpans(windows)) {
      const last = bands[bands.length - 1];
      if (last && last.label === w.label && left - last.end <= JOIN_S) {
        last.end = Math.max(last.end, right);
        last.windows += 1;
        last.sum += w.confidence * (right - left);
      } else {
        bands.push({ start: left, end: right, label: w.label, windows: 1, sum: w.confidence * (right - left) });
      }
    }
    for (const band of bands) band.confidence = band.end > band.start ? band.sum / (band.end - band.start) : 0;
    return bands;
  }

  /** One CSV row per window: start,end,label,confidence,uncertain, then the probability of each label. */
  function timelineCsv(windows, labels) {
    const names = labels.slice();
    for (const w of windows) {
      for (const name of Object.keys(w.probabilities || {})) if (!names.includes(name)) names.push(name);
    }
    const quote = (v) => (/[",\n]/.test(String(v)) ? `"${String(v).replace(/"/g, '""')}"` : String(v));
    const rows = [["start", "end", "label", "confidence", "uncertain", ...names].join(",")];
    for (const w of windows) {
      const p = w.probabilities || {};
      const probabilities = names.map((n) => p[n] ?? "");
      const uncertain = w.uncertain ? "true" : "false";
      rows.push([w.start, w.end, quote(w.label), w.confidence, uncertain, ...probabilities].join(","));
    }
    return rows.join("\r\n") + "\r\n";
  }

  /** Min/max peaks (PEAKS_PER_SECOND a second) of a decoded AudioBuffer, its channels mixed. */
  function peaksFromBuffer(buffer) {
    const channels = [];
    for (let c = 0; c < buffer.numberOfChannels; c++) channels.push(buffer.getChannelData(c));
    const step = buffer.sampleRate / PEAKS_PER_SECOND;
    const count = Math.ceil(buffer.length / step);
    const lows = new Float32Array(count);
    const highs = new Float32Array(count);
    for (let k = 0; k < count; k++) {
      let lo = Infinity;
      let hi = -Infinity;
      const end = Math.min(buffer.length, Math.floor((k + 1) * step));
      for (let i = Math.floor(k * step); i < end; i++) {
        let v = 0;
        for (const data of channels) v += data[i];
        v /= channels.length;
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
      lows[k] = lo === Infinity ? 0 : lo;
      highs[k] = hi === -Infinity ? 0 : hi;
    }
    return { lows, highs, count };
  }

  /** Peaks that grow as live audio is sent: ``add(samples, rate)`` takes a Float32Array at ``rate`` Hz. */
  function livePeaks() {
    const minute = PEAKS_PER_SECOND * 60;
    const peaks = { lows: new Float32Array(minute), highs: new Float32Array(minute), count: 0 };
    let lo = Infinity;
    let hi = -Infinity;
    let filled = 0; // samples in the peak being gathered (the remainder carries a fraction of a sample)
    const push = () => {
      if (peaks.count === peaks.lows.length) {
        const grow = (a) => {
          const b = new Float32Array(a.length * 2);
          b.set(a);
          return b;
        };
        peaks.lows = grow(peaks.lows);
        peaks.highs = grow(peaks.highs);
      }
      peaks.lows[peaks.count] = lo;
      peaks.highs[peaks.count] = hi;
      peaks.count += 1;
    };
    peaks.add = (samples, rate) => {
      const step = rate / PEAKS_PER_SECOND;
      for (let i = 0; i < samples.length; i++) {
        const v = samples[i];
        if (v < lo) lo = v;
        if (v > hi) hi = v;
        filled += 1;
        if (filled >= step) {
          push();
          filled -= step;
          lo = Infinity;
          hi = -Infinity;
        }
      }
    };
    return peaks;
  }

  /**
   * The timeline view on the page's elements. ``hooks.seek(t)`` plays from ``t`` seconds and returns
   * whether there is audio to seek (live mode has none); ``hooks.labels()`` gives the label order.
   */
  function create(hooks) {
    const el = {
      section: $("timeline-section"),
      title: $("timeline-title"),
      forName: $("timeline-for"),
      notes: $("timeline-notes"),
      legend: $("legend"),
      timeline: $("timeline"),
      track: $("timeline-track"),
      bands: $("timeline-bands"),
      wave: $("timeline-wave"),
      lines: $("timeline-lines"),
      mark: $("timeline-mark"),
      cursor: $("timeline-cursor"),
      axis: $("timeline-axis"),
      hint: $("timeline-hint"),
      summary: $("timeline-summary"),
      dominant: $("summary-dominant"),
      changes: $("summary-changes"),
      speech: $("summary-speech"),
      duration: $("summary-duration"),
      uncertainRow: $("summary-uncertain-row"),
      uncertain: $("summary-uncertain"),
      emotionTime: $("emotion-time"),
      segments: $("segments"),
      liveWindows: $("live-windows"),
      windowCount: $("live-window-count"),
      windowList: $("window-list"),
      downloads: $("downloads"),
      csv: $("download-csv"),
      json: $("download-json"),
    };
    const svgNs = el.lines.namespaceURI;
    const state = {
      duration: 1,
      windows: [],
      segments: null, // the service's segments; null: made from the windows (live)
      peaks: null,
      mark: 0,
      cursor: null,
      live: false,
      hasAudio: false,
    };
    let frame = 0;
    const urls = [];

    function labelOrder() {
      const order = hooks.labels().slice();
      for (const w of state.windows) {
        for (const name of Object.keys(w.probabilities || {})) if (!order.includes(name)) order.push(name);
      }
      return order;
    }

    function renderLegend() {
      el.legend.replaceChildren();
      for (const name of labelOrder()) {
        const item = document.createElement("li");
        item.dataset.emotion = name;
        const swatch = document.createElement("span");
        swatch.className = "swatch";
        swatch.dataset.emotion = name;
        swatch.textContent = INITIALS[name] || name.charAt(0).toUpperCase();
        const line = document.createElementNS(svgNs, "svg");
        line.setAttribute("viewBox", "0 0 28 6");
        line.setAttribute("class", "legend-line");
        line.setAttribute("aria-hidden", "true");
        const stroke = document.createElementNS(svgNs, "line");
        stroke.setAttribute("x1", "0");
        stroke.setAttribute("y1", "3");
        stroke.setAttribute("x2", "28");
        stroke.setAttribute("y2", "3");
        stroke.setAttribute("class", "prob-line");
        stroke.dataset.emotion = name;
        if (DASHES[name]) stroke.setAttribute("stroke-dasharray", DASHES[name]);
        line.appendChild(stroke);
        const text = document.createElement("span");
        text.className = "legend-name";
        text.textContent = name;
        item.append(swatch, text, line);
        el.legend.appendChild(item);
      }
    }

    function fraction(t) {
      return Math.min(1, Math.max(0, t / state.duration));
    }

    function currentBands() {
      return state.segments || bandsFromWindows(state.windows);
    }

    function renderBands() {
      const width = el.track.clientWidth || 600;
      el.bands.replaceChildren();
      for (const band of currentBands()) {
        const node = document.createElement("div");
        node.className = "band";
        node.dataset.emotion = band.label;
        node.dataset.start = String(band.start);
        node.dataset.end = String(band.end);
        node.title = `${band.label}, ${clock(band.start)}–${clock(band.end)}`;
        node.style.left = `${(100 * fraction(band.start)).toFixed(3)}%`;
        node.style.width = `${(100 * (fraction(band.end) - fraction(band.start))).toFixed(3)}%`;
        const tag = document.createElement("span");
        tag.className = "band-tag";
        // The label's name where it fits, its initial (see the legend) where it does not.
        const pixels = width * (fraction(band.end) - fraction(band.start));
        if (pixels >= 8 * band.label.length + 10) {
          tag.textContent = band.label;
        } else if (pixels >= 9) {
          tag.textContent = INITIALS[band.label] || band.label.charAt(0).toUpperCase();
          tag.classList.add("is-initial");
        }
        node.appendChild(tag);
        el.bands.appendChild(node);
      }
    }

    function renderLines() {
      el.lines.replaceChildren();
      const spans = windowSpans(state.windows);
      const x = (t) => (1000 * fraction(t)).toFixed(2);
      for (const name of labelOrder()) {
        let d = "";
        let lastRight = -Infinity;
        for (const { window: w, left, right } of spans) {
          const y = (100 * (1 - Math.min(1, Math.max(0, Number((w.probabilities || {})[name]) || 0)))).toFixed(2);
          d += left - lastRight <= JOIN_S ? `L${x(left)} ${y}` : `M${x(left)} ${y}`;
          d += `L${x(right)} ${y}`;
          lastRight = right;
        }
        if (!d) continue;
        const path = document.createElementNS(svgNs, "path");
        path.setAttribute("d", d);
        path.setAttribute("class", "prob-line");
        path.setAttribute("vector-effect", "non-scaling-stroke");
        path.dataset.emotion = name;
        if (DASHES[name]) path.setAttribute("stroke-dasharray", DASHES[name]);
        el.lines.appendChild(path);
      }
    }

    function renderAxis() {
      el.axis.replaceChildren();
      const width = el.axis.clientWidth || 600;
      // Whole seconds from 5 s on; a label every 90 px at most.
      const steps = [0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200];
      const step =
        steps.find((s) => (s >= 1 || state.duration < 5) && state.duration / s <= width / 90) || 7200;
      for (let t = 0; t <= state.duration + 1e-6; t += step) {
        const tick = document.createElement("span");
        tick.className = "tick";
        tick.style.left = `${(100 * fraction(t)).toFixed(3)}%`;
        tick.textContent = clock(t, step < 1 ? 1 : 0);
        if (t > 0 && fraction(t) > 0.97) tick.classList.add("tick-end");
        el.axis.appendChild(tick);
      }
    }

    function drawWave() {
      const { ctx, width, height } = clearedCanvas(el.wave);
      const peaks = state.peaks;
      if (!peaks || !peaks.count) return;
      const mid = height / 2 + 8; // below the band tags
      const columns = Math.floor(width);
      const lows = new Float32Array(columns);
      const highs = new Float32Array(columns);
      let top = 0;
      for (let c = 0; c < columns; c++) {
        const from = Math.floor(((c / columns) * state.duration) * PEAKS_PER_SECOND);
        const to = Math.max(from + 1, Math.floor((((c + 1) / columns) * state.duration) * PEAKS_PER_SECOND));
        let lo = 0;
        let hi = 0;
        for (let k = from; k < to && k < peaks.count; k++) {
          lo = Math.min(lo, peaks.lows[k]);
          hi = Math.max(hi, peaks.highs[k]);
        }
        lows[c] = lo;
        highs[c] = hi;
        top = Math.max(top, -lo, hi);
      }
      // Scaled to the peak so quiet speech is still visible.
      const scale = top > 0 ? (0.9 * (height / 2 - 8)) / top : 0;
      ctx.fillStyle = getComputedStyle(el.wave).color || "#111827";
      for (let c = 0; c < columns; c++) {
        const y0 = mid - highs[c] * scale;
        const y1 = mid - lows[c] * scale;
        ctx.fillRect(c, y0, 1, Math.max(1, y1 - y0));
      }
    }

    function placeMarkers() {
      el.mark.style.left = `${(100 * fraction(state.mark)).toFixed(3)}%`;
      if (state.cursor === null) {
        el.cursor.hidden = true;
      } else {
        el.cursor.hidden = false;
        el.cursor.style.left = `${(100 * fraction(state.cursor)).toFixed(3)}%`;
      }
      el.timeline.setAttribute("aria-valuemax", state.duration.toFixed(1));
      el.timeline.setAttribute("aria-valuenow", state.mark.toFixed(1));
      el.timeline.setAttribute("aria-valuetext", describe(state.mark));
    }

    /** "1:02.0, happy" — for the slider's screen reader text. */
    function describe(t) {
      const band = currentBands().find((b) => b.start <= t && t < b.end);
      return `${clock(t)}, ${band ? band.label : "no speech"}`;
    }

    function renderSegments() {
      el.segments.replaceChildren();
      const bands = currentBands();
      if (!bands.length) {
        const empty = document.createElement("li");
        empty.className = "segments-empty muted";
        empty.textContent = state.live ? "No speech yet." : "No segments: no speech was labelled.";
        el.segments.appendChild(empty);
        return;
      }
      for (const band of bands) {
        const item = document.createElement("li");
        const button = document.createElement("button");
        button.type = "button";
        button.className = "segment";
        button.dataset.start = String(band.start);
        button.dataset.emotion = band.label;
        const swatch = document.createElement("span");
        swatch.className = "swatch";
        swatch.dataset.emotion = band.label;
        swatch.setAttribute("aria-hidden", "true");
        swatch.textContent = INITIALS[band.label] || band.label.charAt(0).toUpperCase();
        const time = document.createElement("span");
        time.className = "segment-time";
        time.textContent = `${clock(band.start)}–${clock(band.end)}`;
        const label = document.createElement("span");
        label.className = "segment-label";
        label.textContent = band.label;
        const confidence = document.createElement("span");
        confidence.className = "segment-confidence";
        confidence.textContent = Number.isFinite(band.confidence) ? percent(band.confidence) : "";
        button.append(swatch, time, label, confidence);
        button.addEventListener("click", () => goTo(band.start, true));
        item.appendChild(button);
        el.segments.appendChild(item);
      }
    }

    function renderSummary(summary) {
      if (!summary) {
        el.summary.hidden = true;
        return;
      }
      el.summary.hidden = false;
      el.dominant.textContent = summary.dominant || "none (no speech)";
      el.changes.textContent = String(summary.changes ?? 0);
      const speech = Number(summary.speech_s);
      const duration = Number(summary.duration_s);
      el.speech.textContent =
        span(speech) + (duration > 0 ? ` of ${span(duration)} (${percent(speech / duration)})` : "");
      el.duration.textContent = span(duration);
      const uncertain = Number(summary.uncertain_s) || 0;
      el.uncertainRow.hidden = uncertain <= 0;
      el.uncertain.textContent = `${span(uncertain)} of the labelled time: treat those labels with caution.`;

      const seconds = summary.emotion_seconds || {};
      const total = Object.values(seconds).reduce((a, b) => a + (Number(b) || 0), 0);
      el.emotionTime.replaceChildren();
      const order = labelOrder().filter((n) => n in seconds);
      for (const name of Object.keys(seconds)) if (!order.includes(name)) order.push(name);
      for (const name of order) {
        const value = Number(seconds[name]) || 0;
        const fraction = total > 0 ? value / total : 0;
        const row = barRow(name, fraction, name === summary.dominant, `${value.toFixed(1)} s`);
        el.emotionTime.appendChild(row);
      }
    }

    function setNotes(notes) {
      el.notes.replaceChildren();
      for (const note of notes) {
        const p = document.createElement("p");
        p.className = "uncertain";
        p.setAttribute("role", "note");
        p.textContent = note;
        el.notes.appendChild(p);
      }
    }

    function setDownloads(result, stem) {
      while (urls.length) URL.revokeObjectURL(urls.pop());
      if (!result) {
        el.downloads.hidden = true;
        return;
      }
      const csv = new Blob([timelineCsv(result.windows || [], hooks.labels())], { type: "text/csv" });
      const json = new Blob([JSON.stringify(result, null, 2) + "\n"], { type: "application/json" });
      el.csv.href = URL.createObjectURL(csv);
      el.json.href = URL.createObjectURL(json);
      urls.push(el.csv.href, el.json.href);
      el.csv.download = `${stem}-timeline.csv`;
      el.json.download = `${stem}-timeline.json`;
      el.downloads.hidden = false;
    }

    function render() {
      window.cancelAnimationFrame(frame);
      frame = 0;
      renderBands();
      renderLines();
      renderAxis();
      drawWave();
      placeMarkers();
    }

    function scheduleRender() {
      if (!frame) frame = window.requestAnimationFrame(render);
    }

    /** Moves the keyboard mark to ``t``; with ``seek``, asks the player to play from there. */
    function goTo(t, seek) {
      state.mark = Math.min(state.duration, Math.max(0, t));
      el.mark.hidden = false;
      placeMarkers();
      if (seek) hooks.seek(state.mark);
    }

    el.timeline.addEventListener("click", (event) => {
      const rect = el.timeline.getBoundingClientRect();
      if (rect.width <= 0) return;
      goTo(((event.clientX - rect.left) / rect.width) * state.duration, true);
    });

    el.timeline.addEventListener("keydown", (event) => {
      const step = event.shiftKey ? 10 : 1;
      const moves = {
        ArrowRight: state.mark + step,
        ArrowUp: state.mark + step,
        ArrowLeft: state.mark - step,
        ArrowDown: state.mark - step,
        PageUp: state.mark + 10,
        PageDown: state.mark - 10,
        Home: 0,
        End: state.duration,
      };
      if (event.key in moves) {
        event.preventDefault();
        goTo(moves[event.key], false);
      } else if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        goTo(state.mark, true);
      }
    });
    el.timeline.addEventListener("focus", () => {
      el.mark.hidden = false;
      placeMarkers();
    });

    let resizeFrame = 0;
    window.addEventListener("resize", () => {
      if (el.section.hidden) return;
      window.cancelAnimationFrame(resizeFrame);
      resizeFrame = window.requestAnimationFrame(render);
    });
    const darkScheme = window.matchMedia("(prefers-color-scheme: dark)");
    if (darkScheme.addEventListener) darkScheme.addEventListener("change", () => !el.section.hidden && drawWave());

    return {
      /**
       * Shows a whole timeline: ``result`` is a TimelineResponse (summary, segments, windows, reason,
       * warnings); ``options``: {title, name, stem, duration, buffer, peaks, live, hasAudio, notes}.
       */
      show(result, options) {
        state.live = Boolean(options.live);
        state.hasAudio = Boolean(options.hasAudio);
        state.windows = (result.windows || []).slice();
        state.segments = (result.segments || []).slice();
        const summary = result.summary || {};
        const ends = [...state.windows.map((w) => w.end), ...state.segments.map((s) => s.end)];
        state.duration = Math.max(0.5, Number(options.duration) || 0, Number(summary.duration_s) || 0, ...ends);
        if (options.buffer) state.peaks = peaksFromBuffer(options.buffer);
        else if (options.peaks) state.peaks = options.peaks;
        else state.peaks = null;
        state.mark = 0;
        state.cursor = state.hasAudio ? 0 : null;
        el.title.textContent = options.title || "Timeline";
        el.forName.textContent = options.name ? `for ${options.name}` : "";
        el.hint.hidden = !state.hasAudio;
        const notes = (options.notes || []).slice();
        if (result.reason === "no_speech") {
          const what = state.live ? "this live session" : "this recording";
          notes.unshift(`No speech was found in ${what}, so there is no emotion to show.`);
        }
        for (const warning of result.warnings || []) notes.push(warningText(String(warning)));
        setNotes(notes);
        renderLegend();
        renderSegments();
        renderSummary(result.summary || null);
        setDownloads(result, options.stem || "timeline");
        el.section.hidden = false;
        render();
      },

      /** Starts an empty live timeline. */
      startLive(options) {
        state.live = true;
        state.hasAudio = false;
        state.windows = [];
        state.segments = null;
        state.peaks = options.peaks;
        state.duration = 20;
        state.mark = 0;
        state.cursor = null;
        el.title.textContent = options.title || "Live timeline";
        el.forName.textContent = "";
        el.hint.hidden = true;
        setNotes([]);
        renderLegend();
        renderSegments();
        renderSummary(null);
        setDownloads(null);
        el.windowList.replaceChildren();
        el.windowCount.textContent = "0";
        el.liveWindows.hidden = false;
        el.section.hidden = false;
        render();
      },

      /** Adds one live window; ``lagS``: how far behind the audio sent it arrived, in seconds. */
      addWindow(w, lagS) {
        state.windows.push(w);
        const item = document.createElement("li");
        item.className = "live-window";
        item.dataset.start = String(w.start);
        item.dataset.end = String(w.end);
        item.dataset.label = w.label;
        item.dataset.lagS = lagS.toFixed(3);
        item.textContent =
          `${clock(w.start)}–${clock(w.end)} ${w.label} ${percent(w.confidence)}` +
          (w.uncertain ? " (uncertain)" : "") +
          `, ${lagS.toFixed(1)} s behind`;
        el.windowList.appendChild(item);
        el.windowCount.textContent = String(state.windows.length);
        renderSegments();
        scheduleRender();
      },

      /** The live time axis grows with the audio sent (``seconds``), 10 s at a time. */
      growTo(seconds) {
        const duration = Math.max(20, Math.ceil((seconds + 2) / 10) * 10);
        if (duration !== state.duration) {
          state.duration = duration;
          scheduleRender();
        } else if (state.peaks) {
          scheduleRender();
        }
      },

      addNote(note) {
        const p = document.createElement("p");
        p.className = "uncertain";
        p.setAttribute("role", "note");
        p.textContent = note;
        el.notes.appendChild(p);
      },

      /** The player's position, in seconds (null: no cursor). */
      setCursor(t) {
        state.cursor = t;
        placeMarkers();
      },

      get windows() {
        return state.windows;
      },
    };
  }

  /** A timeline warning from the service in plain words (the service's own text kept). */
  /** ``canvas`` sized to its box at the screen's pixel density and cleared; drawing is in CSS pixels. */
  function clearedCanvas(canvas) {
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(1, canvas.clientWidth);
    const height = Math.max(1, canvas.clientHeight);
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    return { ctx, width, height };
  }

  /** One row of a bar chart: the emotion's name, a bar filled to ``fraction`` (0-1), and ``valueText``. */
  function barRow(name, fraction, isTop, valueText) {
    const row = document.createElement("li");
    row.className = "bar-row" + (isTop ? " is-top" : "");
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
    fill.style.width = `${(100 * Math.min(1, Math.max(0, fraction))).toFixed(1)}%`;
    track.appendChild(fill);
    const value = document.createElement("span");
    value.className = "bar-value";
    value.textContent = valueText;
    row.append(label, track, value);
    return row;
  }

  function warningText(warning) {
    const [kind, ...rest] = warning.split(":");
    const detail = rest.join(":").trim();
    if (kind === "truncated") {
      const why = detail ? ` (${detail})` : "";
      return `The file seems cut short or damaged; the timeline covers the part that could be read${why}.`;
    }
    if (kind === "short_regions") {
      return `Some speech was too short to label${detail ? ` (${detail})` : ""}.`;
    }
    return warning;
  }

  return { create, clock, span, barRow, clearedCanvas, livePeaks, timelineCsv, PEAKS_PER_SECOND };
})();
