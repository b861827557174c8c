"""Speech segmentation with Silero VAD: where in a recording someone speaks.

The Silero VAD model (MIT licence; its files ship in the ``silero-vad`` package and it needs only
torch) gives a speech probability for every 32 ms frame (512 samples at 16 kHz), carrying its recurrent
state from frame to frame, so a recording of any length is scored block by block with bounded memory.
The probabilities (one float per frame: about 450 KB for an hour) then become speech regions with
Silero's own rules (``get_speech_timestamps_from_probs``):

- a region starts where the probability rises above ``threshold`` and ends where it stays below
  ``neg_threshold`` (``threshold - 0.15`` by default) for ``min_silence_ms``;
- regions shorter than ``min_speech_ms`` are dropped (clicks, breaths);
- each region is widened by ``pad_ms`` on both sides (never past its neighbours);
- a region longer than ``max_region_seconds`` is split at its longest inner pause where there is one,
  else cut there.

What the VAD calls non-speech is never classified.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from shared.constants import SAMPLE_RATE
from shared.errors import SERError

#: Samples per VAD frame at 16 kHz (Silero's fixed chunk).
VAD_FRAME = 512


class VadError(SERError):
    """The VAD model cannot be loaded (the ``silero-vad`` package is missing or broken)."""

    error_type = "vad_unavailable"


@dataclass(frozen=True)
class VadSettings:
    """Silero VAD's segmentation parameters (its names, with its defaults unless stated).

    Attributes:
        threshold: speech probability above which a frame is speech (Silero's default 0.5).
        neg_threshold: probability below which speech ends; None is ``threshold - 0.15``.
        min_speech_ms: shorter regions are dropped (Silero's default 250 ms).
        min_silence_ms: a pause must last this long to end a region. 300 ms here (Silero: 100 ms):
            shorter gaps are the pauses inside one utterance, and a window should not stop at each.
        pad_ms: each region is widened by this much on both sides. 200 ms here (Silero: 30 ms): soft
            onsets and trailing syllables score below the threshold, and they carry prosody the
            classifier uses; 200 ms stays well inside the shortest pause between two speakers' turns.
        max_region_seconds: regions are split to at most this long (Silero's default: no limit); this
            bounds the audio held at once.
    """

    threshold: float = 0.5
    neg_threshold: float | None = None
    min_speech_ms: int = 250
    min_silence_ms: int = 300
    pad_ms: int = 200
    max_region_seconds: float = 30.0

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), got {self.threshold}")
        if self.neg_threshold is not None and not 0.0 < self.neg_threshold <= self.threshold:
            raise ValueError(f"neg_threshold must lie in (0, threshold], got {self.neg_threshold}")
        if min(self.min_speech_ms, self.min_silence_ms, self.pad_ms) < 0:
            raise ValueError("min_speech_ms, min_silence_ms and pad_ms must be 0 or more")
        if self.max_region_seconds < 1.0:
            raise ValueError(f"max_region_seconds must be at least 1, got {self.max_region_seconds}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SpeechRegion:
    """A stretch of speech: ``[start, end)`` in seconds from the recording's start."""

    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


def speech_regions(
    probabilities: np.ndarray | Sequence[float], n_samples: int, settings: VadSettings
) -> list[SpeechRegion]:
    """Speech regions of ``n_samples`` of audio from its frame probabilities, with Silero's rules."""
    from silero_vad import get_speech_timestamps_from_probs

    if len(probabilities) == 0:
        return []
    s = settings
    stamps = get_speech_timestamps_from_probs(
        [float(p) for p in probabilities],
        sampling_rate=SAMPLE_RATE,
        threshold=s.threshold,
        neg_threshold=s.neg_threshold,
        min_speech_duration_ms=s.min_speech_ms,
        min_silence_duration_ms=s.min_silence_ms,
        speech_pad_ms=s.pad_ms,
        max_speech_duration_s=s.max_region_seconds,
        audio_length_samples=n_samples,
    )
    return [
        SpeechRegion(start=int(t["start"]) / SAMPLE_RATE, end=min(int(t["end"]), n_samples) / SAMPLE_RATE)
        for t in stamps
        if int(t["end"]) > int(t["start"])
    ]


@contextlib.contextmanager
def _one_thread(torch: Any) -> Iterator[None]:
    """Score on one compute thread: the model is tiny, and on a busy machine a second thread only waits
    for cores the encoder holds. torch's thread count belongs to the calling thread; it is restored."""
    threads = torch.get_num_threads()
    if threads != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads != 1:
            torch.set_num_threads(threads)


def _load_silero() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a dependency
        raise VadError("speech segmentation needs torch") from exc
    # Importing silero_vad sets torch's process-wide thread count to 1; the encoder's setting is kept.
    threads = torch.get_num_threads()
    try:
        from silero_vad import load_silero_vad
    except ImportError as exc:
        raise VadError(
            "speech segmentation needs the silero-vad package (pip install silero-vad); it ships the model"
        ) from exc
    finally:
        torch.set_num_threads(threads)
    return load_silero_vad()


class SpeechDetector:
    """Silero VAD, loaded once; thread-safe (one recording is scored at a time).

    Args:
        settings: the segmentation parameters.
    """

    def __init__(self, settings: VadSettings | None = None) -> None:
        self.settings = settings or VadSettings()
        self._model = _load_silero()
        self._lock = threading.Lock()

    def probabilities(self, blocks: Iterable[np.ndarray], progress: Any = None) -> tuple[np.ndarray, int]:
        """Speech probabilities of a recording given as consecutive 16 kHz mono float32 blocks.

        Args:
            blocks: the recording, in blocks of any length.
            progress: called with the samples scored so far after each block, if given.

        Returns:
            (float32 ``[n_frames]`` probabilities, one per 512 samples; the recording's length in samples).
        """
        import torch

        probs: list[np.ndarray] = []
        carry = np.zeros(0, dtype=np.float32)
        total = 0
        with self._lock, torch.inference_mode(), _one_thread(torch):
            self._model.reset_states()
            for block in blocks:
                total += block.shape[0]
                data = np.concatenate([carry, block]) if carry.size else block
                whole = data.shape[0] // VAD_FRAME * VAD_FRAME
                probs.append(self._score(torch, data[:whole]))
                carry = data[whole:]
                if progress is not None:
                    progress(total)
            if carry.size:
                last = np.zeros(VAD_FRAME, dtype=np.float32)
                last[: carry.size] = carry
                probs.append(self._score(torch, last))
        return (np.concatenate(probs) if probs else np.zeros(0, dtype=np.float32)), total

    def _score(self, torch: Any, frames: np.ndarray) -> np.ndarray:
        out = np.empty(frames.shape[0] // VAD_FRAME, dtype=np.float32)
        tensor = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32))
        for i in range(out.shape[0]):
            out[i] = float(self._model(tensor[i * VAD_FRAME : (i + 1) * VAD_FRAME], SAMPLE_RATE))
        return out

    def regions(self, probabilities: np.ndarray, n_samples: int) -> list[SpeechRegion]:
        """Speech regions from frame probabilities, with Silero's rules and this detector's settings."""
        return speech_regions(probabilities, n_samples, self.settings)

    def stream(self) -> VadStream:
        """A scorer for one live stream: its own copy of the model, so that its recurrent state is its own
        while other recordings are scored (a copy takes a few milliseconds and about 2 MB)."""
        return VadStream(copy.deepcopy(self._model))

    def detect(self, blocks: Iterable[np.ndarray]) -> list[SpeechRegion]:
        """Speech regions of a recording given as 16 kHz blocks (``probabilities`` then ``regions``)."""
        probs, n = self.probabilities(blocks)
        return self.regions(probs, n)


class VadStream:
    """Speech probabilities of one live stream, frame by frame as its audio arrives (not thread-safe:
    one stream feeds it)."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self._model.reset_states()
        self._carry = np.zeros(0, dtype=np.float32)

    def feed(self, samples: np.ndarray) -> np.ndarray:
        """The probabilities of the whole 512-sample frames completed by ``samples`` (16 kHz mono float32);
        the rest waits for the next call."""
        import torch

        data = np.concatenate([self._carry, samples]) if self._carry.size else samples
        whole = data.shape[0] // VAD_FRAME * VAD_FRAME
        self._carry = np.array(data[whole:], dtype=np.float32)
        out = np.empty(whole // VAD_FRAME, dtype=np.float32)
        if whole:
            tensor = torch.from_numpy(np.ascontiguousarray(data[:whole], dtype=np.float32))
            with torch.inference_mode(), _one_thread(torch):
                for i in range(out.shape[0]):
                    out[i] = float(self._model(tensor[i * VAD_FRAME : (i + 1) * VAD_FRAME], SAMPLE_RATE))
        return out
