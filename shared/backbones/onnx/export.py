"""Exporting a speech encoder to ONNX, and quantising the graph to int8.

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
embedding), the feature projection, and the attention products. The README's speed section has the
measured cost and gain of each choice.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.backbones.checkpoint import EncoderSource
from shared.backbones.onnx.session import open_session
from shared.backbones.torch.hf_model import HiddenStateReadout
from shared.backbones.torch.modules import kernel_matrix, time_major_conv
from shared.errors import BackboneError

log = logging.getLogger(__name__)

#: The ONNX opset of exported graphs (ONNX Runtime 1.18+ runs it).
OPSET = 17
#: Bumped whenever the export or quantisation recipe changes, so old cache entries are not reused.
EXPORT_FORMAT = 3
#: Largest difference allowed between the exported graph and torch on the check batch, relative to the
#: largest absolute value of the torch output.
EXPORT_TOLERANCE = 1e-4

#: Graph scopes whose matrix products stay fp32 in the int8 graph. The first convolution reads the raw
#: samples: with them quantised to 8 bits per tensor the embedding is lost. The feature projection is one
#: small product with a large share of the int8 error when quantised (the README has the figures).
FP32_SCOPES = ("/model/feature_extractor/layers.0/", "/model/feature_projection/")

INPUTS = ("input_values", "attention_mask")
OUTPUT = "hidden"


class TimeMajorConv(torch.nn.Module):
    """One layer-norm convolution layer as a matrix product over ``[B, T, C]``: ``[B, T_in, C_in] -> [B, T, C]``.

    The convolution is ``modules.time_major_conv`` (the torch backend's own), which the exporter writes
    as strided slices joined along channels times ``kernel_matrix`` of the weight; the layer norm then
    acts on the last axis, with no transposes.
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
        return self.activation(
            self.norm(time_major_conv(x, self.weight, self.kernel, self.stride, self.bias))
        )


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
        OUTPUT: {0: "batch", 1: "frames"},
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
                input_names=list(INPUTS),
                output_names=[OUTPUT],
                dynamic_axes=axes,
                opset_version=opset,
                do_constant_folding=True,
            )
            expected = readout(example, mask).numpy()
    except Exception as exc:
        raise BackboneError(f"could not export {source.location!r} to ONNX: {exc}") from exc
    log.info("exported %s to ONNX in %.1f s", source.location, time.perf_counter() - started)
    got = open_session(target, threads=1).run(
        [OUTPUT], {"input_values": example.numpy(), "attention_mask": mask.numpy()}
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


def export_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("torch", "transformers", "onnx"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "absent"
    return versions
