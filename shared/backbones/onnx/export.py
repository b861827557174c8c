"""Exporting a speech encoder's transformer to ONNX, and quantising the graph to int8.

What is in the graph: the transformer layers, from hidden state 0 (the input of the first layer) to the
hidden state the spec reads. The convolutional front end, the feature projection and the positional
convolution (hidden state 0) stay in torch, run by ``OnnxEncoder``'s front end one utterance at a time in
pieces, so that their activations, the largest of a forward pass, stay bounded as in the torch backend,
and in bf16 where the CPU has bf16 units: the front end holds an eighth of the FLOPs but took a third of
an int8 graph's time when ONNX Runtime ran it in fp32, and quantised it held most of the int8 error.

How the graph is made: the Hugging Face model, cut after the last layer the spec reads, is wrapped in
``TransformerReadout`` (hidden state 0 and a frame mask in, the chosen hidden state out, or the mean of a
range) and exported with ``torch.onnx.export`` (the TorchScript exporter: the dynamo exporter needs
``onnxscript``, which the extra does not bring), with dynamic batch and length. The export is checked
against the whole torch model on a padded batch of waveforms before it is kept.

For int8, ``quantize_dynamic`` then quantises the MatMul nodes whose second input is a weight (the
transformer's linear layers) to int8 weights with one scale per output channel, activations quantised on
the fly (one scale per tensor); the attention products (two activations) and the first layer's
feed-forward block (``FP32_SCOPES``) stay fp32.

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

from shared.backbones.base import LAST_HIDDEN_STATE
from shared.backbones.checkpoint import EncoderSource
from shared.backbones.onnx.session import open_session
from shared.backbones.runtime import available_cpus
from shared.backbones.torch.hf_model import HiddenStateReadout
from shared.errors import BackboneError

log = logging.getLogger(__name__)

#: The ONNX opset of exported graphs (ONNX Runtime 1.18+ runs it).
OPSET = 17
#: Bumped whenever the export or quantisation recipe changes, so old cache entries are not reused.
EXPORT_FORMAT = 5
#: Largest difference allowed between the exported graph and torch on the check batch, relative to the
#: largest absolute value of the torch output.
EXPORT_TOLERANCE = 1e-4

#: Graph scopes whose matrix products stay fp32 in the int8 graph: the first layer's feed-forward block,
#: whose rounding every later layer carries on (the README's speed section has the measured share).
FP32_SCOPES = ("/layers.0/feed_forward/",)

INPUTS = ("hidden_states", "frame_mask")
OUTPUT = "hidden"


class TransformerReadout(torch.nn.Module):
    """The transformer layers of a (truncated) Hugging Face encoder, from hidden state 0 to the chosen one.

    ``forward(hidden_states [B, T, H] float32, frame_mask [B, T] int64) -> [B, T, H]``: hidden state 0
    (the convolutional front end, the feature projection and the positional convolution, as the torch
    backend computes it) in, the hidden state ``layers`` names (or the mean of several) out, attention
    limited to the frames the mask marks valid. What ``HiddenStateReadout`` computes after hidden state 0.
    """

    def __init__(self, model: Any, layers: Sequence[int]) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(model.encoder.layers)
        self.final_norm = model.encoder.layer_norm if model.config.do_stable_layer_norm else None
        self.read = tuple(layers)

    def forward(self, hidden_states: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        # An additive mask over keys, the form transformers' eager attention adds to the scores.
        blocked = (1 - frame_mask[:, None, None, :]).to(hidden_states.dtype)
        additive = blocked * torch.finfo(hidden_states.dtype).min
        x = hidden_states
        kept = {0: x} if 0 in self.read else {}
        for i, layer in enumerate(self.layers, start=1):
            out = layer(x, attention_mask=additive)
            x = out[0] if isinstance(out, tuple) else out  # a tuple before transformers 5
            if i in self.read:
                kept[i] = x
        if LAST_HIDDEN_STATE in self.read:
            kept[LAST_HIDDEN_STATE] = self.final_norm(x) if self.final_norm is not None else x
        states = [kept[i] for i in self.read]
        return states[0] if len(states) == 1 else torch.stack(states).mean(dim=0)


def frame_mask(frame_counts: Sequence[int], frames: int) -> np.ndarray:
    """int64 ``[B, frames]``: 1 for each item's first ``frame_counts[i]`` frames, 0 for its padding."""
    return (np.arange(frames)[None, :] < np.asarray(frame_counts)[:, None]).astype(np.int64)


def run_graph(
    session: Any, outputs: Sequence[str], hidden0: np.ndarray, frames: np.ndarray
) -> list[np.ndarray]:
    """Run an exported graph on hidden state 0 and its frame mask (a graph that reads hidden state 0 has no
    attention, and the exporter drops its unread frame mask)."""
    names = {i.name for i in session.get_inputs()}
    feed = {INPUTS[0]: hidden0, INPUTS[1]: frames}
    return session.run(list(outputs), {k: v for k, v in feed.items() if k in names})


def export_encoder(
    source: EncoderSource, layers: Sequence[int], kept_layers: int, target: Path, *, opset: int = OPSET
) -> None:
    """Export the fp32 transformer (``kept_layers`` layers, reading ``layers``) to ``target`` (an .onnx file).

    Inputs ``hidden_states`` float32 ``[batch, frames, hidden]`` (hidden state 0) and ``frame_mask`` int64
    ``[batch, frames]``; output ``hidden`` float32 ``[batch, frames, hidden]``. Checked against the whole
    torch model on a padded batch of waveforms before it is kept.

    Raises:
        BackboneError: the model cannot be loaded or exported, or the export disagrees with torch.
    """
    from transformers import AutoModel

    try:
        # Eager attention: a plain MatMul/Softmax/MatMul graph, which ONNX Runtime fuses and quantises.
        model = AutoModel.from_pretrained(
            source.location, dtype=torch.float32, attn_implementation="eager", **source.load_kwargs
        )
    except Exception as exc:  # transformers raises OSError, ValueError, HFValidationError...
        raise BackboneError(source.load_failure(exc)) from exc
    model.encoder.layers = model.encoder.layers[:kept_layers]
    model.eval()
    transformer = TransformerReadout(model, layers).eval()

    # A padded batch, so that the masking path is what gets traced.
    rng = np.random.default_rng(0)
    lengths = (16000, 11000)
    waves = torch.from_numpy(rng.standard_normal((len(lengths), max(lengths))).astype(np.float32))
    mask = (torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]).long()
    waves = waves * mask
    axes = {
        INPUTS[0]: {0: "batch", 1: "frames"},
        INPUTS[1]: {0: "batch", 1: "frames"},
        OUTPUT: {0: "batch", 1: "frames"},
    }
    started = time.perf_counter()
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            # The tracer's warnings are about Python values it freezes (shapes checked against
            # themselves, is_causal); the check below is what tells whether the graph is right.
            warnings.simplefilter("ignore")
            expected = HiddenStateReadout(model, layers)(waves, mask).numpy()
            hidden0 = HiddenStateReadout(model, [0])(waves, mask)
            counts = model._get_feat_extract_output_lengths(mask.sum(dim=-1)).tolist()
            frames = torch.from_numpy(frame_mask(counts, hidden0.shape[1]))
            torch.onnx.export(
                transformer,
                (hidden0, frames),
                str(target),
                dynamo=False,
                input_names=list(INPUTS),
                output_names=[OUTPUT],
                dynamic_axes=axes,
                opset_version=opset,
                do_constant_folding=True,
            )
    except Exception as exc:
        raise BackboneError(f"could not export {source.location!r} to ONNX: {exc}") from exc
    log.info("exported %s to ONNX in %.1f s", source.location, time.perf_counter() - started)
    got = run_graph(open_session(target, threads=1), [OUTPUT], hidden0.numpy(), frames.numpy())[0]
    error = float(np.abs(got - expected).max() / max(float(np.abs(expected).max()), 1e-12))
    if got.shape != expected.shape or error > EXPORT_TOLERANCE:
        raise BackboneError(
            f"the ONNX export of {source.location!r} disagrees with torch (relative error {error:.2g}): "
            "this architecture is not supported by the ONNX backend; use backend 'torch'"
        )


def quantize_encoder(fp32_model: Path, target: Path, calibration: Sequence[np.ndarray]) -> None:
    """Quantise ``fp32_model``'s weight MatMuls to int8 (dynamic activations) into ``target``, with their
    biases corrected on ``calibration`` (the graph's input, hidden state 0 ``[1, frames, hidden]``, of
    generated voiced signals)."""
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
    inputs: Sequence[np.ndarray],
    scratch: Path,
    quantized: Sequence[str] = (),
) -> dict[str, np.ndarray]:
    """The mean over ``inputs`` (hidden states 0, and their frames) of each named tensor of a graph, on
    its last axis; for the names in ``quantized`` also ``name + "@q"``, the mean as the int8 graph
    quantises the tensor (``dynamic_quantized``, one clip at a time)."""
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
        for hidden0 in inputs:
            mask = np.ones(hidden0.shape[:2], dtype=np.int64)
            for name, value in zip(tensors, run_graph(session, tensors, hidden0, mask), strict=True):
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


def correct_int8_biases(fp32_model: Path, int8_model: Path, inputs: Sequence[np.ndarray]) -> int:
    """Add each quantised product's mean output shift back into ``int8_model`` (in place; see the module's
    docstring), into the bias that follows the product or as a new ``Add``; returns the products
    corrected. ``inputs``: the graph's input (hidden state 0) of calibration signals."""
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
    means = _tensor_means(fp32_model, xs, inputs, int8_model.parent, quantized=xs)
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
