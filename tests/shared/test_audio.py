"""Tests for shared.audio: real decoding of generated files in every supported format, bad inputs, limits.

Every file is generated here (soundfile or PyAV encoders); nothing is committed. The reference signal is
band-limited far below 4 kHz, so the same formula sampled at 16 kHz is what a correct decoder, downmix
and resampler must return: lossless files are compared sample by sample against it, lossy ones by
correlation after finding the best lag.
"""

from __future__ import annotations

import fractions
import io
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from scipy import signal as scipy_signal

from shared.audio import SUPPORTED_FORMATS, AudioLimits, check_waveform, decode_audio, load_audio
from shared.constants import SAMPLE_RATE
from shared.errors import (
    AudioDecodeError,
    AudioSilentError,
    AudioTooLongError,
    AudioTooShortError,
    UnsupportedAudioFormatError,
)

SECONDS = 1.5
RATES = (8000, 22050, 44100, 48000)
#: At the clip's ends the signal switches on and off, which the resampler's filter smears; lossless
#: comparisons skip 20 ms there.
EDGE = SAMPLE_RATE // 50
#: The largest lag searched when aligning a lossy decode with its reference (100 ms).
MAX_LAG = SAMPLE_RATE // 10


# --- generated audio ---------------------------------------------------------------------------


def reference_signal(rate: int, channels: int, seconds: float = SECONDS) -> np.ndarray:
    """float64 ``[samples, channels]``: left a 200->1100 Hz chirp, right a 440 Hz tone modulated at 3 Hz."""
    t = np.arange(round(seconds * rate)) / rate
    left = 0.5 * np.sin(2 * np.pi * (200 * t + 300 * t**2))
    right = 0.3 * np.sin(2 * np.pi * 440 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return np.stack([left, right], axis=1)[:, :channels]


def expected_mono(channels: int, seconds: float = SECONDS) -> np.ndarray:
    """What decoding ``reference_signal(any rate, channels)`` must give: the channel mean at 16 kHz."""
    return reference_signal(SAMPLE_RATE, channels, seconds).mean(axis=1)


def encode_soundfile(wave: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def encode_pyav(
    wave: np.ndarray,
    rate: int,
    container: str,
    codec: str,
    *,
    codec_rate: int | None = None,
    options: dict[str, str] | None = None,
) -> bytes:
    """Encode ``wave`` ``[samples, channels]`` with FFmpeg through PyAV; returns the file's bytes."""
    layout = "mono" if wave.shape[1] == 1 else "stereo"
    buf = io.BytesIO()
    with av.open(buf, "w", format=container, options=options or {}) as out:
        stream = out.add_stream(codec, rate=codec_rate or rate, layout=layout)
        assert isinstance(stream, av.AudioStream)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(wave.T, dtype=np.float32), format="fltp", layout=layout
        )
        frame.sample_rate = rate
        # Timestamps let the MP4 muxer write the edit list that tells decoders to drop AAC priming.
        frame.pts = 0
        frame.time_base = fractions.Fraction(1, rate)
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def encode_lossy(name: str, wave: np.ndarray, rate: int) -> bytes:
    if name == "ogg-vorbis":
        return encode_soundfile(wave, rate, "OGG", "VORBIS")
    if name == "mp3":
        if "MP3" in sf.available_formats():
            return encode_soundfile(wave, rate, "MP3", "MPEG_LAYER_III")
        return encode_pyav(wave, rate, "mp3", "libmp3lame")
    if name == "ogg-opus":
        return encode_pyav(wave, rate, "ogg", "libopus", codec_rate=48_000)
    if name == "webm-opus":
        return encode_pyav(wave, rate, "webm", "libopus", codec_rate=48_000)
    if name == "m4a-aac":
        return encode_pyav(wave, rate, "ipod", "aac")
    raise ValueError(name)


def silent_opus_webm(minutes: float) -> bytes:
    """A WebM/Opus file of ``minutes`` of silence, cheaply: a few encoded packets muxed over and over."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="webm") as out:
        stream = out.add_stream("libopus", rate=48_000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 48_000), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 48_000
        frame.pts = 0
        frame.time_base = fractions.Fraction(1, 48_000)
        packets = [bytes(p) for p in stream.encode(frame)]
        duration = 960  # 20 ms Opus frames, in 1/48000 s
        for i in range(round(minutes * 60 * 48_000 / duration)):
            packet = av.Packet(packets[i % len(packets)])
            packet.pts = packet.dts = i * duration
            packet.duration = duration
            packet.time_base = fractions.Fraction(1, 48_000)
            packet.stream = stream
            out.mux(packet)
    return buf.getvalue()


def silent_flac(minutes: float, rate: int = 8000) -> bytes:
    """A FLAC file of ``minutes`` of digital silence (a few tens of kB), written one minute at a time."""
    buf = io.BytesIO()
    block = np.zeros(rate * 60, dtype=np.int16)
    with sf.SoundFile(buf, "w", samplerate=rate, channels=1, format="FLAC", subtype="PCM_16") as out:
        for _ in range(round(minutes)):
            out.write(block)
    return buf.getvalue()


# --- comparison helpers ------------------------------------------------------------------------


def best_lag_correlation(
    reference: np.ndarray, decoded: np.ndarray, max_lag: int = MAX_LAG
) -> tuple[float, int]:
    """Pearson-style correlation of ``decoded`` with ``reference`` at the lag (within ``max_lag``
    samples) that maximises their cross-correlation; returns ``(correlation, lag)``, lag > 0 when
    ``decoded`` is late."""
    full = scipy_signal.correlate(decoded, reference, mode="full", method="fft")
    zero = len(reference) - 1
    lo, hi = max(0, zero - max_lag), min(len(full), zero + max_lag + 1)
    lag = int(np.argmax(full[lo:hi])) + lo - zero
    if lag >= 0:
        a, b = reference, decoded[lag:]
    else:
        a, b = reference[-lag:], decoded
    n = min(len(a), len(b))
    a, b = a[:n].astype(np.float64), b[:n].astype(np.float64)
    return float(np.dot(a, b) / np.sqrt(np.dot(a, a) * np.dot(b, b))), lag


def assert_decoded(waveform: np.ndarray, seconds: float = SECONDS) -> None:
    assert waveform.dtype == np.float32
    assert waveform.ndim == 1
    assert abs(waveform.shape[0] / SAMPLE_RATE - seconds) <= 0.05
    assert np.isfinite(waveform).all()
    assert np.abs(waveform).max() <= 1.0


# --- lossless ----------------------------------------------------------------------------------

#: Largest allowed |decoded - expected| away from the edges, per WAV subtype (signal peak 0.5-0.75).
#: Measured: PCM_U8 <= 0.011, mu-law <= 0.022, A-law <= 0.018, PCM_16 <= 4.2e-5, 24/32-bit and float
#: <= 6e-7 (the resampler's own error).
WAV_TOLERANCE = {
    "PCM_U8": 0.02,
    "PCM_16": 1e-4,
    "PCM_24": 5e-6,
    "PCM_32": 5e-6,
    "FLOAT": 5e-6,
    "ULAW": 0.04,
    "ALAW": 0.04,
}


@pytest.mark.parametrize("channels", [1, 2], ids=["mono", "stereo"])
@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("subtype", list(WAV_TOLERANCE))
def test_wav_decodes_to_16k_mono_near_exactly(subtype: str, rate: int, channels: int) -> None:
    data = encode_soundfile(reference_signal(rate, channels), rate, "WAV", subtype)

    waveform = decode_audio(data)

    assert_decoded(waveform)
    expected = expected_mono(channels)
    assert waveform.shape == expected.shape
    error = np.abs(waveform[EDGE:-EDGE] - expected[EDGE:-EDGE]).max()
    assert error <= WAV_TOLERANCE[subtype]


@pytest.mark.parametrize("channels", [1, 2], ids=["mono", "stereo"])
@pytest.mark.parametrize("rate", RATES)
def test_flac_decodes_exactly(rate: int, channels: int) -> None:
    # Quantised here: libsndfile's WAV and FLAC writers round floats differently.
    wave = np.round(reference_signal(rate, channels) * 32767).astype(np.int16)
    waveform = decode_audio(encode_soundfile(wave, rate, "FLAC", "PCM_16"))

    assert_decoded(waveform)
    # The same 16-bit samples through the WAV path: FLAC must match them bit for bit.
    assert np.array_equal(waveform, decode_audio(encode_soundfile(wave, rate, "WAV", "PCM_16")))
    assert np.abs(waveform[EDGE:-EDGE] - expected_mono(channels)[EDGE:-EDGE]).max() <= 1e-4


#: PCM in Matroska takes the PyAV path and exercises each sample format FFmpeg hands back
#: (u8, s16, s32, flt, dbl). Measured: u8 <= 0.005, s16 <= 1.8e-5, the rest <= 4e-7.
MKV_PCM_TOLERANCE = {
    "pcm_u8": 0.02,
    "pcm_s16le": 1e-4,
    "pcm_s24le": 5e-6,
    "pcm_s32le": 5e-6,
    "pcm_f32le": 5e-6,
    "pcm_f64le": 5e-6,
}


@pytest.mark.parametrize("codec", list(MKV_PCM_TOLERANCE))
def test_pcm_in_matroska_decodes_near_exactly_through_pyav(codec: str) -> None:
    data = encode_pyav(reference_signal(22_050, 2), 22_050, "matroska", codec)

    waveform = decode_audio(data)

    assert_decoded(waveform)
    expected = expected_mono(2)
    assert waveform.shape == expected.shape
    assert np.abs(waveform[EDGE:-EDGE] - expected[EDGE:-EDGE]).max() <= MKV_PCM_TOLERANCE[codec]


def test_downmix_averages_channels() -> None:
    left = 0.5 * np.ones(16_000)
    right = -0.25 * np.ones(16_000)
    waveform = decode_audio(encode_soundfile(np.stack([left, right], axis=1), 16_000, "WAV", "FLOAT"))
    np.testing.assert_allclose(waveform, 0.125, atol=1e-7)


def test_output_sample_rate_is_a_parameter() -> None:
    waveform = decode_audio(encode_soundfile(reference_signal(44_100, 2), 44_100, "WAV"), sample_rate=8000)
    assert waveform.shape == (round(SECONDS * 8000),)
    expected = reference_signal(8000, 2).mean(axis=1)
    assert np.abs(waveform[160:-160] - expected[160:-160]).max() <= 1e-4


# --- lossy -------------------------------------------------------------------------------------

LOSSY = ["ogg-vorbis", "mp3", "ogg-opus", "webm-opus", "m4a-aac"]


@pytest.mark.parametrize("channels", [1, 2], ids=["mono", "stereo"])
@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("codec", LOSSY)
def test_lossy_formats_decode_aligned_and_close(codec: str, rate: int, channels: int) -> None:
    data = encode_lossy(codec, reference_signal(rate, channels), rate)

    waveform = decode_audio(data)

    assert_decoded(waveform)
    correlation, lag = best_lag_correlation(expected_mono(channels), waveform)
    # Measured: every combination >= 0.9959 (AAC at 48 kHz stereo lowest; MP3 at 8 kHz 0.9968), all at
    # lag 0. AAC keeps up to 36 ms of encoder padding at the end, inside the 50 ms duration tolerance.
    assert correlation >= 0.99
    # Codec delay (Opus pre-skip, AAC priming, MP3 encoder delay) is removed: no lag beyond 0.5 ms.
    assert abs(lag) <= SAMPLE_RATE // 2000


def test_webm_without_duration_in_header_decodes() -> None:
    """Like a browser's MediaRecorder: a live WebM with no duration and no cues."""
    data = encode_pyav(reference_signal(48_000, 1), 48_000, "webm", "libopus", options={"live": "1"})
    with av.open(io.BytesIO(data), "r") as container:
        assert container.duration is None

    waveform = decode_audio(data)

    assert_decoded(waveform)
    assert best_lag_correlation(expected_mono(1), waveform)[0] >= 0.99


def test_wav_codec_libsndfile_lacks_falls_back_to_pyav() -> None:
    data = encode_pyav(reference_signal(8000, 1), 8000, "wav", "adpcm_g726")
    with pytest.raises(sf.LibsndfileError):
        sf.info(io.BytesIO(data))

    waveform = decode_audio(data)

    assert_decoded(waveform)
    assert best_lag_correlation(expected_mono(1), waveform)[0] >= 0.95


# --- bytes, paths and agreement ----------------------------------------------------------------


@pytest.mark.parametrize("codec", ["wav", "flac", "mp3", "ogg-opus", "webm-opus", "m4a-aac"])
def test_bytes_and_path_give_identical_results(codec: str, tmp_path: Path) -> None:
    wave = reference_signal(44_100, 2)
    if codec == "wav":
        data = encode_soundfile(wave, 44_100, "WAV")
    elif codec == "flac":
        data = encode_soundfile(wave, 44_100, "FLAC")
    else:
        data = encode_lossy(codec, wave, 44_100)
    path = tmp_path / f"clip.{codec}"
    path.write_bytes(data)

    from_bytes = decode_audio(data)

    assert np.array_equal(from_bytes, decode_audio(path))
    assert np.array_equal(from_bytes, decode_audio(str(path)))
    assert np.array_equal(from_bytes, decode_audio(bytearray(data)))


# --- bad inputs --------------------------------------------------------------------------------


def _reference_wav() -> bytes:
    return encode_soundfile(reference_signal(16_000, 1), 16_000, "WAV")


def test_empty_bytes_and_empty_file_are_decode_errors(tmp_path: Path) -> None:
    with pytest.raises(AudioDecodeError, match="empty") as info:
        decode_audio(b"")
    assert not isinstance(info.value, UnsupportedAudioFormatError)
    assert SUPPORTED_FORMATS in info.value.message

    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioDecodeError, match="empty.wav: empty"):
        decode_audio(empty)


@pytest.mark.parametrize("seed", range(6))
def test_random_bytes_are_unsupported(seed: int) -> None:
    data = np.random.default_rng(seed).bytes(20_000)
    with pytest.raises(UnsupportedAudioFormatError, match="not a recognised audio file") as info:
        decode_audio(data)
    assert SUPPORTED_FORMATS in info.value.message


@pytest.mark.parametrize("sync", [b"\xff\xfb", b"\xff\xf1"], ids=["mpeg-sync", "adts-sync"])
def test_random_bytes_after_a_frame_sync_are_unsupported(sync: bytes) -> None:
    with pytest.raises(UnsupportedAudioFormatError, match="not a recognised audio file"):
        decode_audio(sync + np.random.default_rng(1).bytes(20_000))


def test_text_named_wav_is_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("these are meeting notes, not a recording\n" * 20)
    with pytest.raises(UnsupportedAudioFormatError, match="notes.wav: this is text, not audio") as info:
        decode_audio(path)
    assert SUPPORTED_FORMATS in info.value.message


@pytest.mark.parametrize(
    ("head", "what"),
    [(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "JPEG"), (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "PNG")],
)
def test_images_are_unsupported(head: bytes, what: str) -> None:
    with pytest.raises(UnsupportedAudioFormatError, match=f"a {what} image, not audio"):
        decode_audio(head + np.random.default_rng(0).bytes(4000))


@pytest.mark.parametrize("length", [12, 30, 44])
def test_truncated_wav_header_is_a_decode_error(length: int) -> None:
    with pytest.raises(AudioDecodeError, match="WAV") as info:
        decode_audio(_reference_wav()[:length])
    assert not isinstance(info.value, UnsupportedAudioFormatError)


def test_wav_cut_short_in_its_data_decodes_what_it_holds() -> None:
    data = _reference_wav()
    waveform = decode_audio(data[: 44 + 2 * 8000])
    assert waveform.shape == (8000,)
    np.testing.assert_array_equal(waveform, decode_audio(data)[:8000])


def test_ogg_with_headers_only_is_a_decode_error() -> None:
    data = encode_soundfile(reference_signal(16_000, 1), 16_000, "OGG", "VORBIS")
    with pytest.raises(AudioDecodeError, match="no audio samples"):
        decode_audio(data[:4000])


def test_m4a_cut_before_its_index_is_a_decode_error() -> None:
    data = encode_lossy("m4a-aac", reference_signal(16_000, 1), 16_000)
    with pytest.raises(AudioDecodeError, match="MP4/M4A") as info:
        decode_audio(data[: len(data) // 2])
    assert not isinstance(info.value, UnsupportedAudioFormatError)


def test_video_only_webm_is_unsupported() -> None:
    buf = io.BytesIO()
    with av.open(buf, "w", format="webm") as out:
        stream = out.add_stream("libvpx", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 40 * i, np.uint8), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)

    with pytest.raises(UnsupportedAudioFormatError, match=r"no audio stream \(found: video\)"):
        decode_audio(buf.getvalue())


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float_samples_are_a_decode_error(bad: float) -> None:
    wave = reference_signal(16_000, 1)
    wave[1000] = bad
    with pytest.raises(AudioDecodeError, match="non-finite samples"):
        decode_audio(encode_soundfile(wave, 16_000, "WAV", "FLOAT"))


def test_float_samples_beyond_full_scale_are_clipped() -> None:
    wave = 1.5 * np.sin(2 * np.pi * 100 * np.arange(16_000) / 16_000)[:, None]
    waveform = decode_audio(encode_soundfile(wave, 16_000, "WAV", "FLOAT"))
    assert waveform.max() == 1.0
    assert waveform.min() == -1.0


# --- max duration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "source_rate"),
    [(silent_flac, 8000), (silent_opus_webm, 48_000)],
    ids=["flac-soundfile-path", "webm-pyav-path"],
)
def test_long_compressed_file_stops_decoding_at_the_limit(
    make: Callable[[float], bytes], source_rate: int
) -> None:
    minutes = 20
    data = make(minutes)
    assert len(data) < 1_000_000  # tiny on the wire...
    full_decode_bytes = minutes * 60 * source_rate * 4  # ...but 38 MB (FLAC) or 230 MB (Opus) as float32

    tracemalloc.start()
    try:
        with pytest.raises(
            AudioTooLongError, match=r"maximum of 30\.00 s \(decoding stopped after 30\.0\d s\)"
        ):
            decode_audio(data, max_seconds=30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 30 s at the source rate is 1 MB (FLAC) or 6 MB (Opus); the whole file would be 40x that.
    assert peak < full_decode_bytes / 8


@pytest.mark.parametrize("codec", ["wav", "webm-opus"])
def test_max_seconds_boundary(codec: str) -> None:
    wave = reference_signal(48_000, 1)
    data = encode_soundfile(wave, 48_000, "WAV") if codec == "wav" else encode_lossy(codec, wave, 48_000)

    assert decode_audio(data, max_seconds=SECONDS).shape[0] == round(SECONDS * SAMPLE_RATE)
    with pytest.raises(AudioTooLongError, match=r"maximum of 1\.40 s"):
        decode_audio(data, max_seconds=1.4)


def test_load_audio_stops_decoding_at_limits_max_seconds() -> None:
    with pytest.raises(AudioTooLongError, match="decoding stopped"):
        load_audio(_reference_wav(), AudioLimits(max_seconds=1.0))


# --- check_waveform and load_audio --------------------------------------------------------------


def test_check_waveform_too_short() -> None:
    with pytest.raises(AudioTooShortError) as info:
        check_waveform(np.full(3200, 0.1, np.float32), AudioLimits())
    assert info.value.message == "audio is 0.20 s long; the minimum is 0.50 s"


def test_check_waveform_too_long() -> None:
    with pytest.raises(AudioTooLongError) as info:
        check_waveform(np.full(31 * SAMPLE_RATE, 0.1, np.float32), AudioLimits())
    assert info.value.message == "audio is 31.00 s long; the maximum is 30.00 s"


def test_check_waveform_digital_silence() -> None:
    with pytest.raises(AudioSilentError) as info:
        check_waveform(np.zeros(3 * SAMPLE_RATE, np.float32), AudioLimits())
    assert info.value.message == (
        "audio is silent (its loudest 20 ms is -inf dBFS once its constant offset is removed; "
        "needs a frame above -60 dBFS)"
    )


def test_a_constant_offset_is_silence_and_a_click_is_not_a_voice() -> None:
    with pytest.raises(AudioSilentError, match="-inf dBFS"):
        check_waveform(np.full(2 * SAMPLE_RATE, 0.4, np.float32), AudioLimits())
    click = np.zeros(2 * SAMPLE_RATE, np.float32)
    click[1000] = 0.9  # a peak 1 dB below full scale, but one sample in 20 ms is -26 dBFS of energy
    with pytest.raises(AudioSilentError):
        check_waveform(click, AudioLimits(silence_dbfs=-20))


def test_check_waveform_silence_threshold() -> None:
    tone = np.sin(2 * np.pi * 200 * np.arange(SAMPLE_RATE) / SAMPLE_RATE).astype(np.float32)
    with pytest.raises(AudioSilentError, match=r"loudest 20 ms is -73\.0 dBFS"):
        check_waveform(tone * 10 ** (-70 / 20), AudioLimits())
    check_waveform(tone * 10 ** (-50 / 20), AudioLimits())
    with pytest.raises(AudioSilentError):
        check_waveform(tone * 10 ** (-50 / 20), AudioLimits(silence_dbfs=-45))


def test_check_waveform_accepts_a_normal_clip() -> None:
    check_waveform(expected_mono(2).astype(np.float32), AudioLimits())


def test_check_waveform_rejects_two_dimensional_input() -> None:
    with pytest.raises(ValueError, match="one-dimensional"):
        check_waveform(np.zeros((2, SAMPLE_RATE), np.float32), AudioLimits())


def test_load_audio_returns_the_checked_waveform() -> None:
    data = _reference_wav()
    np.testing.assert_array_equal(load_audio(data), decode_audio(data))


@pytest.mark.parametrize(
    ("wave", "error"),
    [
        (np.zeros((3 * SAMPLE_RATE, 1)), AudioSilentError),
        (reference_signal(SAMPLE_RATE, 1, seconds=0.2), AudioTooShortError),
    ],
    ids=["silent", "too-short"],
)
def test_load_audio_applies_the_limits(wave: np.ndarray, error: type[Exception]) -> None:
    with pytest.raises(error):
        load_audio(encode_soundfile(wave, SAMPLE_RATE, "WAV"))


# --- real files --------------------------------------------------------------------------------

#: Lowest correlation with the 16 kHz reference after best-lag alignment, per copy of crema_angry.
#: Measured: FLAC and float32 WAV 1.0000 (bit-exact), M4A/AAC 0.9999, OGG/Vorbis 0.9940,
#: 8 kHz mu-law 0.9927 (the band above 4 kHz is gone), WebM/Opus 0.9829 (encoded at a low bit rate).
CREMA_ANGRY_MIN_CORRELATION = {
    "crema_angry.flac": 0.9999,
    "crema_angry_float32.wav": 0.9999,
    "crema_angry.m4a": 0.999,
    "crema_angry.ogg": 0.985,
    "crema_angry_8k_mulaw.wav": 0.985,
    "crema_angry.webm": 0.97,
}


@pytest.mark.realdata
def test_every_real_format_file_decodes(real_data: Path) -> None:
    files = sorted((real_data / "formats").iterdir())
    assert files
    for path in files:
        waveform = decode_audio(path)
        assert waveform.dtype == np.float32 and waveform.ndim == 1, path.name
        assert 1.0 < waveform.shape[0] / SAMPLE_RATE < 6.0, path.name
        assert np.isfinite(waveform).all() and np.abs(waveform).max() <= 1.0, path.name
        check_waveform(waveform, AudioLimits())
        assert np.array_equal(waveform, decode_audio(path.read_bytes())), path.name


@pytest.mark.realdata
def test_real_crema_angry_copies_match_the_reference(real_data: Path) -> None:
    formats = real_data / "formats"
    reference = decode_audio(formats / "crema_angry_16k_mono.wav")
    copies = sorted(p.name for p in formats.glob("crema_angry*") if p.name != "crema_angry_16k_mono.wav")
    assert copies == sorted(CREMA_ANGRY_MIN_CORRELATION)
    for name in copies:
        waveform = decode_audio(formats / name)
        assert abs(waveform.shape[0] - reference.shape[0]) / SAMPLE_RATE <= 0.05, name
        correlation, _ = best_lag_correlation(reference, waveform)
        assert correlation >= CREMA_ANGRY_MIN_CORRELATION[name], (name, correlation)


@pytest.mark.realdata
@pytest.mark.parametrize(
    ("copy", "original", "min_correlation"),
    [
        # The official CREMA-D MP3 of this clip (44.1 kHz); measured 0.9988, 12 ms shorter.
        ("formats/crema_happy.mp3", "cremad_sample/AudioWAV/1002_DFA_HAP_XX.wav", 0.995),
        # The 48 kHz stereo original of a RAVDESS clip vs its sox-resampled 16 kHz FLAC; measured 1.0000.
        ("formats/ravdess_happy_48k_stereo.wav", "ravdess16k/Actor_20/03-01-03-01-02-01-20.flac", 0.9999),
    ],
)
def test_real_copies_at_other_rates_match_their_16k_originals(
    real_data: Path, copy: str, original: str, min_correlation: float
) -> None:
    waveform = decode_audio(real_data / copy)
    reference = decode_audio(real_data / original)
    assert abs(waveform.shape[0] - reference.shape[0]) / SAMPLE_RATE <= 0.05
    correlation, _ = best_lag_correlation(reference, waveform)
    assert correlation >= min_correlation
