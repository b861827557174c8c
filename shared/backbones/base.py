"""The backbone interface: waveforms in, one fixed-size embedding per waveform out."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol, runtime_checkable

import numpy as np

from shared.constants import SAMPLE_RATE
from shared.errors import BackboneError

BACKBONE_KINDS = ("hubert", "egemaps")
POOLINGS = ("mean", "mean+std")
DTYPES = ("auto", "fp32", "bf16", "fp16")


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
    """

    kind: str
    model: str | None = None
    revision: str | None = None
    layer: int | None = None
    layer_end: int | None = None
    pooling: str = "mean"
    sample_rate: int = SAMPLE_RATE

    def __post_init__(self) -> None:
        if self.kind not in BACKBONE_KINDS:
            raise BackboneError(f"unknown backbone kind {self.kind!r}; accepted: {', '.join(BACKBONE_KINDS)}")
        if self.pooling not in POOLINGS:
            raise BackboneError(f"unknown pooling {self.pooling!r}; accepted: {', '.join(POOLINGS)}")
        if self.kind == "hubert" and not self.model:
            raise BackboneError("a 'hubert' backbone needs a model: a Hugging Face hub id or a local folder")
        if self.layer_end is not None and self.layer is None:
            raise BackboneError("layer_end needs layer: a layer range is layer..layer_end")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackboneSpec:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def cache_key(self, *, dtype: str = "fp32", extra: dict[str, Any] | None = None) -> str:
        """A stable hex digest of everything that changes the embeddings (used by the embedding cache)."""
        payload = {**self.to_dict(), "dtype": dtype, **(extra or {})}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


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
