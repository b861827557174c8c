"""Constants every part of the project agrees on."""

from __future__ import annotations

#: The six emotions, in the canonical order used for probabilities and reports.
EMOTIONS: tuple[str, ...] = ("neutral", "happy", "sad", "angry", "fear", "disgust")

#: Every backbone consumes mono float32 audio at this rate (Hz).
SAMPLE_RATE: int = 16_000

#: Default limits on a single utterance, in seconds (the design document's values).
DEFAULT_MIN_SECONDS: float = 0.5
DEFAULT_MAX_SECONDS: float = 30.0

#: A clip whose peak level stays below this (dBFS) is treated as silent.
DEFAULT_SILENCE_DBFS: float = -60.0
