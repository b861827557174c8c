"""Emotion over a live stream: speech regions and windows found as the audio arrives.

``LiveSegmenter`` takes a stream's 16 kHz audio in pieces of any length and follows the offline
timeline's rules (``shared.timeline``) with what it has heard so far:

1. **Speech.** Each 512-sample frame is scored by the stream's own Silero VAD (``VadStream``); the
   probabilities since the last finished region go through the offline segmentation
   (``shared.vad.speech_regions``) again after every piece. A region is *started* when it first shows
   up, and *finished* once another region follows it, or once the audio has run on past its end for
   the pause that ends speech plus the padding and the shortest speech that could still change it.
2. **Windows.** While a region lasts, every window of ``window_seconds`` starting each ``hop_seconds``
   from its start is handed out as soon as the audio reaches its end; when the region finishes, the
   window aligned to its end follows, as ``window_spans`` gives it. A finished region shorter than a
   window gets one window reaching ``context_seconds`` into the non-speech on either side, never into a
   neighbouring region: on the right, never past the first frame above the threshold after it, less the
   padding (where the next region will start); it is handed out as soon as that is known.
3. **Memory.** The audio kept is the last few windows' worth, whatever the stream's length; the
   probabilities, from the last finished region on (at most the longest region).

The caller embeds and classifies each ``WindowReady``; ``regions`` and ``window_spans`` then say where
everything lies, for a whole timeline at the end (``shared.timeline.assemble_timeline``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from shared.constants import SAMPLE_RATE
from shared.timeline import TimelineOptions, on_grid, window_spans
from shared.vad import VAD_FRAME, SpeechRegion, VadStream, speech_regions

#: Seconds of audio kept beyond what the windows in progress need, whatever the stream's length.
_KEEP_MARGIN_S = 2.0


@dataclass(frozen=True)
class SpeechStarted:
    """The VAD heard speech begin at ``time`` (s from the stream's start, the padding included)."""

    time: float


@dataclass(frozen=True)
class SpeechEnded:
    """A speech region is finished: ``region`` (its index in ``LiveSegmenter.regions``) is final."""

    region: SpeechRegion
    index: int


@dataclass(frozen=True)
class WindowReady:
    """A window whose audio has all arrived: ``[start, end)`` s, in region ``region`` (an index into
    ``LiveSegmenter.regions`` once that region is finished)."""

    start: float
    end: float
    region: int
    waveform: np.ndarray = field(repr=False, compare=False)


LiveEvent = SpeechStarted | SpeechEnded | WindowReady


class LiveSegmenter:
    """The speech regions and windows of one live stream (not thread-safe: one stream feeds it).

    Args:
        options: the windows and VAD settings (those of the offline timeline).
        vad: the stream's own VAD scorer (``SpeechDetector.stream()``).
    """

    def __init__(self, options: TimelineOptions, vad: VadStream) -> None:
        self.options = options
        self._vad = vad
        v = options.vad
        #: A region is final once the audio runs this far past its end (s).
        self.settle_s = (v.min_silence_ms + v.pad_ms + v.min_speech_ms) / 1000
        self._keep = int(
            (options.window_seconds + 2 * options.context_seconds + self.settle_s + _KEEP_MARGIN_S)
            * SAMPLE_RATE
        )
        self.samples = 0  # samples received
        self._audio = np.zeros(0, dtype=np.float32)
        self._audio_start = 0  # sample index of _audio[0]
        self._frames = 0  # frames scored
        self._base = 0  # frame index of _probs[0]
        self._probs = np.zeros(0, dtype=np.float32)
        #: The finished regions, in order, and the windows handed out in each.
        self.regions: list[SpeechRegion] = []
        self.window_spans: list[list[tuple[float, float]]] = []
        self._open_start: float | None = None  # start of the region in progress
        self._open_spans: list[tuple[float, float]] = []
        self._offset = 0.0  # next regular window's offset from the open region's start
        self._waiting: list[tuple[int, float]] = []  # (short region, lower bound) awaiting its context
        self.finished = False

    @property
    def seconds(self) -> float:
        """Audio received (s)."""
        return self.samples / SAMPLE_RATE

    def feed(self, samples: np.ndarray) -> list[LiveEvent]:
        """Take the next 16 kHz mono float32 samples; the events they complete, in time order."""
        if self.finished:
            raise RuntimeError("the stream has finished")
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        self.samples += samples.shape[0]
        self._audio = np.concatenate([self._audio, samples]) if self._audio.size else samples
        probs = self._vad.feed(samples)
        self._probs = np.concatenate([self._probs, probs])
        self._frames += probs.shape[0]
        events = self._update(final=False)
        self._trim()
        return events

    def finish(self) -> list[LiveEvent]:
        """The stream has ended: every region finishes, every window due is handed out."""
        if self.finished:
            return []
        tail = self.samples - self._frames * VAD_FRAME
        if tail > 0:  # the last partial frame, zero-padded as the offline VAD pads it
            pad = np.zeros(VAD_FRAME - tail, dtype=np.float32)
            probs = self._vad.feed(pad)
            self._probs = np.concatenate([self._probs, probs])
            self._frames += probs.shape[0]
        events = self._update(final=True)
        self.finished = True
        return events

    # -- regions ---------------------------------------------------------------------------------

    def _update(self, final: bool) -> list[LiveEvent]:
        base_s = self._base * VAD_FRAME / SAMPLE_RATE
        n_samples = min(self.samples, self._frames * VAD_FRAME) - self._base * VAD_FRAME
        heard = base_s + n_samples / SAMPLE_RATE
        offset = self._base * VAD_FRAME
        stamps = [  # in samples, then seconds: the same floats as the offline segmentation's
            SpeechRegion(
                (offset + round(r.start * SAMPLE_RATE)) / SAMPLE_RATE,
                (offset + round(r.end * SAMPLE_RATE)) / SAMPLE_RATE,
            )
            for r in speech_regions(self._probs, n_samples, self.options.vad)
        ]
        events: list[LiveEvent] = []
        for i, stamp in enumerate(stamps):
            if self._open_start is None:
                self._open_start = max(stamp.start, self.regions[-1].end if self.regions else 0.0)
                self._open_spans, self._offset = [], 0.0
                events.append(SpeechStarted(round(self._open_start, 3)))
            done = final or i < len(stamps) - 1 or stamp.end + self.settle_s <= heard
            # an open region's end so far is where the audio stops; its final end may lie up to the
            # pause that ends speech, less the padding, before that
            v = self.options.vad
            events += self._regular_windows(
                stamp.end if done else stamp.end - max(0, v.min_silence_ms - v.pad_ms) / 1000
            )
            if done:
                events += self._finish_region(SpeechRegion(self._open_start, stamp.end))
                self._drop_probabilities_before(stamp.end)
        if not stamps and self._open_start is None:
            # no speech in sight: keep only the frames a speech onset and its padding could still need
            v = self.options.vad
            keep = int(np.ceil((v.pad_ms + v.min_speech_ms + 100) / 1000 * SAMPLE_RATE / VAD_FRAME))
            self._drop_probabilities_before((self._frames - keep) * VAD_FRAME / SAMPLE_RATE)
        events += self._context_windows(heard, final)
        return events

    def _regular_windows(self, end: float) -> list[LiveEvent]:
        """The open region's windows that fit before ``end`` (its end so far) and are not out yet, at the
        offsets ``window_spans`` steps through."""
        assert self._open_start is not None
        out: list[LiveEvent] = []
        w = self.options.window_seconds
        length = end - self._open_start
        while length > w and self._offset + w <= length + 1e-9:
            span = (on_grid(self._open_start + self._offset), on_grid(self._open_start + self._offset + w))
            self._offset += self.options.hop_seconds
            out += self._hand_out([span], len(self.regions))
        return out

    def _finish_region(self, region: SpeechRegion) -> list[LiveEvent]:
        index = len(self.regions)
        self.regions.append(region)
        self.window_spans.append(self._open_spans)
        events: list[LiveEvent] = []
        if region.duration > self.options.window_seconds:
            out = set(self._open_spans)
            rest = [s for s in window_spans(region, self.options) if s not in out]
            events += self._hand_out(rest, index)
        elif region.duration >= self.options.min_window_seconds and not self._open_spans:
            lower = self.regions[index - 1].end if index else 0.0
            self._waiting.append((index, max(lower, region.start - self.options.context_seconds)))
        events.append(SpeechEnded(region, index))
        self._open_start = None
        self._open_spans = []
        return events

    def _context_windows(self, heard: float, final: bool) -> list[LiveEvent]:
        """The windows of finished short regions whose right-hand context is now known.

        Offline, such a window reaches ``context_seconds`` past the region but never into the next region
        (``neighbour_bounds``). Live, the next region's start is the first frame after the region whose
        probability crosses the threshold, less the padding, as the offline segmentation pads it; with no
        such frame once ``context_seconds`` have been heard, the window takes the whole context."""
        out: list[LiveEvent] = []
        reach = self.options.context_seconds
        pad = self.options.vad.pad_ms / 1000
        still: list[tuple[int, float]] = []
        for index, lower in self._waiting:
            region = self.regions[index]
            onset = self._onset_after(region.end)
            upper = region.end + reach
            if onset is not None:
                upper = min(upper, max(region.end, onset - pad))
            elif not final and heard < upper + pad:  # an onset before then starts a region before upper
                still.append((index, lower))
                continue
            upper = min(upper, self.seconds)
            span = window_spans(region, self.options, lower, upper)
            out += self._hand_out(span, index, into=self.window_spans[index])
        self._waiting = still
        return out

    def _onset_after(self, seconds: float) -> float | None:
        """The time of the first frame at or after ``seconds`` whose speech probability crosses the
        threshold, among the frames kept; None if there is none."""
        first = max(0, int(np.ceil(seconds * SAMPLE_RATE / VAD_FRAME)) - self._base)
        above = np.flatnonzero(self._probs[first:] > self.options.vad.threshold)
        if above.size == 0:
            return None
        return (self._base + first + int(above[0])) * VAD_FRAME / SAMPLE_RATE

    def _hand_out(
        self, spans: list[tuple[float, float]], region: int, into: list[tuple[float, float]] | None = None
    ) -> list[LiveEvent]:
        target = self._open_spans if into is None else into
        out: list[LiveEvent] = []
        for start, end in spans:
            target.append((start, end))
            out.append(WindowReady(start, end, region, self._cut(start, end)))
        return out

    # -- memory ----------------------------------------------------------------------------------

    def _cut(self, start: float, end: float) -> np.ndarray:
        first = max(0, int(round(start * SAMPLE_RATE)) - self._audio_start)
        last = max(first, min(self.samples, int(round(end * SAMPLE_RATE))) - self._audio_start)
        return np.array(self._audio[first:last])

    def _drop_probabilities_before(self, seconds: float) -> None:
        if self._waiting:  # a short region's window still looks for the next onset after it
            seconds = min(seconds, self.regions[self._waiting[0][0]].end)
        frame = max(self._base, min(self._frames, int(seconds * SAMPLE_RATE) // VAD_FRAME))
        self._probs = self._probs[frame - self._base :]
        self._base = frame

    def _trim(self) -> None:
        """Drop the audio no window can need any more (and never keep more than a bounded stretch)."""
        reach = self.options.context_seconds
        needed = [self.samples - self._keep]
        if self._open_start is not None:
            needed.append(int((self._open_start + self._offset - reach) * SAMPLE_RATE))
        needed += [int(lower * SAMPLE_RATE) for _, lower in self._waiting]
        keep_from = max(self.samples - self._keep, min(needed))
        if keep_from > self._audio_start:
            self._audio = self._audio[keep_from - self._audio_start :]
            self._audio_start = keep_from
