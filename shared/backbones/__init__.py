"""Backbones behind one interface: ``embed_batch(waveforms) -> float32 [n, d]``, and frames where they can.

``build_backbone(spec, options)`` routes a spec to its backend; each backend owns its loading and its
kernels:

| module | what it holds |
|---|---|
| ``base`` | the spec, the ``Backbone`` and ``FrameEncoder`` interfaces, layer selection, pooling |
| ``options`` | ``EncoderOptions``: how an encoder runs (device, precision, backend, threads, sizes, cache) |
| ``auto`` | ``backend="auto"``: the fast path this machine supports, and why |
| ``runtime`` | the machine: CPUs, threads, device, precision |
| ``cache`` | the derived-file cache: entry names and atomic builds |
| ``checkpoint`` | where weights come from: config, files, safetensors reading, half-precision copies |
| ``pooled`` | what every speech-encoder backend shares: normalise, batch, window, frames, pool |
| ``torch/`` | the torch backend: the project's modules, half-precision weights, transformers' fallback |
| ``onnx/`` | the ONNX Runtime backend: export, int8 quantisation, sessions (the ``onnx`` extra) |
| ``egemaps`` | the eGeMAPS v02 functionals from openSMILE |
"""

from __future__ import annotations

from typing import Any

from shared.backbones.base import (
    BACKBONE_KINDS,
    Backbone,
    BackboneSpec,
    FrameEncoder,
    HiddenStates,
    pool_frames,
)
from shared.backbones.options import BACKENDS, DTYPES, EncoderOptions

__all__ = [
    "BACKBONE_KINDS",
    "BACKENDS",
    "DTYPES",
    "Backbone",
    "BackboneSpec",
    "EncoderOptions",
    "FrameEncoder",
    "HiddenStates",
    "build_backbone",
    "pool_frames",
]


def build_backbone(spec: BackboneSpec, options: EncoderOptions | None = None) -> Backbone:
    """Build the backbone a spec describes, run as ``options`` say (default ``EncoderOptions()``).

    ``egemaps`` ignores the options; a ``hubert`` spec runs on ``options.backend``.

    Raises:
        BackboneError: the options do not fit the backend, or the encoder cannot be loaded.
    """
    options = options or EncoderOptions()
    if spec.kind == "egemaps":
        from shared.backbones.egemaps import EgemapsBackbone

        return EgemapsBackbone(spec)
    if options.backend == "auto":
        from shared.backbones.auto import choose_backbone

        return choose_backbone(spec, options)
    encoder: Any
    if options.backend == "torch":
        from shared.backbones.torch.encoder import TorchEncoder

        encoder = TorchEncoder(spec, options)
    else:
        from shared.backbones.onnx.encoder import OnnxEncoder

        encoder = OnnxEncoder(spec, options)
    encoder.precision_reason = f"the backend setting is {options.backend!r} and the dtype {options.dtype!r}"
    return encoder
