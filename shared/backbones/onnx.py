"""The speech encoder on ONNX Runtime: fp32, or with dynamically quantised int8 matrix products.

Needs the optional ``onnx`` extra (``onnxruntime``, ``onnx``); ``torch`` and ``transformers`` are needed
only to export a model the first time.

How the graph is made: the Hugging Face model, cut after the last layer the spec reads, is wrapped in
``HiddenStateReadout`` (waveforms + attention mask in, the chosen hidden state out, or the mean of a
range) and exported with ``torch.onnx.export`` (the TorchScript exporter: the dynamo exporter needs
``onnxscript``, which the extra does not bring), with dynamic batch and length. The export is checked
against torch on a padded batch before it is kept.

The convolutional feature encoder of layer-norm models (HuBERT-large and the like) is exported as
``TimeMajorFeatureEncoder``: each convolution becomes strided slices of a ``[batch, time, channels]``
tensor, joined along channels, times one ``[kernel * in, out]`` matrix, and the layer norms act on the
last axis with no transposes. The result is the convolution's to float rounding (the export check holds
it to 1e-4), and ONNX Runtime's matrix product runs it near the CPU's fp32 peak, where its 1-D ``Conv``
did not. Group-norm encoders keep their ``Conv`` nodes.

For int8, ``quantize_dynamic`` then quantises the MatMul nodes whose second input is a weight to int8
weights with one scale per output channel, activations quantised on the fly (one scale per tensor): the
transformer's linear layers and convolutions 2-7 of a time-major feature encoder. What stays fp32
(``FP32_SCOPES``): the first convolution, which reads the raw samples (quantised, they lose the
embedding), the feature projection, and the attention products. On the HuBERT-large architecture
(2 cores, 2.5 s of speech) quantising convolutions 2-7 as well takes the int8 graph from 0.28 s to
0.22 s, for an embedding error of 15% of the distance between different clips instead of 14%.

Exports are cached in ``$SER_ONNX_CACHE`` (default ``<cache>/onnx``, see ``default_cache_dir``), one
folder per digest of the checkpoint's identity, the layers kept and read, the quantisation and the
exporter's versions, and reused when present: a service start then loads only the config and the graph.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.backbones.base import BackboneSpec
from shared.backbones.hubert import (
    EncoderSource,
    HiddenStateReadout,
    PooledSpeechEncoder,
    available_cpus,
    building_cache_entry,
    cache_digest,
    default_cache_dir,
)
from shared.backbones.native import kernel_matrix
from shared.errors import BackboneError

log = logging.getLogger(__name__)

ONNX_CACHE_ENV = "SER_ONNX_CACHE"
ONNX_DTYPES = ("fp32", "int8")
#: The ONNX opset of exported graphs (ONNX Runtime 1.18+ runs it).
OPSET = 17
#: Bumped whenever the export or quantisation recipe changes, so old cache entries are not reused.
EXPORT_FORMAT = 3
#: Largest difference allowed between the exported graph and torch on the check batch, relative to the
#: largest absolute value of the torch output.
EXPORT_TOLERANCE = 1e-4

#: Graph scopes whose matrix products stay fp32 in the int8 graph. The first convolution reads the raw
#: samples: with them quantised to 8 bits per tensor the embedding is lost (an error of 2.7 times the
#: distance between different clips, on the HuBERT-large architecture). The feature projection is one
#: small product (0.1% of the FLOPs) with a large share of the int8 error (4 points, quantised alone).
FP32_SCOPES = ("/model/feature_extractor/layers.0/", "/model/feature_projection/")

_INPUTS = ("input_values", "attention_mask")
_OUTPUT = "hidden"


def onnx_cache_dir() -> Path:
    """``$SER_ONNX_CACHE``, else ``default_cache_dir() / "onnx"``."""
    explicit = os.environ.get(ONNX_CACHE_ENV)
    return Path(explicit).expanduser() if explicit else default_cache_dir() / "onnx"


def _require_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackboneError(
            "the ONNX backends need onnxruntime and onnx: pip install 'ser-service[onnx]' "
            "(or onnxruntime onnx), or use backend 'torch'"
        ) from exc
    return onnxruntime


class TimeMajorConv(torch.nn.Module):
    """One layer-norm convolution layer as a matrix product over ``[B, T, C]``: ``[B, T, C_in] -> [B, T', C]``.

    For a convolution of kernel k and stride s, output frame t reads input frames ``t * s + j`` for
    j < k: the slice ``x[:, j : j - k + 1 : s]`` holds them for every t at once (the same count of
    frames for each j), so joining the k slices along channels and multiplying by ``kernel_matrix`` of
    the weight is the convolution. (The torch backend's ``ConvLayer.forward_time_major`` takes the frames
    as one strided view of overlapping rows instead, which the ONNX exporter cannot write.) The layer norm then acts on the
    last axis, with no transposes.
    """

    def __init__(self, layer: Any) -> None:
        super().__init__()
        conv: torch.nn.Conv1d = layer.conv
        self.kernel, self.stride = int(conv.kernel_size[0]), int(conv.stride[0])
        self.weight = torch.nn.Parameter(kernel_matrix(conv.weight), requires_grad=False)
        # HuBERT's convolutions have no bias: then the graph has no Add of zeros either.
        self.bias = (
            None if conv.bias is None else torch.nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
        )
        self.norm = layer.layer_norm
        self.activation = layer.activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel, self.stride
        taps = [x[:, j : (j - k + 1) or None : s] for j in range(k)]
        x = torch.matmul(torch.cat(taps, dim=2), self.weight)
        if self.bias is not None:
            x = x + self.bias
        return self.activation(self.norm(x))


class TimeMajorFeatureEncoder(torch.nn.Module):
    """A layer-norm convolutional feature encoder as matrix products over ``[B, T, C]`` (see the module doc).

    ``forward(input_values [B, S]) -> [B, C, T]``, what the Hugging Face feature encoder returns; layer
    i's nodes are named ``.../feature_extractor/layers.{i}/...`` in the exported graph.
    """

    def __init__(self, conv_layers: Sequence[Any]) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(TimeMajorConv(layer) for layer in conv_layers)

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        x = input_values[:, :, None]
        for layer in self.layers:
            x = layer(x)
        return x.transpose(1, 2)


def export_encoder(
    source: EncoderSource, layers: Sequence[int], kept_layers: int, target: Path, *, opset: int = OPSET
) -> None:
    """Export the fp32 encoder (``kept_layers`` layers, reading ``layers``) to ``target`` (an .onnx file).

    Inputs ``input_values`` float32 ``[batch, samples]`` and ``attention_mask`` int64 ``[batch, samples]``;
    output ``hidden`` float32 ``[batch, frames, hidden]``.

    Raises:
        BackboneError: the model cannot be loaded or exported, or the export disagrees with torch.
    """
    import torch
    from transformers import AutoModel

    try:
        # Eager attention: a plain MatMul/Softmax/MatMul graph, which ONNX Runtime fuses and quantises.
        model = AutoModel.from_pretrained(
            source.location, dtype=torch.float32, attn_implementation="eager", **source.load_kwargs
        )
    except Exception as exc:  # transformers raises OSError, ValueError, HFValidationError...
        raise BackboneError(source.load_failure(exc)) from exc
    model.encoder.layers = model.encoder.layers[:kept_layers]
    if getattr(model.config, "feat_extract_norm", None) == "layer":
        model.feature_extractor = TimeMajorFeatureEncoder(model.feature_extractor.conv_layers)
    model.eval()
    readout = HiddenStateReadout(model, layers).eval()

    # A padded batch, so that the masking path is what gets traced.
    rng = np.random.default_rng(0)
    lengths = (16000, 11000)
    example = torch.from_numpy(rng.standard_normal((len(lengths), max(lengths))).astype(np.float32))
    mask = (torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]).long()
    example = example * mask
    axes = {
        "input_values": {0: "batch", 1: "samples"},
        "attention_mask": {0: "batch", 1: "samples"},
        _OUTPUT: {0: "batch", 1: "frames"},
    }
    started = time.perf_counter()
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            # The tracer's warnings are about Python values it freezes (shapes checked against
            # themselves, is_causal); the check below is what tells whether the graph is right.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                readout,
                (example, mask),
                str(target),
                dynamo=False,
                input_names=list(_INPUTS),
                output_names=[_OUTPUT],
                dynamic_axes=axes,
                opset_version=opset,
                do_constant_folding=True,
            )
            expected = readout(example, mask).numpy()
    except Exception as exc:
        raise BackboneError(f"could not export {source.location!r} to ONNX: {exc}") from exc
    log.info("exported %s to ONNX in %.1f s", source.location, time.perf_counter() - started)
    got = _session(target, threads=1).run(
        [_OUTPUT], {"input_values": example.numpy(), "attention_mask": mask.numpy()}
    )[0]
    error = float(np.abs(got - expected).max() / max(float(np.abs(expected).max()), 1e-12))
    if got.shape != expected.shape or error > EXPORT_TOLERANCE:
        raise BackboneError(
            f"the ONNX export of {source.location!r} disagrees with torch (relative error {error:.2g}): "
            "this architecture is not supported by the ONNX backend; use backend 'torch'"
        )


def quantize_encoder(fp32_model: Path, target: Path) -> None:
    """Quantise ``fp32_model``'s weight MatMuls to int8 (dynamic activations) into ``target``."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    external = any(p.name != fp32_model.name for p in fp32_model.parent.iterdir() if p.suffix != ".json")
    graph = onnx.load(str(fp32_model), load_external_data=False).graph
    keep_fp32 = [n.name for n in graph.node if n.op_type == "MatMul" and n.name.startswith(FP32_SCOPES)]
    started = time.perf_counter()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser advises "pre-processing" through the root logger
    try:
        quantize_dynamic(
            fp32_model,
            target,
            op_types_to_quantize=["MatMul"],
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_exclude=keep_fp32,
            use_external_data_format=external,
            extra_options={"MatMulConstBOnly": True},
        )
    except Exception as exc:  # onnxruntime raises assorted errors from its graph code
        raise BackboneError(f"could not quantise {fp32_model} to int8: {exc}") from exc
    finally:
        root.setLevel(level)
    log.info("quantised %s to int8 in %.1f s", fp32_model, time.perf_counter() - started)


def _session(path: Path, *, threads: int) -> Any:
    ort = _require_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    # Otherwise the worker threads keep spinning on the cores after each run, taking them from request
    # decoding and the event loop (and, in the benchmark, from the variant timed next: torch bf16 ran
    # 10-20% slower right after an ONNX run). Runs themselves took about the same time either way.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise BackboneError(f"ONNX Runtime could not load {path}: {exc}") from exc


class OnnxEncoder(PooledSpeechEncoder):
    """A frozen Hugging Face speech encoder run by ONNX Runtime on the CPU, pooled per utterance.

    Same interface and pre/post-processing as ``HuggingFaceEncoder`` (normalisation, layer selection,
    batching, windows, pooling over valid frames).

    Args:
        spec: the backbone spec (``kind == "hubert"``).
        dtype: ``"fp32"`` (the same embeddings as torch fp32) or ``"int8"`` (faster, noisier).
        max_batch_size: at most this many utterances go through the encoder in one call.
        window_seconds: inputs longer than this are embedded in consecutive windows of this length.
        model_override: read the checkpoint from here instead of ``spec.model``.
        local_files_only: never contact the hub.
        threads: ONNX Runtime intra-op threads; None or 0 means ``available_cpus()``.
        cache_dir: the cache root; exports go to its ``onnx`` folder (default ``onnx_cache_dir()``).

    Raises:
        BackboneError: onnxruntime is missing, the model cannot be loaded or exported, or the layer does
            not exist.
    """

    def __init__(
        self,
        spec: BackboneSpec,
        *,
        dtype: str = "fp32",
        max_batch_size: int = 8,
        window_seconds: float = 30.0,
        model_override: str | None = None,
        local_files_only: bool = False,
        threads: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if dtype not in ONNX_DTYPES:
            raise BackboneError(f"unknown ONNX dtype {dtype!r}; accepted: {', '.join(ONNX_DTYPES)}")
        _require_onnxruntime()
        source = EncoderSource(spec, model_override=model_override, local_files_only=local_files_only)
        if getattr(source.config, "add_adapter", False):
            raise BackboneError(
                "encoders with adapter layers are not supported by the ONNX backend; use 'torch'"
            )
        super().__init__(spec, source, max_batch_size=max_batch_size, window_seconds=window_seconds)
        self.dtype = dtype
        self.fingerprint = {**self.fingerprint, "runtime": "onnxruntime"}
        self.threads = int(threads) if threads else available_cpus()
        self.cache_dir = Path(cache_dir) / "onnx" if cache_dir else onnx_cache_dir()
        self.model_path = self._cached_model()
        self.session = _session(self.model_path, threads=self.threads)

    def _entry(self, dtype: str) -> Path:
        from importlib.metadata import version

        key = {
            "source": self.source.identity(),
            "layers": self.layers,
            "kept_layers": self.kept_layers,
            "dtype": dtype,
            "opset": OPSET,
            "format": EXPORT_FORMAT,
            "versions": _export_versions(),
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
        self._build_entry(int8_entry, lambda folder: quantize_encoder(fp32_model, folder / "encoder.onnx"))
        return int8_entry / "encoder.onnx"

    def _build_entry(self, entry: Path, build: Any) -> None:
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
                    **_export_versions(),
                }
                (scratch / "meta.json").write_text(json.dumps(meta, indent=2))
        except OSError as exc:
            raise BackboneError(f"could not write the ONNX export to {entry.parent}: {exc}") from exc

    def _run(self, batch: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        if mask is None:
            mask = np.ones(batch.shape, dtype=np.int64)
        return self.session.run([_OUTPUT], {"input_values": batch, "attention_mask": mask})[0]


def _export_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("torch", "transformers", "onnx"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "absent"
    return versions
