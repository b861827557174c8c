"""Timelines in the library: windows, streamed decoding, the speech detector, pooled and exact
embeddings, and the analysis of real RAVDESS-built recordings."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from support import synthetic_clip, wav_bytes

from shared.audio import AudioStream, decode_audio
from shared.backbones import BackboneSpec, build_backbone
from shared.constants import EMOTIONS, SAMPLE_RATE
from shared.errors import AudioTooLongError
from shared.predictor import Predictor
from shared.timeline import NO_SPEECH, TimelineAnalyzer, TimelineCancelled, TimelineOptions, window_spans
from shared.vad import SpeechDetector, SpeechRegion, VadSettings


@pytest.fixture(scope="module")
def detector() -> SpeechDetector:
    return SpeechDetector()


# --- windows -------------------------------------------------------------------------------------


def test_windows_cover_a_long_region_and_end_at_its_end():
    options = TimelineOptions(window_seconds=3.0, hop_seconds=1.0)
    spans = window_spans(SpeechRegion(10.0, 17.5), options)
    assert spans == [(10.0, 13.0), (11.0, 14.0), (12.0, 15.0), (13.0, 16.0), (14.0, 17.0), (14.5, 17.5)]


def test_a_short_region_takes_in_context_but_never_reaches_its_neighbours():
    options = TimelineOptions(window_seconds=3.0, context_seconds=1.0)
    assert window_spans(SpeechRegion(5.0, 7.0), options, lower=3.0, upper=9.0) == [(4.0, 8.0)]
    # the neighbouring regions are the limit
    assert window_spans(SpeechRegion(5.0, 7.0), options, lower=4.6, upper=7.3) == [(4.6, 7.3)]
    # bounds lie on the 10 ms grid
    assert window_spans(SpeechRegion(5.0032, 7.0), options, lower=5.0032, upper=7.0) == [(5.0, 7.0)]


def test_a_region_below_the_minimum_window_is_not_classified():
    assert window_spans(SpeechRegion(1.0, 1.3), TimelineOptions(min_window_seconds=0.5)) == []


@pytest.mark.parametrize(
    "bad", [{"window_seconds": 0.1}, {"hop_seconds": 5.0}, {"method": "fast"}, {"smoothing": 0}]
)
def test_options_refuse_nonsense(bad):
    with pytest.raises(ValueError):
        TimelineOptions(**bad)


def test_vad_settings_refuse_nonsense():
    with pytest.raises(ValueError, match="threshold"):
        VadSettings(threshold=1.5)
    with pytest.raises(ValueError, match="max_region_seconds"):
        VadSettings(max_region_seconds=0.2)


# --- streamed decoding ---------------------------------------------------------------------------


def _formats(real_data: Path) -> list[Path]:
    return sorted((real_data / "formats").iterdir())


@pytest.mark.realdata
@pytest.mark.parametrize("block_seconds", [0.37, 10.0])
def test_streamed_decoding_equals_whole_file_decoding(real_data, block_seconds):
    for path in _formats(real_data):
        whole = decode_audio(path)
        blocks = list(AudioStream(path, block_seconds=block_seconds))
        assert all(b.shape[0] == int(block_seconds * SAMPLE_RATE) for b in blocks[:-1]), path.name
        streamed = np.concatenate(blocks)
        assert streamed.shape == whole.shape, path.name
        np.testing.assert_allclose(streamed, whole, atol=1e-6, err_msg=path.name)


def test_streamed_decoding_stops_past_the_limit():
    data = wav_bytes(synthetic_clip("angry", 3.0))
    with pytest.raises(AudioTooLongError, match="maximum of 2.00 s"):
        list(AudioStream(data, max_seconds=2.0, block_seconds=0.5))


def webm_bytes(wave: np.ndarray) -> bytes:
    """``wave`` as WebM/Opus, as a browser records it (the header declares the duration)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="webm") as container:
        stream = container.add_stream("libopus", rate=48000)
        frame = av.AudioFrame.from_ndarray(
            (wave[None, :] * 32767).astype(np.int16), format="s16", layout="mono"
        )
        frame.sample_rate = SAMPLE_RATE
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return buf.getvalue()


def test_a_damaged_stream_keeps_what_decoded_and_says_so():
    data = webm_bytes(synthetic_clip("sad", 4.0))
    assert not AudioStream(data).truncated
    cut = data[: len(data) // 2]
    stream = AudioStream(cut, keep_partial=True, block_seconds=1.0)
    audio = np.concatenate(list(stream))
    assert 0.5 < audio.shape[0] / SAMPLE_RATE < 3.5
    assert stream.truncated


# --- the speech detector --------------------------------------------------------------------------


def test_silence_and_tones_hold_no_speech(detector):
    silence = np.zeros(5 * SAMPLE_RATE, dtype=np.float32)
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(5 * SAMPLE_RATE) / SAMPLE_RATE)).astype(np.float32)
    assert detector.detect([silence]) == []
    assert detector.detect([tone]) == []


def test_importing_the_detector_keeps_torch_threads():
    import torch

    torch.set_num_threads(2)
    SpeechDetector()
    assert torch.get_num_threads() == 2


@pytest.mark.realdata
def test_block_size_does_not_change_the_regions(detector, ravdess_recording):
    path, _, _ = ravdess_recording
    small = detector.detect(AudioStream(path, block_seconds=0.3))
    large = detector.detect(AudioStream(path, block_seconds=30.0))
    assert small == large and small


@pytest.mark.realdata
def test_speech_regions_cover_the_clips_and_not_the_pauses(detector, ravdess_recording):
    path, truth, _ = ravdess_recording
    regions = detector.detect(AudioStream(path))
    coverage = [
        sum(max(0.0, min(t.end, r.end) - max(t.start, r.start)) for r in regions) / (t.end - t.start)
        for t in truth
    ]
    assert np.mean(np.array(coverage) >= 0.8) >= 0.9, coverage
    pauses = [(a.end, b.start) for a, b in zip(truth, truth[1:], strict=False)]
    early = [(r.start, b) for r in regions for a, b in pauses if a < r.start < b and b - r.start > 0.3]
    assert not early, early


# --- analyses --------------------------------------------------------------------------------------


def test_a_recording_without_speech_has_an_empty_timeline(egemaps_bundle, tmp_path):
    path = tmp_path / "tone.wav"
    sf.write(path, 0.2 * np.sin(2 * np.pi * 300 * np.arange(8 * SAMPLE_RATE) / SAMPLE_RATE), SAMPLE_RATE)
    timeline = TimelineAnalyzer(Predictor.from_bundle(egemaps_bundle)).analyse(path)
    assert timeline.reason == NO_SPEECH
    assert timeline.windows == [] and timeline.segments == []
    assert timeline.summary.duration_s == pytest.approx(8.0)
    assert timeline.summary.dominant is None
    assert timeline.to_dict()["reason"] == "no_speech"


@pytest.mark.realdata
def test_a_recording_gets_windows_segments_and_a_consistent_summary(timeline_bundle, ravdess_recording):
    path, truth, _ = ravdess_recording
    seen: list[tuple[float, float]] = []
    timeline = TimelineAnalyzer(Predictor.from_bundle(timeline_bundle)).analyse(
        path, progress=lambda fraction, seconds: seen.append((fraction, seconds))
    )
    s = timeline.summary
    assert timeline.reason is None and timeline.warnings == []
    assert timeline.classifier == "session"  # the recording is the session
    assert 85 < s.duration_s < 110 and 0.4 * s.duration_s < s.speech_s < s.duration_s
    assert sum(s.emotion_seconds.values()) == pytest.approx(s.classified_s, abs=1e-6)
    assert sum(s.mean_probabilities.values()) == pytest.approx(1.0, abs=1e-6)
    assert s.dominant == max(s.emotion_seconds, key=s.emotion_seconds.get)
    assert s.changes == sum(
        a.label != b.label for a, b in zip(timeline.segments, timeline.segments[1:], strict=False)
    )
    for window in timeline.windows:
        assert sum(window.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
        assert window.label == max(window.probabilities, key=window.probabilities.get)
    starts = [seg.start for seg in timeline.segments]
    assert starts == sorted(starts)
    assert all(
        a.end <= b.start + 1e-9 for a, b in zip(timeline.segments, timeline.segments[1:], strict=False)
    )
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert set(EMOTIONS) == set(s.emotion_seconds)
    rows = timeline.windows_csv().splitlines()
    assert rows[0].split(",")[:3] == ["start", "end", "label"] and len(rows) == len(timeline.windows) + 1
    assert timeline.segments_rttm("rec").count("\n") == len(timeline.segments)


@pytest.mark.realdata
def test_a_cancelled_analysis_stops(timeline_bundle, ravdess_recording):
    path, _, _ = ravdess_recording
    with pytest.raises(TimelineCancelled):
        TimelineAnalyzer(Predictor.from_bundle(timeline_bundle)).analyse(path, should_stop=lambda: True)


@pytest.mark.realdata
def test_a_truncated_recording_gets_the_part_that_decoded_and_a_warning(
    timeline_bundle, ravdess_recording, tmp_path
):
    path, _, _ = ravdess_recording
    wave = decode_audio(path)
    webm = tmp_path / "recording.webm"
    import av

    with av.open(str(webm), "w", format="webm") as container:
        stream = container.add_stream("libopus", rate=48000)
        frame = av.AudioFrame.from_ndarray(
            (wave[None, :] * 32767).astype(np.int16), format="s16", layout="mono"
        )
        frame.sample_rate = SAMPLE_RATE
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    data = webm.read_bytes()
    cut = tmp_path / "cut.webm"
    cut.write_bytes(data[: len(data) // 2])
    timeline = TimelineAnalyzer(Predictor.from_bundle(timeline_bundle)).analyse(cut)
    assert timeline.warnings and timeline.warnings[0].startswith("truncated:")
    assert "its header declares" in timeline.warnings[0]
    assert 0.3 * len(wave) / SAMPLE_RATE < timeline.summary.duration_s < 0.7 * len(wave) / SAMPLE_RATE
    assert timeline.windows


# --- pooled and exact embeddings ---------------------------------------------------------------------


def test_overlapping_pieces_keep_the_frame_grid_of_one_pass(tiny_hubert_dir):
    from shared.backbones import EncoderOptions

    spec = BackboneSpec(kind="hubert", model=str(tiny_hubert_dir))
    wave = synthetic_clip("happy", 9.0)
    one_pass = build_backbone(spec, EncoderOptions(window_seconds=30.0)).encode_frames(wave)
    pieces = build_backbone(spec, EncoderOptions(window_seconds=4.0)).encode_frames(wave, overlap_seconds=1.0)
    np.testing.assert_array_equal(pieces.starts, one_pass.starts)
    assert pieces.frames.shape == one_pass.frames.shape


def test_a_window_over_a_whole_region_pools_what_embed_batch_computes(hubert_bundle):
    predictor = Predictor.from_bundle(hubert_bundle)
    analyzer = TimelineAnalyzer(predictor, TimelineOptions(method="pooled"))
    assert analyzer.method == "pooled"
    wave = synthetic_clip("fear", 2.5)
    pooled = analyzer._embed_region(wave, [(0.0, 2.5)])
    np.testing.assert_allclose(pooled[0], predictor.embed_batch([wave])[0], rtol=1e-5, atol=1e-6)
    exact = TimelineAnalyzer(predictor, TimelineOptions(method="exact"))._embed_region(wave, [(0.5, 2.0)])
    np.testing.assert_allclose(exact[0], predictor.embed_batch([wave[8000:32000]])[0], rtol=1e-6)


def test_backbones_without_frames_use_the_exact_method(egemaps_bundle):
    assert (
        TimelineAnalyzer(Predictor.from_bundle(egemaps_bundle), TimelineOptions(method="pooled")).method
        == "exact"
    )


def test_regions_encoded_together_equal_regions_encoded_alone(tiny_hubert_dir):
    spec = BackboneSpec(kind="hubert", model=str(tiny_hubert_dir))
    backbone = build_backbone(spec)
    waves = [
        synthetic_clip(label, seconds) for label, seconds in (("sad", 1.2), ("angry", 2.7), ("fear", 0.9))
    ]
    together = backbone.encode_frames_batch(waves)
    for wave, states in zip(waves, together, strict=True):
        alone = backbone.encode_frames(wave)
        np.testing.assert_array_equal(states.starts, alone.starts)
        np.testing.assert_allclose(states.frames, alone.frames, rtol=1e-4, atol=1e-5)
