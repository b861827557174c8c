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
transformer's linear layers. What stays fp32 (``FP32_SCOPES``): the convolutional feature encoder, whose
errors every later layer carries on (quantised, its six time-major products held most of the int8
graph's error), the feature projection, and the attention products.

Rounding a weight ``W`` and its input ``x`` to int8 shifts the product by ``x @ W - q(x) @ dequant(W_int8)``;
over speech the mean of that shift, ``mean(x) @ W - mean(q(x)) @ dequant(W_int8)``, is the same for every
clip, and summed over the layers it is most of the int8 graph's error. ``correct_int8_biases`` measures
both means for every quantised product on the fp32 graph, over generated voiced signals, and adds the
shift back into the bias that follows the product (or a new ``Add`` where there is none). The README's
speed section has the measured cost and gain of each choice.
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
from shared.backbones.runtime import available_cpus
from shared.backbones.torch.hf_model import HiddenStateReadout
from shared.backbones.torch.modules import kernel_matrix, time_major_conv
from shared.errors import BackboneError

log = logging.getLogger(__name__)

#: The ONNX opset of exported graphs (ONNX Runtime 1.18+ runs it).
OPSET = 17
#: Bumped whenever the export or quantisation recipe changes, so old cache entries are not reused.
EXPORT_FORMAT = 4
#: Largest difference allowed between the exported graph and torch on the check batch, relative to the
#: largest absolute value of the torch output.
EXPORT_TOLERANCE = 1e-4

#: Graph scopes whose matrix products stay fp32 in the int8 graph: the convolutional feature encoder (the
#: first convolution reads the raw samples, and quantised, the others held most of the error after bias
#: correction) and the feature projection, one small product with a large share of the error.
FP32_SCOPES = ("/model/feature_extractor/", "/model/feature_projection/")

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


def quantize_encoder(fp32_model: Path, target: Path, calibration: Sequence[np.ndarray]) -> None:
    """Quantise ``fp32_model``'s weight MatMuls to int8 (dynamic activations) into ``target``, with their
    biases corrected on ``calibration`` (normalised voiced signals)."""
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
    corrected = correct_int8_biases(fp32_model, target, calibration)
    log.info(
        "quantised %s to int8 in %.1f s (%d biases corrected)",
        fp32_model,
        time.perf_counter() - started,
        corrected,
    )


def quantised_products(graph: Any) -> list[Any]:
    """The MatMul nodes of an fp32 graph that ``quantize_encoder`` quantises (a weight as second input)."""
    weights = {i.name for i in graph.initializer}
    return [
        n
        for n in graph.node
        if n.op_type == "MatMul" and n.input[1] in weights and not n.name.startswith(FP32_SCOPES)
    ]


def dynamic_quantized(x: np.ndarray) -> np.ndarray:
    """``x`` as ONNX Runtime's ``DynamicQuantizeLinear`` sees it: uint8 with one scale and zero point for
    the whole tensor (its range widened to take in 0), dequantised again."""
    low, high = min(0.0, float(x.min())), max(0.0, float(x.max()))
    scale = (high - low) / 255 or 1.0
    zero = float(np.clip(np.round(-low / scale), 0, 255))
    return (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale


def _tensor_means(
    model_path: Path,
    tensors: Sequence[str],
    waves: Sequence[np.ndarray],
    scratch: Path,
    quantized: Sequence[str] = (),
) -> dict[str, np.ndarray]:
    """The mean over ``waves`` (and their frames) of each named tensor of a graph, on its last axis; for
    the names in ``quantized`` also ``name + "@q"``, the mean as the int8 graph quantises the tensor
    (``dynamic_quantized``, one clip at a time)."""
    import onnx

    model = onnx.load(str(model_path))
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in tensors)
    probe = scratch / "calibration.onnx"
    external = model.ByteSize() > 1_800_000_000  # protobuf's 2 GB limit
    onnx.save(model, str(probe), save_as_external_data=external, location="calibration.data")
    del model
    wanted = set(quantized)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = dict.fromkeys(tensors, 0)
    try:
        session = open_session(probe, threads=available_cpus())
        for wave in waves:
            feed = {"input_values": wave[None], "attention_mask": np.ones((1, wave.shape[0]), dtype=np.int64)}
            for name, value in zip(tensors, session.run(list(tensors), feed), strict=True):
                rows = value.reshape(-1, value.shape[-1]).astype(np.float64)
                sums[name] = sums.get(name, 0.0) + rows.sum(axis=0)
                if name in wanted:
                    sums[name + "@q"] = sums.get(name + "@q", 0.0) + dynamic_quantized(rows).sum(axis=0)
                counts[name] += rows.shape[0]
        del session
    finally:
        for path in (probe, scratch / "calibration.data"):
            path.unlink(missing_ok=True)
    return {key: total / counts[key.removesuffix("@q")] for key, total in sums.items()}


def correct_int8_biases(fp32_model: Path, int8_model: Path, waves: Sequence[np.ndarray]) -> int:
    """Add each quantised product's mean output shift back into ``int8_model`` (in place; see the module's
    docstring), into the bias that follows the product or as a new ``Add``; returns the products
    corrected. ``waves``: normalised calibration signals."""
    import onnx
    from onnx import numpy_helper

    fp32 = onnx.load(str(fp32_model))
    weights = {i.name: i for i in fp32.graph.initializer}
    model = onnx.load(str(int8_model))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    products = [
        (n.input[0], n.input[1], n.output[0])
        for n in quantised_products(fp32.graph)
        if n.input[1] + "_quantized" in inits  # the quantiser may have left some fp32
    ]
    xs = sorted({x for x, _, _ in products})
    means = _tensor_means(fp32_model, xs, waves, int8_model.parent, quantized=xs)
    del fp32
    shifts = {}
    for x, w, y in products:
        q, scale, zero = (
            numpy_helper.to_array(inits[w + suffix]).astype(np.float64)
            for suffix in ("_quantized", "_scale", "_zero_point")
        )
        weight = numpy_helper.to_array(weights[w]).astype(np.float64)
        shifts[y] = (means[x] @ weight - means[x + "@q"] @ ((q - zero) * scale)).astype(np.float32)
    _add_to_biases(graph, shifts)
    onnx.save(model, str(int8_model))
    return len(products)


def _add_to_biases(graph: Any, shifts: dict[str, np.ndarray]) -> None:
    """Add ``shifts[y]`` to tensor ``y`` of ``graph``: where the one node reading ``y`` adds a bias (an
    initializer, or an ``Identity`` of one, which the exporter writes for equal biases), that ``Add`` gets
    a corrected copy of the bias; else a new ``Add`` follows ``y``'s node."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def bias_of(node: Any, y: str) -> str | None:
        if node.op_type != "Add":
            return None
        (other,) = [i for i in node.input if i != y] or [None]
        if other in inits or (other in producers and producers[other].op_type == "Identity"):
            return other
        return None

    added: dict[str, Any] = {}
    replaced: set[str] = set()
    for y, shift in shifts.items():
        users = consumers.get(y, [])
        bias = bias_of(users[0], y) if len(users) == 1 else None
        if bias is not None:
            source = bias if bias in inits else producers[bias].input[0]
            if source in inits and list(inits[source].dims) == list(shift.shape):
                value = numpy_helper.to_array(inits[source]) + shift
                name = f"{y}_bias"
                graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
                users[0].input[:] = [name if i == bias else i for i in users[0].input]
                replaced.add(source)
                continue
        name = f"{y}_bias_corrected"
        graph.initializer.append(numpy_helper.from_array(shift, f"{y}_bias_correction"))
        for node in users:
            node.input[:] = [name if i == y else i for i in node.input]
        added[y] = helper.make_node("Add", [y, f"{y}_bias_correction"], [name], name=f"{y}_bias_add")
    nodes = []
    for node in graph.node:  # each new Add right after its product: the graph stays in topological order
        nodes.append(node)
        nodes.extend(added[out] for out in node.output if out in added)
    graph.ClearField("node")
    graph.node.extend(nodes)
    # The biases that only their corrected copies replaced: no node reads them any more.
    read = {i for node in graph.node for i in node.input}
    for init in [i for i in graph.initializer if i.name in replaced and i.name not in read]:
        graph.initializer.remove(init)


def export_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("torch", "transformers", "onnx"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "absent"
    return versions
