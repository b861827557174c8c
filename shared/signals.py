"""Generated speech-like signals: calibration input for model conversions and load for benchmarks."""

from __future__ import annotations

import numpy as np

from shared.constants import SAMPLE_RATE


def speech_like(seconds: float, seed: int) -> np.ndarray:
    """A voiced signal with a drifting pitch, harmonics and syllable-rate loudness changes.

    Returns float32 ``[seconds * 16000]`` at 16 kHz, peak about 0.5; the same ``seed`` gives the same signal.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = rng.uniform(90, 260) * (1 + 0.08 * np.sin(2 * np.pi * rng.uniform(0.3, 1.5) * t))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    brightness = rng.uniform(0.5, 1.5)
    voiced = sum(np.sin(k * phase) / k**brightness for k in range(1, 12))
    syllables = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(3, 6) * t + rng.uniform(0, np.pi)))
    noise = rng.uniform(0.01, 0.05) * rng.standard_normal(t.shape)
    return (0.2 * voiced * syllables + noise).astype(np.float32)
