"""``backend="auto"``: the fast path this machine supports, chosen when the encoder loads, with the reason.

With ``dtype="auto"`` on a CPU: torch in bf16 where the CPU has bf16 matrix units (AVX-512 BF16 or AMX);
else ONNX Runtime int8 where the CPU has int8 dot-product instructions (VNNI), the ``onnx`` extra is
installed and the int8 graph passes its accuracy check (``OnnxEncoder.int8_error``, measured once per
export against the fp32 graph); else torch in fp32. On CUDA, torch in the GPU's fast precision. A
precision that was set (``dtype`` other than ``"auto"``) runs on torch as set.

Every speech encoder built by ``build_backbone`` carries ``precision_reason``, which ``/v1/info`` shows
(``base.precision_of``).
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from shared.backbones.base import BackboneSpec
from shared.backbones.options import EncoderOptions
from shared.backbones.runtime import (
    cpu_has_fast_bf16,
    cpu_has_int8_dot_products,
    resolve_device,
)

log = logging.getLogger(__name__)

#: The most embedding error (mean distance to fp32 relative to the mean distance between clips) at which
#: ``auto`` serves int8.
INT8_ERROR_BAR = 0.03


def choose_backbone(spec: BackboneSpec, options: EncoderOptions) -> Any:
    """Build the encoder ``backend="auto"`` chooses for this machine (see the module docstring).

    Raises:
        BackboneError: the chosen encoder cannot be loaded.
    """
    from shared.backbones.torch.encoder import TorchEncoder

    def torch_encoder(why: str) -> Any:
        encoder = TorchEncoder(spec, options.replace(backend="torch"))
        encoder.precision_reason = f"{why}: torch in {encoder.dtype}"
        log.info("backend auto: %s", encoder.precision_reason)
        return encoder

    if options.dtype != "auto":
        return torch_encoder(f"the dtype setting asks for {options.dtype}")
    if resolve_device(options.device).type == "cuda":
        return torch_encoder("a CUDA device")
    if cpu_has_fast_bf16():
        return torch_encoder("this CPU has bf16 matrix units (AVX-512 BF16 or AMX)")
    if not cpu_has_int8_dot_products():
        return torch_encoder("this CPU has neither bf16 matrix units nor int8 dot products (VNNI)")
    if importlib.util.find_spec("onnxruntime") is None:
        return torch_encoder(
            "this CPU has int8 dot products (VNNI) and no bf16 units, but the int8 path needs the "
            "'onnx' extra, which is not installed"
        )
    from shared.backbones.onnx.encoder import OnnxEncoder

    encoder = OnnxEncoder(spec, options.replace(backend="onnx-int8"))
    error = encoder.int8_error
    if error <= INT8_ERROR_BAR:
        encoder.precision_reason = (
            f"this CPU has int8 dot products (VNNI) and no bf16 units, and the int8 graph's embeddings "
            f"are within {100 * error:.1f}% of fp32 (the bar is {100 * INT8_ERROR_BAR:.0f}%): ONNX "
            "Runtime int8"
        )
        log.info("backend auto: %s", encoder.precision_reason)
        return encoder
    del encoder
    return torch_encoder(
        f"this CPU has int8 dot products (VNNI) and no bf16 units, but the int8 graph's embeddings are "
        f"{100 * error:.1f}% from fp32 (the bar is {100 * INT8_ERROR_BAR:.0f}%)"
    )
