"""The ONNX Runtime backend: the speech encoder in fp32, or with dynamically quantised int8 matrix products.

Needs the optional ``onnx`` extra (``onnxruntime``, ``onnx``); ``torch`` and ``transformers`` are needed
only to export a model the first time (``shared.backbones.onnx.export``).

Exports are cached in ``EncoderOptions.onnx_cache`` (default ``<cache_dir>/onnx``), one folder per digest
of the checkpoint's identity, the layers kept and read, the quantisation and the exporter's versions, and
reused when present: a service start then loads only the config and the graph.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from shared.backbones.base import BackboneSpec
from shared.backbones.cache import building_cache_entry, cache_digest
from shared.backbones.checkpoint import EncoderSource
from shared.backbones.onnx.export import (
    EXPORT_FORMAT,
    OPSET,
    OUTPUT,
    export_encoder,
    export_versions,
    quantize_encoder,
)
from shared.backbones.onnx.session import open_session, require_onnxruntime
from shared.backbones.options import EncoderOptions
from shared.backbones.pooled import PooledSpeechEncoder
from shared.backbones.runtime import available_cpus
from shared.errors import BackboneError

log = logging.getLogger(__name__)


class OnnxEncoder(PooledSpeechEncoder):
    """A frozen Hugging Face speech encoder run by ONNX Runtime on the CPU, pooled per utterance.

    Same interface and pre/post-processing as ``TorchEncoder`` (``PooledSpeechEncoder``: normalisation,
    layer selection, batching, windows, frames, pooling over valid frames).

    Args:
        spec: the backbone spec (``kind == "hubert"``).
        options: ``backend`` ``"onnx"`` (fp32, the same embeddings as torch fp32) or ``"onnx-int8"``
            (faster, noisier); ``dtype`` must be ``"auto"`` or ``"fp32"`` and ``device`` ``"cpu"`` or
            ``"auto"``; ``threads`` are ONNX Runtime's intra-op threads (None: ``available_cpus()``);
            exports are cached in ``options.onnx_cache``.

    Raises:
        BackboneError: the options do not fit this backend, onnxruntime is missing, the model cannot be
            loaded or exported, or the layer does not exist.
    """

    def __init__(self, spec: BackboneSpec, options: EncoderOptions) -> None:
        backend = options.backend
        if backend not in ("onnx", "onnx-int8"):
            raise BackboneError(f"OnnxEncoder runs the 'onnx' and 'onnx-int8' backends, not {backend!r}")
        dtype = "int8" if backend == "onnx-int8" else "fp32"
        if options.dtype not in ("auto", "fp32"):
            raise BackboneError(
                f"the {backend} backend computes in {dtype}; dtype {options.dtype!r} applies to the torch "
                "backend only (use dtype 'auto' or 'fp32')"
            )
        if options.device not in ("cpu", "auto"):
            raise BackboneError(
                f"the {backend} backend runs on the CPU; use backend 'torch' on {options.device!r}"
            )
        require_onnxruntime()
        source = EncoderSource(spec, options)
        if getattr(source.config, "add_adapter", False):
            raise BackboneError(
                "encoders with adapter layers are not supported by the ONNX backend; use 'torch'"
            )
        super().__init__(spec, source, options)
        self.dtype = dtype
        self.fingerprint = {**self.fingerprint, "runtime": "onnxruntime"}
        self.threads = options.threads or available_cpus()
        self.cache_dir = options.onnx_cache
        self.model_path = self._cached_model()
        self.session = open_session(self.model_path, threads=self.threads)

    def _entry(self, dtype: str) -> Path:
        from importlib.metadata import version

        key = {
            "source": self.source.identity(),
            "layers": self.layers,
            "kept_layers": self.kept_layers,
            "dtype": dtype,
            "opset": OPSET,
            "format": EXPORT_FORMAT,
            "versions": export_versions(),
            # The quantiser's output depends on its version; an fp32 export does not.
            "onnxruntime": version("onnxruntime") if dtype == "int8" else None,
        }
        return self.cache_dir / cache_digest(key)

    def _cached_model(self) -> Path:
        """The graph for this spec and dtype: from the cache, else exported (and quantised) now."""
        fp32_entry = self._entry("fp32")
        fp32_model = fp32_entry / "encoder.onnx"
        if not fp32_model.is_file() and not (self.dtype == "int8" and self._entry("int8").is_dir()):
            self._build_entry(
                fp32_entry,
                lambda folder: export_encoder(
                    self.source, self.layers, self.kept_layers, folder / "encoder.onnx"
                ),
            )
        if self.dtype == "fp32":
            return fp32_model
        int8_entry = self._entry("int8")
        self._build_entry(
            int8_entry,
            lambda folder: quantize_encoder(fp32_model, folder / "encoder.onnx", self.calibration_waves()),
        )
        return int8_entry / "encoder.onnx"

    def _build_entry(self, entry: Path, build: Callable[[Path], None]) -> None:
        try:
            with building_cache_entry(entry) as scratch:
                if scratch is None:
                    return
                log.info("building the ONNX encoder %s (%s)", entry, self.dtype)
                build(scratch)
                meta = {
                    "model": self.source.location,
                    "spec": self.spec.to_dict(),
                    "layers": self.layers,
                    "kept_layers": self.kept_layers,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    **export_versions(),
                }
                (scratch / "meta.json").write_text(json.dumps(meta, indent=2))
        except OSError as exc:
            raise BackboneError(f"could not write the ONNX export to {entry.parent}: {exc}") from exc

    def _run(self, batch: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        if mask is None:
            mask = np.ones(batch.shape, dtype=np.int64)
        return self.session.run([OUTPUT], {"input_values": batch, "attention_mask": mask})[0]
