"""The ONNX Runtime backbone on a tiny real HuBERT graph: same embeddings as torch in fp32, int8 close,
exports cached and reused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support import make_tiny_hubert, relative_error, synthetic_clip

from shared.backbones import BackboneSpec, EncoderOptions, build_backbone
from shared.backbones.runtime import cpu_has_fast_bf16
from shared.errors import BackboneError

pytest.importorskip("onnxruntime", reason="the ONNX backend needs the onnx extra (onnxruntime, onnx)")
onnx = pytest.importorskip("onnx", reason="the ONNX backend needs the onnx extra (onnxruntime, onnx)")

from shared.backbones.onnx import encoder as onnx_encoder  # noqa: E402  (after the skip: it imports onnxruntime)
from shared.backbones.onnx import export as onnx_export  # noqa: E402
from shared.backbones.onnx.encoder import OnnxEncoder  # noqa: E402


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache root for the module: each export is made once and reused by the tests after it."""
    return tmp_path_factory.mktemp("ser-cache")


def op_counts(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def test_fp32_matches_torch_on_padded_batches_and_one_at_a_time(tiny_hubert_dir, waves, cache):
    spec = BackboneSpec(kind="hubert", model=str(tiny_hubert_dir))
    expected = build_backbone(spec, EncoderOptions(max_batch_size=4)).embed_batch(waves)
    backbone = build_backbone(spec, EncoderOptions(backend="onnx", max_batch_size=4, cache_dir=cache))
    assert isinstance(backbone, OnnxEncoder)
    assert (backbone.dtype, backbone.dim, backbone.supports_padding) == ("fp32", 16, True)
    batched = backbone.embed_batch(waves)
    single = np.stack([backbone.embed_batch([w])[0] for w in waves])
    assert batched.shape == (4, 16) and batched.dtype == np.float32
    np.testing.assert_allclose(batched, expected, atol=1e-4)
    np.testing.assert_allclose(single, expected, atol=1e-4)


@pytest.mark.parametrize(
    ("layer", "layer_end", "pooling", "layers_run"),
    [
        (0, None, "mean", 0),
        (1, None, "mean", 1),
        (-2, None, "mean", 2),
        (1, 2, "mean+std", 2),
        (None, None, "mean", 3),
    ],
)
def test_layer_selection_and_truncation_match_torch(
    tiny_hubert_dir, waves, cache, layer, layer_end, pooling, layers_run
):
    spec = BackboneSpec(
        kind="hubert", model=str(tiny_hubert_dir), layer=layer, layer_end=layer_end, pooling=pooling
    )
    reference = build_backbone(spec, EncoderOptions(max_batch_size=4))
    backbone = build_backbone(spec, EncoderOptions(backend="onnx", max_batch_size=4, cache_dir=cache))
    assert backbone.dim == reference.dim
    np.testing.assert_allclose(backbone.embed_batch(waves), reference.embed_batch(waves), atol=1e-4)
    # One attention softmax per transformer layer in the graph: the layers above the one read are gone
    # (reading layer 0, the input of the first layer, the exporter prunes that layer too).
    assert backbone.kept_layers == len(reference.model.encoder.layers) == max(layers_run, 1)
    assert op_counts(backbone.model_path).get("Softmax", 0) == layers_run


def test_long_inputs_are_embedded_in_windows_like_torch(tiny_hubert_dir, cache):
    wave = synthetic_clip("angry", 3.0, seed=3)
    spec = BackboneSpec(kind="hubert", model=str(tiny_hubert_dir))
    expected = build_backbone(spec, EncoderOptions(window_seconds=1.0)).embed_batch([wave])
    backbone = build_backbone(spec, EncoderOptions(backend="onnx", window_seconds=1.0, cache_dir=cache))
    np.testing.assert_allclose(backbone.embed_batch([wave]), expected, atol=1e-4)


def test_frame_level_states_match_torch(tiny_hubert_dir, cache):
    spec = BackboneSpec(kind="hubert", model=str(tiny_hubert_dir))
    wave = synthetic_clip("sad", 2.1, seed=9)
    expected = build_backbone(spec).encode_frames(wave)
    states = build_backbone(spec, EncoderOptions(backend="onnx", cache_dir=cache)).encode_frames(wave)
    np.testing.assert_array_equal(states.starts, expected.starts)
    np.testing.assert_allclose(states.frames, expected.frames, atol=1e-4)


def test_group_norm_models_run_one_at_a_time_and_match_torch(tmp_path, waves, cache):
    folder = make_tiny_hubert(tmp_path / "tiny-base", layer_norm=False)
    spec = BackboneSpec(kind="hubert", model=str(folder))
    backbone = build_backbone(spec, EncoderOptions(backend="onnx", max_batch_size=4, cache_dir=cache))
    assert not backbone.supports_padding
    np.testing.assert_allclose(
        backbone.embed_batch(waves),
        build_backbone(spec, EncoderOptions(max_batch_size=4)).embed_batch(waves),
        atol=1e-4,
    )


CLIPS = [
    synthetic_clip(label, 1.5, seed=20 + i)
    for i, label in enumerate(["happy", "sad", "angry", "fear", "disgust", "neutral"])
]


def test_int8_quantises_only_the_transformers_weight_matmuls_and_stays_close(tiny_hubert_dir, cache):
    spec = BackboneSpec(kind="hubert", model=str(tiny_hubert_dir))
    fp32_backbone = build_backbone(spec, EncoderOptions(backend="onnx", cache_dir=cache))
    fp32 = fp32_backbone.embed_batch(CLIPS)
    backbone = build_backbone(spec, EncoderOptions(backend="onnx-int8", cache_dir=cache))
    assert backbone.dtype == "int8"
    int8 = backbone.embed_batch(CLIPS)
    assert int8.shape == fp32.shape and np.isfinite(int8).all()
    assert not np.array_equal(int8, fp32)  # it is really quantised...
    assert relative_error(fp32, int8) < 0.1  # ...and still close
    # The front end is torch's: fp32 beside the fp32 graph, bf16 beside int8 where the CPU has bf16 units.
    assert fp32_backbone.front.dtype == "fp32"
    assert backbone.front.dtype == ("bf16" if cpu_has_fast_bf16() else "fp32")
    assert backbone.fingerprint["front_end"] == f"torch-{backbone.front.dtype}"
    assert len(backbone.front.model.encoder.layers) == 0  # it builds no transformer layer
    # int8: 3 layers x 6 linear layers but the first layer's feed-forward pair; fp32: those two and the
    # layers' 2 attention products each. No convolution is in the graph: it starts at hidden state 0.
    graph = onnx.load(str(backbone.model_path), load_external_data=False).graph
    integer = [n.name for n in graph.node if n.op_type == "MatMulInteger"]
    assert len(integer) == 3 * 6 - 2 and all(name.startswith("/layers.") for name in integer)
    fp32_products = {n.name.rsplit("/", 1)[0] for n in graph.node if n.op_type == "MatMul"}
    assert {name for name in fp32_products if not name.endswith("/attention")} == {
        "/layers.0/feed_forward/intermediate_dense",
        "/layers.0/feed_forward/output_dense",
    }
    assert len([n for n in graph.node if n.op_type == "MatMul"]) == 3 * 2 + 2
    ops = op_counts(backbone.model_path)
    assert "Conv" not in ops and "ConvInteger" not in ops
    # Every correction went into the bias after its product: no Add was added.
    assert ops["Add"] == op_counts(fp32_backbone.model_path)["Add"]


def test_bias_correction_removes_most_of_the_int8_error(tiny_hubert_dir, tmp_path, monkeypatch):
    """The corrected graph against the same quantisation without the correction, both after an fp32 front
    end (a bf16 one adds its own rounding, which this correction does not address)."""
    monkeypatch.setattr(onnx_encoder, "cpu_has_fast_bf16", lambda: False)
    spec = BackboneSpec(kind="hubert", model=str(tiny_hubert_dir))
    fp32 = build_backbone(spec, EncoderOptions(backend="onnx", cache_dir=tmp_path / "a")).embed_batch(CLIPS)
    corrected = build_backbone(spec, EncoderOptions(backend="onnx-int8", cache_dir=tmp_path / "a"))
    with monkeypatch.context() as patch:
        patch.setattr(onnx_export, "correct_int8_biases", lambda *args: 0)
        plain = build_backbone(spec, EncoderOptions(backend="onnx-int8", cache_dir=tmp_path / "b"))
    error_corrected = relative_error(fp32, corrected.embed_batch(CLIPS))
    error_plain = relative_error(fp32, plain.embed_batch(CLIPS))
    assert error_corrected < 0.85 * error_plain, (error_corrected, error_plain)


def test_a_product_without_a_bias_gets_its_correction_as_a_new_add(tmp_path):
    """Two weight products, the first followed by a bias and the second not: the first's bias takes its
    correction, the second gets an ``Add``; together they shift the int8 output's mean back to the fp32
    one."""
    from onnx import TensorProto, helper, numpy_helper

    from shared.backbones.onnx.session import open_session

    rng = np.random.default_rng(5)
    w1, w2 = (rng.standard_normal((24, 24)).astype(np.float32) / 5 for _ in range(2))
    bias = rng.standard_normal(24).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["hidden_states", "w1"], ["a"], name="/layers.0/first/MatMul"),
            helper.make_node("Add", ["a", "b1"], ["a_biased"], name="/layers.0/first/Add"),
            helper.make_node("MatMul", ["hidden_states", "w2"], ["c"], name="/layers.0/second/MatMul"),
            helper.make_node("Add", ["a_biased", "c"], ["hidden"], name="/layers.0/Add"),
        ],
        "two-products",
        [helper.make_tensor_value_info("hidden_states", TensorProto.FLOAT, [1, None, 24])],
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, [1, None, 24])],
        [
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(bias, "b1"),
        ],
    )
    fp32_path, int8_path, plain_path = (tmp_path / f"{n}.onnx" for n in ("fp32", "int8", "plain"))
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(fp32_path))
    # inputs with a large common offset: the shift rounding leaves is then mostly the same for all
    inputs = [(rng.standard_normal((1, 2000, 24)) + 3.0).astype(np.float32) for _ in range(4)]
    onnx_export.quantize_encoder(fp32_path, int8_path, inputs)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(onnx_export, "correct_int8_biases", lambda *args: 0)
        onnx_export.quantize_encoder(fp32_path, plain_path, inputs)
    added = [n.name for n in onnx.load(str(int8_path)).graph.node if n.name.endswith("_bias_add")]
    assert added == ["c_bias_add"]

    def mean_error(path: Path) -> float:
        session, reference = open_session(path, threads=1), open_session(fp32_path, threads=1)
        held_out = (rng.standard_normal((1, 2000, 24)) + 3.0).astype(np.float32)
        got = session.run(["hidden"], {"hidden_states": held_out})[0]
        expected = reference.run(["hidden"], {"hidden_states": held_out})[0]
        return float(np.abs((got - expected).mean(axis=1)).mean())

    assert mean_error(int8_path) < 0.5 * mean_error(plain_path)


def test_dynamic_quantized_is_what_onnx_runtime_computes(tmp_path):
    from onnx import TensorProto, helper

    from shared.backbones.onnx.session import open_session

    graph = helper.make_graph(
        [
            helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "scale", "zero"]),
            helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"]),
        ],
        "quantize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "q.onnx"))
    # channels of very different ranges, as a layer's inputs have
    scales = np.array([3.0] * 32 + [0.1] * 32, dtype=np.float32)
    x = np.random.default_rng(3).standard_normal((50, 64)).astype(np.float32) * scales
    expected = open_session(tmp_path / "q.onnx", threads=1).run(["y"], {"x": x})[0]
    np.testing.assert_allclose(onnx_export.dynamic_quantized(x.astype(np.float64)), expected, atol=1e-6)


def test_exports_are_cached_and_reused(tiny_hubert_dir, waves, tmp_path, monkeypatch):
    spec = BackboneSpec(kind="hubert", model=str(tiny_hubert_dir))
    first = build_backbone(spec, EncoderOptions(backend="onnx", cache_dir=tmp_path))
    path = first.model_path
    assert path.is_file() and path.parent.parent == tmp_path / "onnx"
    meta = json.loads((path.parent / "meta.json").read_text())
    assert meta["kept_layers"] == 3 and meta["model"] == str(tiny_hubert_dir)
    written = path.stat().st_mtime_ns

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the export is cached")

    monkeypatch.setattr(onnx_encoder, "export_encoder", no_export)
    second = build_backbone(spec, EncoderOptions(backend="onnx", cache_dir=tmp_path))
    assert second.model_path == path and path.stat().st_mtime_ns == written
    np.testing.assert_array_equal(second.embed_batch(waves), first.embed_batch(waves))
    # int8 is quantised from the cached fp32 export, without exporting.
    int8 = build_backbone(spec, EncoderOptions(backend="onnx-int8", cache_dir=tmp_path))
    assert int8.model_path != path and int8.model_path.is_file()
    # Another layer is another graph: it needs its own export.
    with pytest.raises(AssertionError, match="exported again"):
        build_backbone(
            BackboneSpec(kind="hubert", model=str(tiny_hubert_dir), layer=1),
            EncoderOptions(backend="onnx", cache_dir=tmp_path),
        )
    assert len(list((tmp_path / "onnx").iterdir())) == 2  # no half-built entry is left behind


def test_changed_weights_in_the_same_folder_are_exported_again(tmp_path, waves):
    folder = make_tiny_hubert(tmp_path / "model", seed=0)
    spec = BackboneSpec(kind="hubert", model=str(folder))
    before = build_backbone(spec, EncoderOptions(backend="onnx", cache_dir=tmp_path / "cache"))
    make_tiny_hubert(folder, seed=1)  # new weights, same path
    after = build_backbone(spec, EncoderOptions(backend="onnx", cache_dir=tmp_path / "cache"))
    assert after.model_path != before.model_path
    np.testing.assert_allclose(after.embed_batch(waves), build_backbone(spec).embed_batch(waves), atol=1e-4)


def test_cache_location_follows_the_options(tiny_hubert_dir, tmp_path):
    options = EncoderOptions(backend="onnx", onnx_cache_dir=tmp_path / "exports")
    backbone = build_backbone(BackboneSpec(kind="hubert", model=str(tiny_hubert_dir)), options)
    assert backbone.model_path.is_relative_to(tmp_path / "exports")


def test_onnx_errors_are_clear(tiny_hubert_dir, cache):
    spec = BackboneSpec(kind="hubert", model=str(tiny_hubert_dir))
    with pytest.raises(BackboneError, match="unknown backend 'tensorrt'"):
        build_backbone(spec, EncoderOptions(backend="tensorrt"))
    with pytest.raises(BackboneError, match="dtype 'bf16' applies to the torch backend only"):
        build_backbone(spec, EncoderOptions(backend="onnx", dtype="bf16", cache_dir=cache))
    with pytest.raises(BackboneError, match="runs on the CPU"):
        build_backbone(spec, EncoderOptions(backend="onnx-int8", device="cuda", cache_dir=cache))
    backbone = build_backbone(spec, EncoderOptions(backend="onnx", cache_dir=cache))
    with pytest.raises(BackboneError, match="shorter than one encoder frame"):
        backbone.embed_batch([np.zeros(100, np.float32)])
    # eGeMAPS has no encoder to export: the backend does not apply.
    assert build_backbone(BackboneSpec(kind="egemaps"), EncoderOptions(backend="onnx")).dim == 88


# -- the torch backend's speed machinery ----------------------------------------------------------
