"""What every speech-encoder backend shares: input normalisation, batching, windows, frames and pooling.

Batching follows what the architecture supports. Encoders whose convolutional feature encoder uses
layer norm (``feat_extract_norm == "layer"``: HuBERT-large/xlarge, WavLM-large, wav2vec2-large-lv60)
take padded batches with an attention mask and give the same result as one item at a time. Base models
use group norm over time, which padding would change, so they run one item at a time. Inputs longer
than ``window_seconds`` are encoded window by window and pooled over all frames, so memory stays
bounded by the window.

A backend (``shared.backbones.torch``, ``shared.backbones.onnx``) implements ``_run``, the network
itself; everything around it is here, so both backends compute the same embeddings from the same frames.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from shared.backbones.base import (
    BackboneSpec,
    EmbeddingStats,
    HiddenStates,
    kept_layer_count,
    pool_frames,
    requested_layers,
)
from shared.backbones.checkpoint import EncoderSource, config_digest
from shared.backbones.options import EncoderOptions
from shared.constants import SAMPLE_RATE
from shared.errors import BackboneError
from shared.signals import speech_like

#: The shortest input one encoder frame needs (400 samples = 25 ms at 16 kHz, HuBERT's receptive field).
MIN_SAMPLES = 400
#: A window tail shorter than this (samples) adds noise, not information, and is left out.
MIN_TAIL_SAMPLES = SAMPLE_RATE // 10
#: Generated voiced signals on which reduced-precision weights are calibrated (bias correction).
CALIBRATION_CLIPS = 8
CALIBRATION_SEED = 20_000


class PooledSpeechEncoder:
    """A frozen speech encoder pooled into one vector per utterance (``Backbone`` and ``FrameEncoder``).

    Subclasses set ``dtype`` and implement ``_run``; everything else is here.

    Args:
        spec: the backbone spec (``kind == "hubert"``).
        source: the checkpoint (config, input convention).
        options: ``max_batch_size`` and ``window_seconds`` apply here.

    Raises:
        BackboneError: the layer does not exist.
    """

    dtype: str
    #: Why this backend and precision run (set by ``build_backbone``; ``/v1/info`` shows it).
    precision_reason: str | None = None

    def __init__(self, spec: BackboneSpec, source: EncoderSource, options: EncoderOptions) -> None:
        config = source.config
        self.spec = spec
        self.source = source
        self.max_batch_size = options.max_batch_size
        self.window_samples = max(SAMPLE_RATE, int(options.window_seconds * SAMPLE_RATE))
        self.n_layers = int(config.num_hidden_layers)
        self.layers = requested_layers(spec, self.n_layers)
        self.kept_layers = kept_layer_count(self.layers, self.n_layers)
        self.supports_padding = getattr(config, "feat_extract_norm", "group") == "layer"
        self.do_normalize = source.do_normalize
        self.dim = int(config.hidden_size) * (2 if spec.pooling == "mean+std" else 1)
        self.fingerprint: dict[str, Any] = {
            "config_sha256": config_digest(config),
            "normalize": self.do_normalize,
        }
        commit = source.commit
        if commit:
            # the hub commit the files came from: the manifest then says which weights, even for "main"
            self.fingerprint["commit"] = str(commit)
        self._conv = list(zip(config.conv_kernel, config.conv_stride, strict=True))
        self.hop, self.receptive = 1, 1
        for kernel, stride in self._conv:
            self.receptive += (kernel - 1) * self.hop
            self.hop *= stride

    # -- the Backbone interface ----------------------------------------------------------------------

    def embed_batch(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        """Embed mono float32 16 kHz waveforms; returns float32 ``[n, dim]`` in input order.

        Raises:
            BackboneError: a waveform is shorter than one encoder frame.
        """
        out = np.zeros((len(waveforms), self.dim), dtype=np.float32)
        prepared = [self._normalize(self.spec.prepare(w)) for w in waveforms]
        short = [i for i, w in enumerate(prepared) if w.shape[0] <= self.window_samples]
        long = [i for i, w in enumerate(prepared) if w.shape[0] > self.window_samples]
        # Sorting by length keeps padding small inside each batch.
        short.sort(key=lambda i: prepared[i].shape[0])
        step = self.max_batch_size if self.supports_padding else 1
        for start in range(0, len(short), step):
            idx = short[start : start + step]
            for i, frames in zip(idx, self._forward([prepared[i] for i in idx]), strict=True):
                out[i] = pool_frames(frames, self.spec.pooling)
        for i in long:
            # Window by window, so memory holds one window's frames, not the whole input's.
            stats = EmbeddingStats()
            for _, frames in self._windows(prepared[i]):
                stats.add(frames)
            out[i] = stats.pool(self.spec.pooling)
        return out

    # -- the FrameEncoder interface --------------------------------------------------------------------

    def encode_frames(self, waveform: np.ndarray, *, overlap_seconds: float = 0.0) -> HiddenStates:
        """The hidden states of one waveform, normalised as ``embed_batch`` does (with
        ``spec.trim_silence`` the frames' ``starts`` count from the trimmed input's first sample).

        An input longer than the window length is encoded in pieces of at most that length. With
        ``overlap_seconds``, consecutive pieces overlap by twice that: each piece is encoded with that much
        context on both sides and gives only the frames of its middle, so frames near a piece boundary
        see the audio around them, and the frames lie on the grid a single pass would give.

        Raises:
            BackboneError: the waveform is shorter than one encoder frame.
        """
        wave = self._normalize(self.spec.prepare(waveform))
        context = int(overlap_seconds * SAMPLE_RATE) // self.hop * self.hop
        # at least half of every piece is its own middle
        context = min(context, self.window_samples // 4 // self.hop * self.hop)
        if context <= 0 or wave.shape[0] <= self.window_samples:
            frames, starts = [], []
            for offset, window_frames in self._windows(wave):
                frames.append(window_frames)
                starts.append(offset + self.hop * np.arange(window_frames.shape[0], dtype=np.int64))
        else:
            frames, starts = self._overlapped(wave, context)
        return HiddenStates(
            frames=np.concatenate(frames),
            starts=np.concatenate(starts),
            hop=self.hop,
            receptive=self.receptive,
        )

    def encode_frames_batch(
        self, waveforms: Sequence[np.ndarray], *, overlap_seconds: float = 0.0
    ) -> list[HiddenStates]:
        """``encode_frames`` of several waveforms; those within the window length share padded forward
        passes of at most ``max_batch_size`` (where the architecture supports padding: the results equal
        one item at a time), sorted by length so that padding stays small."""
        out: list[HiddenStates | None] = [None] * len(waveforms)
        prepared = [self._normalize(self.spec.prepare(w)) for w in waveforms]
        short = sorted(
            (
                i
                for i, w in enumerate(prepared)
                if w.shape[0] <= self.window_samples and w.shape[0] >= MIN_SAMPLES
            ),
            key=lambda i: prepared[i].shape[0],
        )
        step = self.max_batch_size if self.supports_padding else 1
        for start in range(0, len(short), step):
            idx = short[start : start + step]
            longest = max(prepared[i].shape[0] for i in idx)
            # Padded to whole seconds: the kernels compiled and cached for each input shape (oneDNN's
            # primitive cache) then stay few, and so does the memory they hold, however long the recording.
            pad_to = -(-longest // SAMPLE_RATE) * SAMPLE_RATE if self.supports_padding else None
            for i, frames in zip(idx, self._forward([prepared[i] for i in idx], pad_to=pad_to), strict=True):
                out[i] = HiddenStates(
                    frames=frames,
                    starts=self.hop * np.arange(frames.shape[0], dtype=np.int64),
                    hop=self.hop,
                    receptive=self.receptive,
                )
        for i, states in enumerate(out):
            if states is None:
                out[i] = self.encode_frames(waveforms[i], overlap_seconds=overlap_seconds)
        return [s for s in out if s is not None]

    def _overlapped(self, wave: np.ndarray, context: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Frames and their first samples, piece by piece, each piece with ``context`` samples (a multiple
        of ``hop``) of audio on both sides of the middle it keeps."""
        step = (self.window_samples - 2 * context) // self.hop * self.hop
        frames, starts = [], []
        core = 0
        while core < wave.shape[0]:
            core_end = min(wave.shape[0], core + step)
            first = max(0, core - context)
            piece = self._forward([wave[first : min(wave.shape[0], core_end + context)]])[0]
            at = first + self.hop * np.arange(piece.shape[0], dtype=np.int64)
            keep = (at >= core) & (at < core_end)
            frames.append(piece[keep])
            starts.append(at[keep])
            core = core_end
        return frames, starts

    def pool(self, states: HiddenStates, first: int = 0, last: int | None = None) -> np.ndarray:
        """The embedding of frames ``[first, last)`` of ``states``, float32 ``[dim]``.

        Raises:
            BackboneError: the range holds no frame.
        """
        return pool_frames(states.frames[first:last], self.spec.pooling)

    # -- shared steps ---------------------------------------------------------------------------------

    def _windows(self, wave: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """(first sample, valid frames ``[n_frames, hidden]``) of each window of a prepared waveform."""
        for start in range(0, max(1, wave.shape[0]), self.window_samples):
            chunk = wave[start : start + self.window_samples]
            if start > 0 and chunk.shape[0] < MIN_TAIL_SAMPLES:
                continue
            yield start, self._forward([chunk])[0]

    def calibration_waves(self) -> list[np.ndarray]:
        """Generated voiced signals of 2-3.75 s, normalised as the encoder's inputs are: a correction for
        rounded weights needs each layer's mean input over speech-like sound, not any particular speech."""
        return [
            self._normalize(speech_like(2.0 + 0.25 * i, seed=CALIBRATION_SEED + i))
            for i in range(CALIBRATION_CLIPS)
        ]

    def _normalize(self, wave: np.ndarray) -> np.ndarray:
        if not self.do_normalize:
            return wave
        # The checkpoint's own input normalisation: zero mean, unit variance per utterance.
        return ((wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)).astype(np.float32)

    def frame_counts(self, lengths: Sequence[int]) -> list[int]:
        """Encoder frames produced from inputs of ``lengths`` samples (the conv stack's output lengths)."""
        counts = []
        for n in lengths:
            for kernel, stride in self._conv:
                n = (n - kernel) // stride + 1
            counts.append(int(n))
        return counts

    def _forward(self, waves: list[np.ndarray], pad_to: int | None = None) -> list[np.ndarray]:
        """Run the encoder on a batch (padded to at least ``pad_to`` samples, for encoders that support
        padding); returns each item's valid frames, float32 ``[n_frames, hidden]``."""
        lengths = [w.shape[0] for w in waves]
        if min(lengths) < MIN_SAMPLES:
            raise BackboneError(
                f"audio of {min(lengths)} samples is shorter than one encoder frame (400 samples = 25 ms)"
            )
        width = max(max(lengths), pad_to or 0)
        batch = np.zeros((len(waves), width), dtype=np.float32)
        for row, w in enumerate(waves):
            batch[row, : w.shape[0]] = w
        mask = None
        if len(waves) > 1 or width > max(lengths):
            mask = (np.arange(batch.shape[1])[None, :] < np.array(lengths)[:, None]).astype(np.int64)
        hidden = self._run(batch, mask)
        return [hidden[row, :n] for row, n in enumerate(self.frame_counts(lengths))]

    def _run(self, batch: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """The network: float32 ``[B, S]`` samples and int64 ``[B, S]`` mask (None: no padding) to
        float32 ``[B, T, H]`` hidden states."""
        raise NotImplementedError
