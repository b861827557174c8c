"""Realistic channel changes for the robustness benchmark: what a recording goes through on its way to us.

Each condition takes a clean mono float32 16 kHz waveform and returns the changed recording as the
service would see it: codecs and the telephone line go through real encoders and then the project's own
decoder (``shared.audio.load_audio``); gain, noise and the room are applied to the samples, clipped at
full scale as a decoder would clip them:

| condition | what |
|---|---|
| ``clean`` | unchanged |
| ``gain-20db`` / ``gain+12db`` | 20 dB quieter; 12 dB louder, clipped at full scale as a real recorder clips |
| ``telephone`` | 300-3400 Hz band, 8 kHz G.711 mu-law (a WAV), decoded back to 16 kHz |
| ``opus-16k`` | Opus at 16 kbit/s in Ogg (what low-bandwidth calls use) |
| ``mp3-32k`` | MP3 at 32 kbit/s |
| ``noise-10db`` | pink noise at 10 dB below the active speech level |
| ``reverb`` | a room: an exponentially decaying impulse response with RT60 of 0.5 s |
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import av
import numpy as np
import soundfile as sf
import soxr
from scipy import signal

from shared.audio import load_audio
from shared.constants import SAMPLE_RATE
from shared.loudness import active_level_dbfs

CONDITIONS = ("clean", "gain-20db", "gain+12db", "telephone", "opus-16k", "mp3-32k", "noise-10db", "reverb")

#: The room's reverberation time (seconds: the decay to -60 dB) and the noise's signal-to-noise ratio (dB).
RT60_S = 0.5
SNR_DB = 10.0


def gain(wave: np.ndarray, db: float) -> np.ndarray:
    return np.clip(wave * np.float32(10.0 ** (db / 20.0)), -1.0, 1.0).astype(np.float32)


def telephone(wave: np.ndarray) -> np.ndarray:
    sos = signal.butter(4, [300, 3400], btype="bandpass", fs=SAMPLE_RATE, output="sos")
    narrow = soxr.resample(signal.sosfiltfilt(sos, wave).astype(np.float32), SAMPLE_RATE, 8000)
    buf = io.BytesIO()
    sf.write(buf, np.clip(narrow, -1.0, 1.0), 8000, format="WAV", subtype="ULAW")
    return load_audio(buf.getvalue())


def encoded(wave: np.ndarray, container: str, codec: str, bit_rate: int, codec_rate: int) -> np.ndarray:
    """``wave`` encoded with FFmpeg's ``codec`` at ``bit_rate`` bits/s, then decoded by the project."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        stream: Any = out.add_stream(codec, rate=codec_rate, layout="mono")
        stream.bit_rate = bit_rate
        source = soxr.resample(wave, SAMPLE_RATE, codec_rate) if codec_rate != SAMPLE_RATE else wave
        frame = av.AudioFrame.from_ndarray(
            np.asarray(source, np.float32)[None, :], format="flt", layout="mono"
        )
        frame.sample_rate = codec_rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return load_audio(buf.getvalue())


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Noise whose power falls as 1/f (as most background noise does), unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    spectrum /= np.sqrt(np.maximum(freqs, 20.0))
    noise = np.fft.irfft(spectrum, n)
    return (noise / np.sqrt(np.mean(noise**2))).astype(np.float32)


def noisy(wave: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    level = active_level_dbfs(wave)
    noise = pink_noise(wave.shape[0], rng) * np.float32(10.0 ** ((level - snr_db) / 20.0))
    return np.clip(wave + noise, -1.0, 1.0).astype(np.float32)


def room_impulse_response(rt60_s: float, rng: np.random.Generator) -> np.ndarray:
    """A direct path and a diffuse tail decaying by 60 dB over ``rt60_s`` (float32 ``[n]``)."""
    n = int(rt60_s * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60_s) * 0.3
    tail[: int(0.005 * SAMPLE_RATE)] = 0.0  # the first reflections arrive a few ms after the direct sound
    tail[0] = 1.0
    return (tail / np.sqrt(np.sum(tail**2))).astype(np.float32)


def reverberant(wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    wet = signal.fftconvolve(wave, room_impulse_response(RT60_S, rng))[: wave.shape[0]]
    peak = float(np.max(np.abs(wet))) or 1.0
    return (wet * min(1.0, 0.99 / peak)).astype(np.float32)


def apply_condition(name: str, wave: np.ndarray, seed: int = 0) -> np.ndarray:
    """``wave`` (float32 ``[n]`` at 16 kHz) as it comes out of condition ``name`` (see the module doc).

    Raises:
        ValueError: an unknown condition.
    """
    rng = np.random.default_rng(seed)
    changes: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "clean": lambda w: w,
        "gain-20db": lambda w: gain(w, -20.0),
        "gain+12db": lambda w: gain(w, 12.0),
        "telephone": telephone,
        "opus-16k": lambda w: encoded(w, "ogg", "libopus", 16_000, 48_000),
        "mp3-32k": lambda w: encoded(w, "mp3", "libmp3lame", 32_000, SAMPLE_RATE),
        "noise-10db": lambda w: noisy(w, SNR_DB, rng),
        "reverb": lambda w: reverberant(w, rng),
    }
    if name not in changes:
        raise ValueError(f"unknown condition {name!r}; accepted: {', '.join(CONDITIONS)}")
    return changes[name](np.asarray(wave, dtype=np.float32))
