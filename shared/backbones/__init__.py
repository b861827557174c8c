"""Speech encoders behind one interface: ``embed_batch(waveforms) -> float32 [n, d]``."""

from __future__ import annotations

import os

from shared.backbones.base import BACKBONE_KINDS, Backbone, BackboneSpec
from shared.errors import BackboneError

__all__ = ["BACKBONE_KINDS", "BACKENDS", "Backbone", "BackboneSpec", "build_backbone"]

#: How a ``hubert`` encoder runs: torch (fp32/bf16/fp16), or ONNX Runtime on the CPU in fp32 or with
#: dynamically quantised int8 matrix products (needs the ``onnx`` extra).
BACKENDS = ("torch", "onnx", "onnx-int8")


def build_backbone(
    spec: BackboneSpec,
    *,
    device: str = "cpu",
    dtype: str = "fp32",
    max_batch_size: int = 8,
    window_seconds: float = 30.0,
    model_override: str | None = None,
    local_files_only: bool = False,
    backend: str = "torch",
    threads: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Backbone:
    """Build the backbone a spec describes.

    ``device``, ``dtype``, ``max_batch_size``, ``window_seconds``, ``model_override``, ``backend``,
    ``threads`` and ``cache_dir`` apply to ``hubert`` backbones (see
    ``HuggingFaceEncoder`` and ``OnnxEncoder``); ``egemaps`` ignores them.

    ``backend``: ``"torch"`` (default), ``"onnx"`` (ONNX Runtime, fp32) or ``"onnx-int8"`` (ONNX Runtime,
    int8 matrix products; its embeddings differ more from fp32). The ONNX backends run on the CPU and
    take ``dtype`` ``"auto"`` or ``"fp32"`` only.

    Raises:
        BackboneError: unknown kind or backend, or the encoder cannot be loaded.
    """
    if spec.kind == "egemaps":
        from shared.backbones.egemaps import EgemapsBackbone

        return EgemapsBackbone(spec)
    if backend not in BACKENDS:
        raise BackboneError(f"unknown backend {backend!r}; accepted: {', '.join(BACKENDS)}")
    if backend != "torch":
        from shared.backbones.onnx import OnnxEncoder

        if dtype not in ("auto", "fp32"):
            raise BackboneError(
                f"the {backend} backend computes in {'int8' if backend == 'onnx-int8' else 'fp32'}; "
                f"dtype {dtype!r} applies to the torch backend only (use dtype 'auto' or 'fp32')"
            )
        if device not in ("cpu", "auto"):
            raise BackboneError(f"the {backend} backend runs on the CPU; use backend 'torch' on {device!r}")
        return OnnxEncoder(
            spec,
            dtype="int8" if backend == "onnx-int8" else "fp32",
            max_batch_size=max_batch_size,
            window_seconds=window_seconds,
            model_override=model_override,
            local_files_only=local_files_only,
            threads=threads,
            cache_dir=cache_dir,
        )
    from shared.backbones.hubert import HuggingFaceEncoder

    return HuggingFaceEncoder(
        spec,
        device=device,
        dtype=dtype,
        max_batch_size=max_batch_size,
        window_seconds=window_seconds,
        model_override=model_override,
        local_files_only=local_files_only,
        threads=threads,
        cache_dir=cache_dir,
    )
