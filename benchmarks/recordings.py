"""Long test recordings built from real clips of known emotions, with the truth of who felt what, when.

A recording is clips laid end to end with pauses of silence (plus a faint noise floor, as a real room
has) between them; the truth is each clip's span and emotion. Timelines are scored against it with
the emotion diarization error rate (SpeechBrain's definition: 1 - correctly labelled time / total time).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.audio import decode_audio
from shared.constants import SAMPLE_RATE
from shared.loudness import FRAME, HOP, frame_energies, trim_silence

#: RAVDESS emotion codes of the six target emotions.
RAVDESS_EMOTIONS = {"01": "neutral", "03": "happy", "04": "sad", "05": "angry", "06": "fear", "07": "disgust"}
_RAVDESS_NAME = re.compile(r"03-01-(\d\d)-\d\d-\d\d-\d\d-(\d\d)\.(flac|wav)$")


@dataclass(frozen=True)
class TruthSpan:
    """One clip in a recording: its sentence's ``[start, end)`` seconds, its emotion, actor and file, and
    where its audio lies (``clip_start``, ``clip_end``: the sentence with the breath and room tone around it)."""

    start: float
    end: float
    emotion: str
    speaker: str
    path: str
    clip_start: float = 0.0
    clip_end: float = 0.0


@dataclass(frozen=True)
class ClipRef:
    path: Path
    emotion: str
    speaker: str


def ravdess_clips(root: Path, actors: Sequence[int] | None = None) -> list[ClipRef]:
    """The six-emotion RAVDESS speech clips under ``root`` (``Actor_NN/*.flac``), optionally of some actors."""
    clips = []
    for path in sorted(root.rglob("*")):
        match = _RAVDESS_NAME.search(path.name)
        if not match or match.group(1) not in RAVDESS_EMOTIONS:
            continue
        actor = int(match.group(2))
        if actors is None or actor in actors:
            clips.append(ClipRef(path, RAVDESS_EMOTIONS[match.group(1)], f"{actor:02d}"))
    return clips


def pick_clips(clips: Sequence[ClipRef], n: int, seed: int = 0) -> list[ClipRef]:
    """``n`` clips in a random order, cycling through emotions and actors so that both vary."""
    rng = np.random.default_rng(seed)
    order = list(rng.permutation(len(clips)))
    picked: list[ClipRef] = []
    last: ClipRef | None = None
    while order and len(picked) < n:
        # prefer a clip whose emotion and actor differ from the previous one
        index = next(
            (
                k
                for k, i in enumerate(order)
                if last is None or (clips[i].emotion != last.emotion and clips[i].speaker != last.speaker)
            ),
            0,
        )
        last = clips[order.pop(index)]
        picked.append(last)
    return picked


def speech_bounds(wave: np.ndarray, range_db: float = 30.0, pad_seconds: float = 0.05) -> tuple[int, int]:
    """Samples ``[start, end)`` from the first to the last 25 ms frame of ``wave`` within ``range_db`` of its
    loudest frame, with ``pad_seconds`` on each side: the sentence without the breaths and clicks around it."""
    energies = frame_energies(wave)
    level = 10 * np.log10(np.maximum(energies, 1e-12))
    loud = np.flatnonzero(level >= level.max() - range_db)
    pad = int(pad_seconds * SAMPLE_RATE)
    start = max(0, int(loud[0]) * HOP - pad)
    end = min(wave.shape[0], int(loud[-1]) * HOP + FRAME + pad)
    return start, end


def build_recording(
    clips: Sequence[ClipRef],
    *,
    pause_range: tuple[float, float] = (0.5, 2.0),
    lead_seconds: float = 1.0,
    noise_dbfs: float = -80.0,
    seed: int = 0,
    on_grid: bool = True,
) -> tuple[np.ndarray, list[TruthSpan]]:
    """Lay ``clips`` end to end with random pauses; returns (float32 16 kHz waveform, the truth).

    Each clip is first cut to its active part with ``shared.loudness.trim_silence`` (what a bundle with
    ``trim_silence`` sees of the file; RAVDESS files hold about a second of room tone around the sentence),
    and its truth span is the sentence within that (``speech_bounds``), so the pauses between spans are the
    silence between sentences. With ``on_grid`` every clip starts on the recording's 10 ms grid (as it
    lies on its own file's); without, each clip starts at a random sample. The pauses are noise at
    ``noise_dbfs`` (RAVDESS's own room tone lies about there).
    """
    rng = np.random.default_rng(seed)
    pieces: list[np.ndarray] = []
    truth: list[TruthSpan] = []
    position = 0

    def pause(seconds: float) -> None:
        nonlocal position
        # every clip starts on the recording's 10 ms grid, as its frames lie in its own file
        step = SAMPLE_RATE // 100
        n = int(round(seconds * 100)) * step + (-(position + int(round(seconds * 100)) * step)) % step
        if not on_grid:
            n += int(rng.integers(1, step))
        pieces.append((10 ** (noise_dbfs / 20) * rng.standard_normal(n)).astype(np.float32))
        position += n

    pause(lead_seconds)
    for i, clip in enumerate(clips):
        wave = np.array(trim_silence(decode_audio(clip.path)))
        start, end = speech_bounds(wave)
        truth.append(
            TruthSpan(
                (position + start) / SAMPLE_RATE,
                (position + end) / SAMPLE_RATE,
                clip.emotion,
                clip.speaker,
                str(clip.path),
                position / SAMPLE_RATE,
                (position + wave.shape[0]) / SAMPLE_RATE,
            )
        )
        pieces.append(wave)
        position += wave.shape[0]
        pause(float(rng.uniform(*pause_range)) if i < len(clips) - 1 else lead_seconds)
    return np.concatenate(pieces), truth


def loop_to_length(wave: np.ndarray, seconds: float) -> np.ndarray:
    """``wave`` repeated to exactly ``seconds`` long (for long-recording cost measurements)."""
    n = int(seconds * SAMPLE_RATE)
    reps = -(-n // wave.shape[0])
    return np.tile(wave, reps)[:n]


def labelled_time(
    truth: Sequence[TruthSpan], segments: Sequence[tuple[float, float, str]]
) -> dict[str, float]:
    """Time scored against the truth (seconds): ``total`` (the truth's), ``correct``, ``confused`` (a
    different label), ``missed`` (no label), ``false_alarm`` (labelled outside every true span), and
    ``eder`` = 1 - correct / total."""
    total = sum(t.end - t.start for t in truth)
    correct = confused = covered = 0.0
    for t in truth:
        for start, end, label in segments:
            overlap = min(t.end, end) - max(t.start, start)
            if overlap > 0:
                covered += overlap
                if label == t.emotion:
                    correct += overlap
                else:
                    confused += overlap
    labelled = sum(end - start for start, end, _ in segments)
    return {
        "total_s": round(total, 3),
        "correct_s": round(correct, 3),
        "confused_s": round(confused, 3),
        "missed_s": round(total - covered, 3),
        "false_alarm_s": round(labelled - covered, 3),
        "eder": round(1.0 - correct / total, 4) if total else 0.0,
    }
