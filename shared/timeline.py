"""Emotion over time in a long recording: speech regions, windows, merged segments and a summary.

How a recording is analysed (``TimelineAnalyzer.analyse``):

1. **Speech regions.** The file is decoded block by block (``shared.audio.AudioStream``) and scored by
   Silero VAD (``shared.vad``); silence and non-speech are never classified.
2. **Windows.** Inside each region, windows of ``window_seconds`` start every ``hop_seconds``; the last
   one is aligned to the region's end. A region shorter than a window gets one window of full length
   centred on it, taking in the non-speech around it (never any of a neighbouring region), as a clip
   sent to ``/v1/predict`` holds the silence around its utterance. Regions shorter than
   ``min_window_seconds`` count as speech but are not classified.
3. **Embeddings, computed once.** The file is decoded a second time, one region at a time, so memory
   holds one region and never the whole file. With the ``pooled`` method a speech encoder runs once
   over each region (in pieces of bounded length that overlap, ``FrameEncoder.encode_frames``) and
   every window is pooled out of the region's frame-level hidden states; consecutive short regions share
   one padded forward pass (``GROUP_REGIONS``, ``GROUP_SECONDS``). The ``exact`` method (and every
   backbone without frames, such as eGeMAPS) embeds each window's own audio, as ``/v1/predict`` does.
4. **Classification.** All windows go through ``Predictor.classify`` in one call; when the bundle has a
   session classifier, the recording is the session (its windows' statistics normalise them), unless
   ``session`` is off.
5. **Time.** Each window owns the stretch of its region nearest its centre (boundaries at the midpoints
   between window centres). With ``smoothing`` k > 1, a window's probabilities are the mean over the k
   windows around it in its region. Consecutive stretches with one label form a segment; segments with
   one label separated by a pause of at most ``merge_gap_seconds`` are one segment.
6. **Summary.** Speech time, time per emotion, duration-weighted mean probabilities, the dominant emotion
   (most time), the number of label changes, and the time labelled uncertain.

A file that holds no speech gives an empty timeline with ``reason == "no_speech"``, not an error. A file
cut short or damaged gives the timeline of the part that decoded, with a ``truncated`` warning.
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np

from shared.audio import AudioStream
from shared.backbones.base import FrameEncoder, HiddenStates
from shared.constants import EMOTIONS, SAMPLE_RATE
from shared.errors import SERError
from shared.predictor import Prediction, Predictor
from shared.session import SessionStats
from shared.vad import SpeechDetector, SpeechRegion, VadSettings

log = logging.getLogger(__name__)

T = TypeVar("T")
Method = Literal["pooled", "exact"]
METHODS = ("pooled", "exact")
#: Why a timeline is empty.
NO_SPEECH = "no_speech"


class TimelineCancelled(SERError):
    """The analysis was stopped on request (a cancelled job)."""

    error_type = "cancelled"


@dataclass(frozen=True)
class TimelineOptions:
    """How a recording is cut into windows and turned into segments.

    Attributes:
        window_seconds: window length (s).
        hop_seconds: time between window starts (s).
        min_window_seconds: speech regions shorter than this are not classified (s).
        method: ``"pooled"`` (encode each region once, pool windows from its frames) or ``"exact"``
            (encode each window's own audio). Backbones without frames always use ``exact``.
        overlap_seconds: context on each side of an encoder piece, for ``pooled`` regions longer than the
            encoder's window (s).
        smoothing: windows averaged around each window (1: none).
        merge_gap_seconds: same-label segments separated by a pause this short are merged (s).
        context_seconds: the window of a region shorter than ``window_seconds`` takes in this much of the
            non-speech on each side (never into a neighbouring region), as a clip holds the silence
            around its utterance (s).
        session: when the bundle has a session classifier, normalise the recording's windows with their
            own statistics (the recording is one session); False classifies every window alone, as
            ``/v1/predict`` classifies a clip.
        vad: the speech segmentation parameters.
        block_seconds: decoding block length (s): memory holds about one block plus one region.
    """

    window_seconds: float = 3.0
    hop_seconds: float = 1.0
    min_window_seconds: float = 0.5
    method: Method = "pooled"
    overlap_seconds: float = 2.0
    smoothing: int = 1
    merge_gap_seconds: float = 1.0
    context_seconds: float = 1.0
    session: bool = True
    vad: VadSettings = field(default_factory=VadSettings)
    block_seconds: float = 10.0

    def __post_init__(self) -> None:
        if not 0.5 <= self.window_seconds <= 30.0:
            raise ValueError(f"window_seconds must lie in [0.5, 30], got {self.window_seconds}")
        if not 0.1 <= self.hop_seconds <= self.window_seconds:
            raise ValueError(f"hop_seconds must lie in [0.1, window_seconds], got {self.hop_seconds}")
        if not 0.05 <= self.min_window_seconds <= self.window_seconds:
            raise ValueError(
                f"min_window_seconds must lie in [0.05, window_seconds], got {self.min_window_seconds}"
            )
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; accepted: {', '.join(METHODS)}")
        if self.smoothing < 1:
            raise ValueError(f"smoothing must be at least 1, got {self.smoothing}")
        if self.overlap_seconds < 0 or self.merge_gap_seconds < 0 or self.block_seconds <= 0:
            raise ValueError(
                "overlap_seconds and merge_gap_seconds must be 0 or more, block_seconds positive"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TimelineWindow:
    """One classified window: ``[start, end)`` seconds and its prediction."""

    start: float
    end: float
    label: str
    confidence: float
    probabilities: dict[str, float]
    uncertain: bool
    uncertain_reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class TimelineSegment:
    """Consecutive speech with one label: ``[start, end)`` seconds.

    Attributes:
        confidence: the label's duration-weighted mean probability over the segment.
        speech_s: the speech it covers (less than ``end - start`` when it spans a merged pause).
        windows: how many windows it holds.
    """

    start: float
    end: float
    label: str
    confidence: float
    speech_s: float
    windows: int


@dataclass(frozen=True)
class TimelineSummary:
    """The whole recording at a glance (seconds).

    Attributes:
        duration_s: the audio decoded.
        speech_s: time inside speech regions.
        classified_s: speech time that windows labelled (regions shorter than a minimum window are not).
        emotion_seconds: classified time per emotion.
        mean_probabilities: duration-weighted mean probability of every emotion over the classified time.
        dominant: the emotion with the most time, or None without classified speech.
        changes: label changes between consecutive segments.
        uncertain_s: classified time whose window was uncertain.
    """

    duration_s: float
    speech_s: float
    classified_s: float
    emotion_seconds: dict[str, float]
    mean_probabilities: dict[str, float]
    dominant: str | None
    changes: int
    uncertain_s: float


@dataclass(frozen=True)
class Timeline:
    """A recording's emotion timeline.

    Attributes:
        regions: the speech regions.
        windows, segments, summary: see the classes.
        reason: ``"no_speech"`` when the timeline is empty because the VAD found no speech, else None.
        warnings: what the client should know (a truncated file, skipped short regions).
        classifier: ``"single"`` or ``"session"`` (the recording's windows normalised together).
        method: how embeddings were computed (``"pooled"`` or ``"exact"``).
    """

    regions: list[SpeechRegion]
    windows: list[TimelineWindow]
    segments: list[TimelineSegment]
    summary: TimelineSummary
    reason: str | None
    warnings: list[str]
    classifier: str
    method: str
    options: TimelineOptions

    def to_dict(self) -> dict[str, Any]:
        """JSON values; times rounded to milliseconds, probabilities to 4 decimals."""
        return {
            "summary": _rounded(asdict(self.summary)),
            "segments": [_rounded(asdict(s)) for s in self.segments],
            "windows": [_rounded(asdict(w)) for w in self.windows],
            "speech_regions": [{"start": round(r.start, 3), "end": round(r.end, 3)} for r in self.regions],
            "reason": self.reason,
            "warnings": list(self.warnings),
            "classifier": self.classifier,
            "method": self.method,
            "options": self.options.to_dict(),
        }

    def windows_csv(self) -> str:
        """One CSV row per window: start, end, label, confidence, uncertain, then every emotion's
        probability."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["start", "end", "label", "confidence", "uncertain", *EMOTIONS])
        for w in self.windows:
            writer.writerow(
                [f"{w.start:.3f}", f"{w.end:.3f}", w.label, f"{w.confidence:.4f}", int(w.uncertain)]
                + [f"{w.probabilities[e]:.4f}" for e in EMOTIONS]
            )
        return out.getvalue()

    def segments_rttm(self, file_id: str) -> str:
        """The segments in RTTM (the diarization tools' format), the emotion as the speaker name."""
        return "".join(
            f"SPEAKER {file_id} 1 {s.start:.3f} {s.end - s.start:.3f} <NA> <NA> {s.label} <NA> <NA>\n"
            for s in self.segments
        )


def _rounded(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, float):
            out[key] = round(value, 4 if key == "confidence" else 3)
        elif isinstance(value, dict):
            out[key] = {k: round(v, 4 if key != "emotion_seconds" else 3) for k, v in value.items()}
        elif isinstance(value, tuple):
            out[key] = list(value)
        else:
            out[key] = value
    return out


def window_spans(
    region: SpeechRegion, options: TimelineOptions, lower: float | None = None, upper: float | None = None
) -> list[tuple[float, float]]:
    """The windows of one region, ``[(start, end)]`` in seconds (empty below ``min_window_seconds``).

    A region shorter than a window gets one window that also takes in up to ``context_seconds`` of the
    non-speech on each side, never past ``lower`` or ``upper`` (the ends of the neighbouring regions, or
    the recording's ends): the classifier was trained on utterances with the silence around them, as
    ``/v1/predict`` receives them, not on speech cut to the syllable. Bounds lie on a 10 ms grid.
    """
    length = region.duration
    if length < options.min_window_seconds:
        return []
    if length <= options.window_seconds:
        reach = options.context_seconds
        start = region.start if lower is None else max(min(lower, region.start), region.start - reach)
        end = region.end if upper is None else min(max(upper, region.end), region.end + reach)
        return [(on_grid(start), on_grid(end))]
    spans = []
    offset = 0.0
    while offset + options.window_seconds <= length + 1e-9:
        spans.append((region.start + offset, region.start + offset + options.window_seconds))
        offset += options.hop_seconds
    if spans[-1][1] < region.end - 1e-9:
        spans.append((region.end - options.window_seconds, region.end))
    return [(on_grid(start), on_grid(end)) for start, end in spans]


#: Window bounds are rounded to this grid (s): the hop of frame-level acoustic features, so that a
#: window's analysis frames fall on the recording's 10 ms grid whatever the VAD's 32 ms steps.
WINDOW_GRID_S = 0.01


def on_grid(t: float) -> float:
    return round(round(t / WINDOW_GRID_S) * WINDOW_GRID_S, 6)


def neighbour_bounds(regions: Sequence[SpeechRegion], duration: float) -> list[tuple[float, float]]:
    """For each region, how far its window may reach: the ends of the regions around it (or the
    recording's ends). A window never takes in a neighbouring region's audio, and a live stream knows the
    bound on the right as soon as the next region begins (``shared.live``)."""
    lowers = [0.0] + [region.end for region in regions[:-1]]
    uppers = [region.start for region in regions[1:]] + [duration]
    return list(zip(lowers, uppers, strict=True)) if regions else []


#: Consecutive regions embedded in one model call: at most this many, holding at most this much audio (s).
GROUP_REGIONS = 8
GROUP_SECONDS = 30.0

ModelRunner = Callable[[Callable[[], T]], T]


def _run_here(fn: Callable[[], T]) -> T:
    return fn()


class TimelineAnalyzer:
    """Turns recordings into timelines with one predictor and one speech detector.

    Args:
        predictor: the loaded bundle and backbone.
        options: windows, method and VAD settings.
        detector: a loaded Silero VAD (one is loaded when omitted); its settings are replaced by
            ``options.vad``.
        run_model: runs a piece of model work and returns its result; the service passes one that runs it
            on the thread that owns the predictor, so that timeline work interleaves with single
            predictions. By default the work runs on the calling thread.
    """

    def __init__(
        self,
        predictor: Predictor,
        options: TimelineOptions | None = None,
        detector: SpeechDetector | None = None,
        run_model: ModelRunner[Any] | None = None,
    ) -> None:
        self.predictor = predictor
        self.options = options or TimelineOptions()
        self.detector = detector or SpeechDetector(self.options.vad)
        self.detector.settings = self.options.vad
        self.run_model: ModelRunner[Any] = run_model or _run_here
        self._lock = threading.Lock()

    @property
    def method(self) -> str:
        """The method in use: ``exact`` whenever the backbone gives no frames."""
        if self.options.method == "pooled" and isinstance(self.predictor.backbone, FrameEncoder):
            return "pooled"
        return "exact"

    def analyse(
        self,
        source: bytes | str | os.PathLike[str],
        *,
        max_seconds: float | None = None,
        progress: Callable[[float, float], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        name: str | None = None,
    ) -> Timeline:
        """The timeline of one recording.

        Args:
            source: the file's bytes or its path (a path is decoded twice from disk, never held whole).
            max_seconds: refuse recordings longer than this (``AudioTooLongError``; decoding stops there).
            progress: called with (fraction done in [0, 1], audio seconds done) as the work advances.
            should_stop: polled between regions; when it returns True, ``TimelineCancelled`` is raised.
            name: how error messages name the file (None: a path's file name; empty: not at all).

        Raises:
            AudioError: the file cannot be decoded at all, or is too long.
            TimelineCancelled: ``should_stop`` said so.
        """
        stream = AudioStream(
            source,
            max_seconds=max_seconds,
            block_seconds=self.options.block_seconds,
            keep_partial=True,
            name=name,
        )
        # The speech pass counts for a tenth of the work; embedding the regions for the rest.
        vad_share = 0.1

        def scored(samples: int) -> None:
            declared = stream.declared_seconds  # FFmpeg's formats tell it once decoding has begun
            if progress is not None and declared:
                progress(min(vad_share, vad_share * samples / SAMPLE_RATE / declared), 0.0)
            if should_stop is not None and should_stop():
                raise TimelineCancelled("the analysis was cancelled")

        with self._lock:
            probabilities, n_samples = self.detector.probabilities(stream, progress=scored)
            regions = self.detector.regions(probabilities, n_samples)
        duration = n_samples / SAMPLE_RATE
        warnings = []
        declared = stream.declared_seconds
        if stream.truncated:
            detail = f" ({stream.error.message})" if stream.error is not None else ""
            declared_text = f" of the {declared:.2f} s its header declares" if declared else ""
            warnings.append(
                f"truncated: the file is cut short or damaged; the timeline covers the {duration:.2f} s "
                f"that decoded{declared_text}{detail}"
            )
        spans = [
            window_spans(region, self.options, lower, upper)
            for region, (lower, upper) in zip(regions, neighbour_bounds(regions, duration), strict=True)
        ]
        skipped = sum(region.duration for region, s in zip(regions, spans, strict=True) if not s)
        if skipped > 0:
            warnings.append(
                f"short_regions: {skipped:.2f} s of speech lies in regions shorter than "
                f"{self.options.min_window_seconds:g} s and is not classified"
            )
        embeddings = self._embed(
            stream, regions, spans, n_samples, duration, vad_share, progress, should_stop
        )
        if embeddings is None:
            return empty_timeline(self.options, self.method, regions, duration, warnings)
        stats = SessionStats.of(embeddings) if self.options.session else None
        predictions = self.run_model(lambda: self.predictor.classify(embeddings, session=stats))
        if progress is not None:
            progress(1.0, duration)
        return assemble_timeline(self.options, self.method, regions, spans, predictions, duration, warnings)

    # -- embeddings ------------------------------------------------------------------------------

    def _embed(
        self,
        stream: AudioStream,
        regions: list[SpeechRegion],
        spans: list[list[tuple[float, float]]],
        n_samples: int,
        duration: float,
        vad_share: float,
        progress: Callable[[float, float], None] | None,
        should_stop: Callable[[], bool] | None,
    ) -> np.ndarray | None:
        """Window embeddings ``[n_windows, d]`` in time order, region by region (None: no window)."""
        todo = [(region, s) for region, s in zip(regions, spans, strict=True) if s]
        if not todo:
            return None
        out: list[np.ndarray] = []
        buffer = np.zeros(0, dtype=np.float32)
        buffer_start = 0  # sample index of buffer[0]
        blocks = iter(stream)
        # short regions share a model call: a padded batch is faster than one region at a time
        group: list[tuple[np.ndarray, list[tuple[float, float]]]] = []
        grouped = 0

        def flush(until: float) -> None:
            nonlocal group, grouped
            if group:
                out.append(self.run_model(functools.partial(self._embed_regions, group)))
                group, grouped = [], 0
            if progress is not None:
                progress(vad_share + (1 - vad_share) * until / max(duration, 1e-9) * 0.999, until)

        for region, region_spans in todo:
            if should_stop is not None and should_stop():
                raise TimelineCancelled("the analysis was cancelled")
            # the audio the windows need: the region, or more where a short region's window reaches out
            begin = min(region.start, region_spans[0][0])
            first = int(round(begin * SAMPLE_RATE))
            last = min(n_samples, int(round(max(region.end, region_spans[-1][1]) * SAMPLE_RATE)))
            while buffer_start + buffer.shape[0] < last:
                block = next(blocks, None)
                if block is None:
                    break
                buffer = np.concatenate([buffer, block]) if buffer.size else block
                # drop audio before this region: it is never needed again
                if first > buffer_start:
                    cut = min(buffer.shape[0], first - buffer_start)
                    buffer, buffer_start = buffer[cut:], buffer_start + cut
            wave = np.array(buffer[max(0, first - buffer_start) : last - buffer_start])
            if wave.shape[0] == 0:
                break
            group.append((wave, [(start - begin, end - begin) for start, end in region_spans]))
            grouped += wave.shape[0]
            cut = max(0, min(buffer.shape[0], last - buffer_start))
            buffer, buffer_start = buffer[cut:], buffer_start + cut
            if len(group) >= GROUP_REGIONS or grouped >= GROUP_SECONDS * SAMPLE_RATE:
                flush(region.end)
        flush(duration)
        return np.concatenate(out) if out else None

    def _embed_regions(self, group: Sequence[tuple[np.ndarray, Sequence[tuple[float, float]]]]) -> np.ndarray:
        """Embeddings ``[n_windows, d]`` of the windows of several regions (audio, windows in seconds from
        the audio's start), in order."""
        backbone = self.predictor.backbone
        if self.method == "pooled":
            assert isinstance(backbone, FrameEncoder)
            states = backbone.encode_frames_batch(
                [wave for wave, _ in group], overlap_seconds=self.options.overlap_seconds
            )
            return np.concatenate(
                [self._pool_windows(s, spans) for s, (_, spans) in zip(states, group, strict=True)]
            )
        pieces = [
            wave[int(round(s * SAMPLE_RATE)) : int(round(e * SAMPLE_RATE))]
            for wave, spans in group
            for s, e in spans
        ]
        return self.predictor.embed_batch(pieces)

    def _pool_windows(self, states: HiddenStates, spans: Sequence[tuple[float, float]]) -> np.ndarray:
        """The windows ``spans`` (seconds) pooled out of one region's hidden states, ``[len(spans), d]``."""
        backbone = self.predictor.backbone
        assert isinstance(backbone, FrameEncoder)
        receptive_s = states.receptive / states.sample_rate
        rows = []
        for start, end in spans:
            first, last = states.frame_range(start, max(start + 1e-3, end - receptive_s + 1e-6))
            if last <= first:
                first, last = states.frame_range(start, end)
            rows.append(backbone.pool(states, first, max(last, first + 1)))
        return np.stack(rows)

    def _embed_region(self, wave: np.ndarray, spans: Sequence[tuple[float, float]]) -> np.ndarray:
        """Embeddings ``[len(spans), d]`` of windows ``spans`` (seconds from the region's start)."""
        return self._embed_regions([(wave, spans)])


def empty_timeline(
    options: TimelineOptions, method: str, regions: list[SpeechRegion], duration: float, warnings: list[str]
) -> Timeline:
    """The timeline of a recording none of whose speech was classified."""
    speech = sum(r.duration for r in regions)
    return Timeline(
        regions=regions,
        windows=[],
        segments=[],
        summary=TimelineSummary(
            duration_s=duration,
            speech_s=speech,
            classified_s=0.0,
            emotion_seconds={e: 0.0 for e in EMOTIONS},
            mean_probabilities={e: 0.0 for e in EMOTIONS},
            dominant=None,
            changes=0,
            uncertain_s=0.0,
        ),
        reason=NO_SPEECH if not regions else None,
        warnings=warnings,
        classifier="single",
        method=method,
        options=options,
    )


def assemble_timeline(
    options: TimelineOptions,
    method: str,
    regions: list[SpeechRegion],
    spans: list[list[tuple[float, float]]],
    predictions: list[Prediction],
    duration: float,
    warnings: list[str],
) -> Timeline:
    """The timeline from the regions, each region's window spans (in time order) and the windows'
    predictions, in the same order (``options`` gives the smoothing and the merge gap)."""
    probs = np.array([[p.probabilities[e] for e in EMOTIONS] for p in predictions])
    windows: list[TimelineWindow] = []
    # (start, end, row of probabilities, uncertain) of each window's stretch of time
    cells: list[tuple[float, float, np.ndarray, bool, int]] = []
    k = 0
    for region, region_spans in zip(regions, spans, strict=True):
        if not region_spans:
            continue
        rows = probs[k : k + len(region_spans)]
        smoothed = _smooth(rows, options.smoothing)
        centres = [(s + e) / 2 for s, e in region_spans]
        bounds = [
            region.start,
            *[(a + b) / 2 for a, b in zip(centres, centres[1:], strict=False)],
            region.end,
        ]
        for j, (start, end) in enumerate(region_spans):
            p = predictions[k + j]
            row = smoothed[j]
            best = int(np.argmax(row))
            windows.append(
                TimelineWindow(
                    start=start,
                    end=end,
                    label=EMOTIONS[best],
                    confidence=float(row[best]),
                    probabilities={e: float(v) for e, v in zip(EMOTIONS, row, strict=True)},
                    uncertain=p.uncertain,
                    uncertain_reasons=p.uncertain_reasons,
                )
            )
            cells.append((bounds[j], bounds[j + 1], row, p.uncertain, len(windows) - 1))
        k += len(region_spans)
    segments = _segments(cells, options.merge_gap_seconds)
    weights = np.array([end - start for start, end, *_ in cells])
    classified = float(weights.sum())
    rows = np.stack([row for _, _, row, _, _ in cells])
    labels = [int(np.argmax(row)) for row in rows]
    seconds = {e: float(weights[[lab == i for lab in labels]].sum()) for i, e in enumerate(EMOTIONS)}
    mean = (weights[:, None] * rows).sum(axis=0) / max(classified, 1e-12)
    changes = sum(a.label != b.label for a, b in zip(segments, segments[1:], strict=False))
    return Timeline(
        regions=regions,
        windows=windows,
        segments=segments,
        summary=TimelineSummary(
            duration_s=duration,
            speech_s=sum(r.duration for r in regions),
            classified_s=classified,
            emotion_seconds=seconds,
            mean_probabilities={e: float(v) for e, v in zip(EMOTIONS, mean, strict=True)},
            dominant=max(seconds, key=lambda e: seconds[e]) if classified > 0 else None,
            changes=int(changes),
            uncertain_s=float(sum(w for w, (_, _, _, u, _) in zip(weights, cells, strict=True) if u)),
        ),
        reason=None,
        warnings=warnings,
        classifier=predictions[0].classifier if predictions else "single",
        method=method,
        options=options,
    )


def _segments(
    cells: list[tuple[float, float, np.ndarray, bool, int]], merge_gap_seconds: float
) -> list[TimelineSegment]:
    """Runs of stretches with one label, merged across pauses up to ``merge_gap_seconds``."""
    runs: list[dict[str, Any]] = []
    for start, end, row, _, _ in cells:
        best = int(np.argmax(row))
        last = runs[-1] if runs else None
        if last is not None and last["label"] == best and start - last["end"] <= merge_gap_seconds + 1e-9:
            last["end"] = end
            last["speech"] += end - start
            last["mass"] += (end - start) * float(row[best])
            last["windows"] += 1
        else:
            runs.append(
                {
                    "start": start,
                    "end": end,
                    "label": best,
                    "speech": end - start,
                    "mass": (end - start) * float(row[best]),
                    "windows": 1,
                }
            )
    return [
        TimelineSegment(
            start=r["start"],
            end=r["end"],
            label=EMOTIONS[r["label"]],
            confidence=r["mass"] / max(r["speech"], 1e-12),
            speech_s=r["speech"],
            windows=r["windows"],
        )
        for r in runs
    ]


def _smooth(rows: np.ndarray, k: int) -> np.ndarray:
    """Each row replaced by the mean of the ``k`` rows centred on it (fewer at the edges)."""
    if k <= 1 or rows.shape[0] <= 1:
        return rows
    half = k // 2
    out = np.empty_like(rows)
    for i in range(rows.shape[0]):
        out[i] = rows[max(0, i - half) : i + half + 1].mean(axis=0)
    return out
