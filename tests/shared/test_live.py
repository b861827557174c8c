"""The live segmenter against the offline timeline: the same speech regions and windows from audio fed
in frames, each window handed out once its audio has arrived, with bounded memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.constants import SAMPLE_RATE
from shared.live import LiveSegmenter, SpeechEnded, SpeechStarted, WindowReady
from shared.signals import speech_like
from shared.timeline import TimelineOptions, neighbour_bounds, window_spans
from shared.vad import SpeechDetector


@pytest.fixture(scope="module")
def detector() -> SpeechDetector:
    return SpeechDetector()


def quiet(seconds: float, rng: np.random.Generator) -> np.ndarray:
    return (0.002 * rng.standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32)


def conversation(turns: int = 6, seed: int = 0) -> np.ndarray:
    """Utterances of 1-6 s (short ones get one window, long ones several) between pauses of 0.4-2.5 s."""
    rng = np.random.default_rng(seed)
    parts = [quiet(0.5, rng)]
    for _ in range(turns):
        parts += [speech_like(float(rng.uniform(1.0, 6.0)), seed=3) * float(rng.uniform(0.5, 1.0))]
        parts += [quiet(float(rng.uniform(0.4, 2.5)), rng)]
    return np.concatenate(parts).astype(np.float32)


def offline(detector: SpeechDetector, wave: np.ndarray, options: TimelineOptions) -> tuple[list, list]:
    detector.settings = options.vad
    regions = detector.detect([wave])
    duration = wave.shape[0] / SAMPLE_RATE
    spans = [
        window_spans(r, options, lo, hi)
        for r, (lo, hi) in zip(regions, neighbour_bounds(regions, duration), strict=True)
    ]
    return regions, spans


def feed(segmenter: LiveSegmenter, wave: np.ndarray, frame: int) -> list[tuple[float, object]]:
    """Feed ``wave`` in frames; each event with the audio seconds received when it came out."""
    events = []
    for i in range(0, wave.shape[0], frame):
        got = segmenter.feed(wave[i : i + frame])
        events += [(min(wave.shape[0], i + frame) / SAMPLE_RATE, e) for e in got]
    events += [(wave.shape[0] / SAMPLE_RATE, e) for e in segmenter.finish()]
    return events


@pytest.mark.parametrize("frame", [1600, 512, 4000, 777])
def test_live_regions_and_windows_are_the_offline_ones(detector: SpeechDetector, frame: int) -> None:
    options = TimelineOptions()
    wave = conversation()
    regions, spans = offline(detector, wave, options)
    assert len(regions) == 6 and any(len(s) > 1 for s in spans)
    segmenter = LiveSegmenter(options, detector.stream())
    events = feed(segmenter, wave, frame)
    assert segmenter.regions == regions
    assert segmenter.window_spans == spans
    windows = [(t, e) for t, e in events if isinstance(e, WindowReady)]
    assert sorted((e.start, e.end) for _, e in windows) == sorted(s for ss in spans for s in ss)
    for heard, window in windows:
        assert heard >= window.end - 1e-9  # its audio had all arrived
        assert window.waveform.shape[0] == pytest.approx((window.end - window.start) * SAMPLE_RATE, abs=1)
        # the short region's window waits for its right-hand context, at most a frame and the padding
        assert heard - window.end <= frame / SAMPLE_RATE + options.vad.pad_ms / 1000 + 0.8
    starts = [e for _, e in events if isinstance(e, SpeechStarted)]
    ends = [e for _, e in events if isinstance(e, SpeechEnded)]
    assert [s.time for s in starts] == [round(r.start, 3) for r in regions]
    assert [e.region for e in ends] == regions


def test_a_window_holds_the_streams_own_samples(detector: SpeechDetector) -> None:
    wave = conversation(turns=3, seed=2)
    segmenter = LiveSegmenter(TimelineOptions(), detector.stream())
    for _, event in feed(segmenter, wave, 1600):
        if isinstance(event, WindowReady):
            first = int(round(event.start * SAMPLE_RATE))
            np.testing.assert_array_equal(event.waveform, wave[first : first + event.waveform.shape[0]])


def test_memory_stays_bounded_over_a_long_stream(detector: SpeechDetector) -> None:
    """Twenty minutes of talk and silence: the audio and probabilities kept stay a few windows long."""
    options = TimelineOptions()
    segmenter = LiveSegmenter(options, detector.stream())
    rng = np.random.default_rng(0)
    talk = conversation(turns=4, seed=1)
    silence = quiet(30.0, rng)
    most_audio = most_probs = 0
    windows = 0
    for _ in range(int(20 * 60 / (talk.shape[0] / SAMPLE_RATE + 30))):
        for part in (talk, silence):
            for i in range(0, part.shape[0], 8000):
                windows += sum(isinstance(e, WindowReady) for e in segmenter.feed(part[i : i + 8000]))
                most_audio = max(most_audio, segmenter._audio.shape[0])
                most_probs = max(most_probs, segmenter._probs.shape[0])
    assert segmenter.seconds > 19 * 60 and windows > 50
    keep_s = options.window_seconds + 2 * options.context_seconds + segmenter.settle_s + 2.0
    assert most_audio <= keep_s * SAMPLE_RATE + 8000
    # at most the longest region and its settling time, in 32 ms frames
    assert most_probs <= (options.vad.max_region_seconds + 3.0) * SAMPLE_RATE / 512


@pytest.mark.realdata
def test_live_windows_on_real_speech_are_the_offline_ones(
    detector: SpeechDetector, ravdess_recording: tuple[Path, list, list]
) -> None:
    import soundfile as sf

    path, _, _ = ravdess_recording
    wave, _ = sf.read(path, dtype="float32")
    options = TimelineOptions()
    regions, spans = offline(detector, wave, options)
    segmenter = LiveSegmenter(options, detector.stream())
    feed(segmenter, wave, 1600)
    assert segmenter.regions == regions and segmenter.window_spans == spans
