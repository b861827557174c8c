"""The ONNX Runtime backend: the speech encoder's transformer in fp32, or with dynamically quantised int8
matrix products, after a torch front end.

The front end (convolutions, feature projection, positional convolution: hidden state 0) is the torch
backend's own, one utterance at a time in pieces; in fp32 for ``onnx`` (the same embeddings as torch
fp32) and, for ``onnx-int8``, in bf16 where the CPU has bf16 units (else fp32). ONNX Runtime runs the
transformer layers. Needs the optional ``onnx`` extra (``onnxruntime``, ``onnx``); ``transformers`` is
needed only to export a model the first time (``shared.backbones.onnx.export``).

Exports are cached in ``EncoderOptions.onnx_cache`` (default ``<cache_dir>/onnx``), one folder per digest
of the checkpoint's identity, the layers kept and read, the quantisation and the exporter's versions, and
reused when present: a service start then loads only the config and the graph.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from shared.backbones.base import BackboneSpec, pool_frames, relative_embedding_error
from shared.backbones.cache import building_cache_entry, cache_digest
from shared.backbones.checkpoint import EncoderSource
from shared.backbones.onnx import export
from shared.backbones.onnx.export import (
    EXPORT_FORMAT,
    OPSET,
    OUTPUT,
    export_encoder,
    export_versions,
    frame_mask,
    quantize_encoder,
    run_graph,
)
from shared.backbones.onnx.session import open_session, require_onnxruntime
from shared.backbones.options import EncoderOptions
from shared.backbones.pooled import PooledSpeechEncoder
from shared.backbones.runtime import available_cpus, cpu_has_fast_bf16
from shared.backbones.torch.encoder import TorchEncoder
from shared.errors import BackboneError
from shared.signals import speech_like

log = logging.getLogger(__name__)

#: The int8 export's accuracy check (``OnnxEncoder.int8_error``): its file, clips and their seed.
CHECK_FILE = "check.json"
CHECK_CLIPS = 6
CHECK_SEED = 30_000


class OnnxEncoder(PooledSpeechEncoder):
    """A frozen Hugging Face speech encoder run by ONNX Runtime on the CPU, pooled per utterance.

    Same interface and pre/post-processing as ``TorchEncoder`` (``PooledSpeechEncoder``: normalisation,
    layer selection, batching, windows, frames, pooling over valid frames).

    Args:
        spec: the backbone spec (``kind == "hubert"``).
        options: ``backend`` ``"onnx"`` (fp32, the same embeddings as torch fp32) or ``"onnx-int8"``
            (faster, noisier); ``dtype`` must be ``"auto"`` or ``"fp32"`` and ``device`` ``"cpu"`` or
            ``"auto"``; ``threads`` are ONNX Runtime's intra-op threads and the front end's torch
            threads (None: ``available_cpus()``); exports are cached in ``options.onnx_cache``, the
            front end's half-precision weights in ``options.model_cache``.

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
        self.backend = backend
        self.dtype = dtype
        self.threads = options.threads or available_cpus()
        #: Hidden state 0 of each batch, computed by the torch backend (see the module docstring).
        self.front = TorchEncoder(
            dataclasses.replace(spec, layer=0, layer_end=None, pooling="mean"),
            options.replace(
                backend="torch",
                device="cpu",
                dtype="bf16" if dtype == "int8" and cpu_has_fast_bf16() else "fp32",
                threads=self.threads,
            ),
            front_end_only=True,
        )
        self.fingerprint = {
            **self.fingerprint,
            "runtime": "onnxruntime",
            "front_end": f"torch-{self.front.dtype}",
        }
        self.cache_dir = options.onnx_cache
        self.model_path = self._cached_model()
        self.session = open_session(self.model_path, threads=self.threads)
        #: int8 only: the int8 graph's embedding error against the fp32 graph's on generated voiced
        #: signals (mean distance relative to the mean distance between clips), measured at export.
        self.int8_error = (
            float(json.loads((self.model_path.parent / CHECK_FILE).read_text())["relative_error"])
            if dtype == "int8"
            else 0.0
        )

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
            # The quantiser's output depends on its version, and the bias correction on the front end's
            # precision (it is calibrated on the front end's output); an fp32 export depends on neither.
            "onnxruntime": version("onnxruntime") if dtype == "int8" else None,
            "front_end": self.front.dtype if dtype == "int8" else None,
            "fp32_scopes": list(export.FP32_SCOPES) if dtype == "int8" else None,
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

        def build_int8(folder: Path) -> None:
            quantize_encoder(
                fp32_model,
                folder / "encoder.onnx",
                [self.front._run(w[None], None) for w in self.calibration_waves()],
            )
            check = self._int8_check(fp32_model, folder / "encoder.onnx")
            (folder / CHECK_FILE).write_text(json.dumps(check, indent=2))

        self._build_entry(int8_entry, build_int8)
        return int8_entry / "encoder.onnx"

    def _int8_check(self, fp32_model: Path, int8_model: Path) -> dict[str, Any]:
        """The int8 graph's embeddings against the fp32 graph's, on generated voiced signals other than the
        calibration ones: the mean distance between them relative to the mean distance between clips."""
        waves = [self._normalize(speech_like(2.0 + 0.5 * i, seed=CHECK_SEED + i)) for i in range(CHECK_CLIPS)]
        inputs = [self.front._run(w[None], None) for w in waves]
        embeddings = []
        for path in (fp32_model, int8_model):
            session = open_session(path, threads=self.threads)
            embeddings.append(
                np.stack(
                    [
                        pool_frames(
                            run_graph(session, [OUTPUT], h, np.ones(h.shape[:2], dtype=np.int64))[0][0],
                            self.spec.pooling,
                        )
                        for h in inputs
                    ]
                ).astype(np.float64)
            )
            del session
        error = relative_embedding_error(*embeddings)
        return {
            "relative_error": error,
            "clips": CHECK_CLIPS,
            "signals": "generated voiced",
            "seed": CHECK_SEED,
        }

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
        hidden0 = self.front._run(batch, mask)
        lengths = [batch.shape[1]] * batch.shape[0] if mask is None else mask.sum(axis=1).tolist()
        frames = frame_mask(self.frame_counts(lengths), hidden0.shape[1])
        return run_graph(self.session, [OUTPUT], hidden0, frames)[0]
