"""Input normalisation before every backbone: the level of the speech, and optionally its silent edges.

A recording's level says how far the speaker sat from the microphone and how the channel was set, not
which emotion they felt; level-dependent features (eGeMAPS' loudness, energy and spectral slopes) then
move with the gain of every new microphone. ``normalize_level`` scales an utterance so that its active
frames, not its pauses, sit at one level, in the way of ITU-T P.56's active speech level:

- the waveform is cut into 25 ms frames every 10 ms and each frame's energy is measured;
- a frame is active when its energy is within ``ACTIVE_RANGE_DB`` of the loudest frame's (pauses, breath
  and the noise floor fall below it);
- the gain brings the RMS of the active frames to the target (``-26 dBFS`` by default, the usual active
  speech level of telephony), and is lowered where the peak would otherwise pass full scale, since a
  clipped waveform is a different sound.

``trim_silence`` drops leading and trailing inactive frames (keeping ``TRIM_PAD_S`` of each).

A bundle's ``BackboneSpec`` records both (``level_dbfs``, ``trim_silence``), so training and serving do the
same thing; a spec without them (every bundle written before they existed) leaves the waveform as it is.
"""

from __future__ import annotations

import numpy as np

from shared.constants import SAMPLE_RATE

#: The active speech level that training runs normalise to by default (dBFS: RMS relative to full scale).
DEFAULT_LEVEL_DBFS = -26.0
#: A frame within this many dB of the loudest frame's energy is active speech.
ACTIVE_RANGE_DB = 40.0
#: Frame length and hop of the level measurement (samples at 16 kHz: 25 ms and 10 ms).
FRAME = SAMPLE_RATE * 25 // 1000
HOP = SAMPLE_RATE * 10 // 1000
#: Trimming keeps this much (seconds) of inactive audio before the first and after the last active frame.
TRIM_PAD_S = 0.1
#: Gain never takes the peak above this (a margin under full scale).
PEAK_LIMIT = 0.99


def frame_energies(wave: np.ndarray) -> np.ndarray:
    """Mean square of each 25 ms frame, every 10 ms: float64 ``[n_frames]`` (one frame for short input)."""
    x = np.asarray(wave, dtype=np.float64).reshape(-1)
    if x.shape[0] <= FRAME:
        return np.array([np.mean(np.square(x))]) if x.size else np.zeros(1)
    n = 1 + (x.shape[0] - FRAME) // HOP
    frames = np.lib.stride_tricks.as_strided(
        x, (n, FRAME), (HOP * x.strides[0], x.strides[0]), writeable=False
    )
    return np.mean(np.square(frames), axis=1)


def active_frames(energies: np.ndarray) -> np.ndarray:
    """Which frames are active: bool ``[n_frames]``, within ``ACTIVE_RANGE_DB`` of the loudest."""
    loudest = float(energies.max()) if energies.size else 0.0
    if loudest <= 0:
        return np.zeros(energies.shape, dtype=bool)
    return energies >= loudest * 10.0 ** (-ACTIVE_RANGE_DB / 10.0)


def active_level_dbfs(wave: np.ndarray) -> float:
    """The RMS level of the active frames, in dBFS (``-inf`` for digital silence)."""
    energies = frame_energies(wave)
    active = active_frames(energies)
    if not active.any():
        return float("-inf")
    return float(10.0 * np.log10(np.mean(energies[active])))


def normalize_level(wave: np.ndarray, target_dbfs: float = DEFAULT_LEVEL_DBFS) -> np.ndarray:
    """``wave`` scaled so that its active frames' RMS is ``target_dbfs``, its peak kept under full scale.

    Returns float32 ``[n_samples]``; digital silence comes back unchanged.
    """
    x = np.asarray(wave, dtype=np.float32).reshape(-1)
    level = active_level_dbfs(x)
    if not np.isfinite(level):
        return x
    gain = 10.0 ** ((target_dbfs - level) / 20.0)
    peak = float(np.max(np.abs(x)))
    if peak * gain > PEAK_LIMIT:
        gain = PEAK_LIMIT / peak
    return (x * np.float32(gain)).astype(np.float32, copy=False)


def trim_silence(wave: np.ndarray) -> np.ndarray:
    """``wave`` without its leading and trailing inactive frames (``TRIM_PAD_S`` of each kept).

    Returns a view of ``wave`` (all of it when no frame is active).
    """
    x = np.asarray(wave).reshape(-1)
    active = np.flatnonzero(active_frames(frame_energies(x)))
    if active.size == 0:
        return x
    pad = int(TRIM_PAD_S * SAMPLE_RATE)
    start = max(0, int(active[0]) * HOP - pad)
    end = min(x.shape[0], int(active[-1]) * HOP + FRAME + pad)
    return x[start:end]


def prepare_input(wave: np.ndarray, level_dbfs: float | None, trim: bool) -> np.ndarray:
    """The input normalisation a spec asks for: trimming first (so pauses do not count), then the level."""
    x = np.asarray(wave, dtype=np.float32).reshape(-1)
    if trim:
        x = trim_silence(x)
    if level_dbfs is not None:
        x = normalize_level(x, level_dbfs)
    return x
