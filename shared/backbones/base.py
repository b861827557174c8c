"""The backbone interfaces and the spec that names a backbone.

Every backbone turns waveforms into one fixed-size embedding each (``Backbone.embed_batch``). The speech
encoders also give an utterance's frame-level hidden states (``FrameEncoder.encode_frames``), and pooling a
range of those frames (``FrameEncoder.pool``) is the very computation ``embed_batch`` applies to all of
them: many windows of a long recording can then be pooled out of one encoder pass.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol, runtime_checkable

import numpy as np

from shared.constants import SAMPLE_RATE
from shared.errors import BackboneError
from shared.loudness import prepare_input

BACKBONE_KINDS = ("hubert", "egemaps")
POOLINGS = ("mean", "mean+std")
#: Marker for "the model's last hidden state" (after the final layer norm, where the model has one).
LAST_HIDDEN_STATE = -1


@dataclass(frozen=True)
class BackboneSpec:
    """Everything that determines a backbone's embeddings; recorded in every bundle's manifest.

    Attributes:
        kind: ``"hubert"`` (any Hugging Face speech encoder: HuBERT, WavLM, wav2vec2) or ``"egemaps"``
            (the 88 eGeMAPS v02 functionals from openSMILE).
        model: hub id (``facebook/hubert-large-ll60k``) or a local folder; ``hubert`` only.
        revision: the hub revision (branch, tag or commit) to pin; ``None`` means the default branch.
        layer: which hidden state to pool. ``None`` (the default) is the model's ``last_hidden_state``
            (after the final layer norm of pre-norm encoders such as HuBERT-large). An integer follows
            Hugging Face's ``hidden_states`` indexing: 0 is the input of the first transformer layer and
            k (1..L) the output of layer k; negative values count from the top (-1 is L).
        layer_end: when set, the embedding is the mean of the hidden states ``layer..layer_end`` (inclusive).
        pooling: ``"mean"`` over valid frames, or ``"mean+std"`` (the dimension doubles).
        sample_rate: input rate in Hz; always 16 kHz for the supported encoders.
        level_dbfs: when set, each utterance is scaled so that its active frames sit at this level
            (``shared.loudness.normalize_level``) before the backbone sees it; ``None`` leaves it as is.
        trim_silence: drop each utterance's leading and trailing inactive frames first.
    """

    kind: str
    model: str | None = None
    revision: str | None = None
    layer: int | None = None
    layer_end: int | None = None
    pooling: str = "mean"
    sample_rate: int = SAMPLE_RATE
    level_dbfs: float | None = None
    trim_silence: bool = False

    def __post_init__(self) -> None:
        if self.kind not in BACKBONE_KINDS:
            raise BackboneError(f"unknown backbone kind {self.kind!r}; accepted: {', '.join(BACKBONE_KINDS)}")
        if self.pooling not in POOLINGS:
            raise BackboneError(f"unknown pooling {self.pooling!r}; accepted: {', '.join(POOLINGS)}")
        if self.kind == "hubert" and not self.model:
            raise BackboneError("a 'hubert' backbone needs a model: a Hugging Face hub id or a local folder")
        if self.layer_end is not None and self.layer is None:
            raise BackboneError("layer_end needs layer: a layer range is layer..layer_end")
        if self.level_dbfs is not None and not -60.0 <= self.level_dbfs <= -3.0:
            raise BackboneError(f"level_dbfs must be between -60 and -3 dBFS, got {self.level_dbfs}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackboneSpec:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def prepare(self, waveform: np.ndarray) -> np.ndarray:
        """The input normalisation this spec records, applied to one waveform (float32 ``[n_samples]``)."""
        return prepare_input(waveform, self.level_dbfs, self.trim_silence)

    def cache_key(self, *, dtype: str = "fp32", extra: dict[str, Any] | None = None) -> str:
        """A stable hex digest of everything that changes the embeddings (used by the embedding cache).

        Input normalisation left off is not part of it, so caches written before it existed stay valid.
        """
        payload = {**self.to_dict(), "dtype": dtype, **(extra or {})}
        for name, off in (("level_dbfs", None), ("trim_silence", False)):
            if payload.get(name) == off:
                payload.pop(name)
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def requested_layers(spec: BackboneSpec, n_layers: int) -> list[int]:
    """The absolute hidden-state indices a spec reads (``[LAST_HIDDEN_STATE]`` for the default).

    Raises:
        BackboneError: a layer does not exist, or the range is empty.
    """
    if spec.layer is None:
        return [LAST_HIDDEN_STATE]

    def absolute(layer: int) -> int:
        idx = layer + n_layers + 1 if layer < 0 else layer
        if not 0 <= idx <= n_layers:
            raise BackboneError(f"layer {layer} does not exist: this encoder has hidden states 0..{n_layers}")
        return idx

    first = absolute(spec.layer)
    last = absolute(spec.layer_end) if spec.layer_end is not None else first
    if last < first:
        raise BackboneError(f"layer range {spec.layer}..{spec.layer_end} is empty")
    return list(range(first, last + 1))


def kept_layer_count(layers: Sequence[int], n_layers: int) -> int:
    """How many transformer layers must run to produce hidden states ``layers`` (at least 1)."""
    top = n_layers if LAST_HIDDEN_STATE in layers else max(layers)
    return max(top, 1)


@runtime_checkable
class Backbone(Protocol):
    """What every backbone offers. Implementations are not thread-safe: one thread owns one backbone."""

    spec: BackboneSpec
    #: The embedding size ``d``.
    dim: int
    #: The numeric precision the encoder runs in (``"fp32"``, ``"bf16"``, ``"fp16"``).
    dtype: str
    #: Extra facts that change embeddings beyond the spec (for example a checkpoint's config hash).
    fingerprint: dict[str, Any]

    def embed_batch(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        """Embed mono float32 16 kHz waveforms (each shape ``[n_samples]``); returns float32 ``[n, dim]``."""
        ...


@dataclass(frozen=True)
class HiddenStates:
    """One utterance's frame-level hidden states, as a speech encoder computed them.

    Attributes:
        frames: float32 ``[n_frames, hidden]``.
        starts: int64 ``[n_frames]``: the first input sample of each frame's receptive field (frames of
            an input encoded in windows restart at each window, so this is not a plain multiple of ``hop``).
        hop: samples between consecutive frames (320 for HuBERT: 50 frames a second at 16 kHz).
        receptive: samples each frame sees (400 for HuBERT).
        sample_rate: Hz of the input.
    """

    frames: np.ndarray
    starts: np.ndarray
    hop: int
    receptive: int
    sample_rate: int = SAMPLE_RATE

    @property
    def frame_rate(self) -> float:
        """Frames per second."""
        return self.sample_rate / self.hop

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def frame_range(self, start_s: float, end_s: float) -> tuple[int, int]:
        """The frames ``[first, last)`` whose receptive field starts in ``[start_s, end_s)`` seconds."""
        bounds = np.array([start_s, end_s]) * self.sample_rate
        first, last = np.searchsorted(self.starts, bounds, side="left")
        return int(first), int(last)


@runtime_checkable
class FrameEncoder(Protocol):
    """A backbone that also gives frame-level hidden states (the speech encoders; eGeMAPS does not).

    ``pool(encode_frames(w))`` over all frames equals ``embed_batch([w])[0]``: both are one computation.
    """

    def encode_frames(self, waveform: np.ndarray, *, overlap_seconds: float = 0.0) -> HiddenStates:
        """The hidden states of one mono float32 16 kHz waveform ``[n_samples]`` (the spec's layer(s),
        normalised as ``embed_batch`` normalises; inputs over the window length are encoded in pieces,
        overlapping by ``2 * overlap_seconds`` when that is set)."""
        ...

    def encode_frames_batch(
        self, waveforms: Sequence[np.ndarray], *, overlap_seconds: float = 0.0
    ) -> list[HiddenStates]:
        """``encode_frames`` of each waveform, sharing forward passes where the architecture allows."""
        ...

    def pool(self, states: HiddenStates, first: int = 0, last: int | None = None) -> np.ndarray:
        """The embedding of frames ``[first, last)``: float32 ``[dim]``, as ``embed_batch`` pools them."""
        ...


@dataclass
class EmbeddingStats:
    """Running frame statistics for one utterance, so long inputs can be pooled window by window."""

    total: np.ndarray | None = None
    total_sq: np.ndarray | None = None
    frames: int = 0

    def add(self, frames: np.ndarray) -> None:
        """Add ``frames`` of shape ``[n_frames, d]`` (float64 accumulation)."""
        f = frames.astype(np.float64, copy=False)
        s, sq = f.sum(axis=0), np.square(f).sum(axis=0)
        self.total = s if self.total is None else self.total + s
        self.total_sq = sq if self.total_sq is None else self.total_sq + sq
        self.frames += f.shape[0]

    def pool(self, pooling: str) -> np.ndarray:
        if self.total is None or self.total_sq is None or self.frames == 0:
            raise BackboneError(
                "no frames to pool: the input is shorter than one encoder frame (about 25 ms)"
            )
        mean = self.total / self.frames
        if pooling == "mean":
            return mean.astype(np.float32)
        var = np.maximum(self.total_sq / self.frames - np.square(mean), 0.0)
        return np.concatenate([mean, np.sqrt(var)]).astype(np.float32)


def pool_frames(frames: np.ndarray, pooling: str) -> np.ndarray:
    """Pool ``[n_frames, d]`` frames into one embedding (``"mean"``: ``[d]``; ``"mean+std"``: ``[2d]``).

    Raises:
        BackboneError: there are no frames.
    """
    stats = EmbeddingStats()
    if len(frames):
        stats.add(frames)
    return stats.pool(pooling)


def relative_embedding_error(reference: np.ndarray, other: np.ndarray) -> float:
    """How far ``other`` embeddings (``[n_clips, d]``) are from ``reference``: the mean distance between
    each clip's two embeddings relative to the mean distance between different clips' reference ones."""
    pairs = np.linalg.norm(reference[:, None] - reference[None], axis=2)
    between = float(pairs[np.triu_indices(len(reference), 1)].mean())
    return float(np.linalg.norm(other - reference, axis=1).mean() / max(between, 1e-12))


def precision_of(backbone: Any) -> dict[str, Any]:
    """What ``/v1/info`` says of the encoder served: backend, precision, and why (``precision_reason``,
    which ``build_backbone`` sets)."""
    return {
        "backend": getattr(backbone, "backend", backbone.spec.kind),
        "dtype": backbone.dtype,
        "reason": getattr(backbone, "precision_reason", None),
    }
