"""Speech encoders behind one interface: ``embed_batch(waveforms) -> float32 [n, d]``."""

from __future__ import annotations

from shared.backbones.base import BACKBONE_KINDS, Backbone, BackboneSpec

__all__ = ["BACKBONE_KINDS", "Backbone", "BackboneSpec", "build_backbone"]


def build_backbone(
    spec: BackboneSpec,
    *,
    device: str = "cpu",
    dtype: str = "fp32",
    max_batch_size: int = 8,
    window_seconds: float = 30.0,
    model_override: str | None = None,
    local_files_only: bool = False,
) -> Backbone:
    """Build the backbone a spec describes.

    ``device``, ``dtype``, ``max_batch_size``, ``window_seconds`` and ``model_override`` apply to
    ``hubert`` backbones (see ``HuggingFaceEncoder``); ``egemaps`` ignores them.

    Raises:
        BackboneError: unknown kind, or the encoder cannot be loaded.
    """
    if spec.kind == "egemaps":
        from shared.backbones.egemaps import EgemapsBackbone

        return EgemapsBackbone(spec)
    from shared.backbones.hubert import HuggingFaceEncoder

    return HuggingFaceEncoder(
        spec,
        device=device,
        dtype=dtype,
        max_batch_size=max_batch_size,
        window_seconds=window_seconds,
        model_override=model_override,
        local_files_only=local_files_only,
    )
