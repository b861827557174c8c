"""The Hugging Face encoder and eGeMAPS backbones, on a tiny real HuBERT graph and generated audio."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support import make_tiny_hubert, synthetic_clip
from transformers import AutoModel

from shared.backbones import BackboneSpec, EncoderOptions, FrameEncoder, build_backbone, pool_frames
from shared.backbones.base import EmbeddingStats
from shared.errors import BackboneError


@pytest.fixture(scope="module")
def group_norm_dir(tmp_path_factory: pytest.TempPathFactory):
    return make_tiny_hubert(tmp_path_factory.mktemp("tiny-base"), layer_norm=False)


def reference_hidden_states(folder, wave: np.ndarray, normalize: bool) -> tuple:
    model = AutoModel.from_pretrained(folder).eval()
    x = (wave - wave.mean()) / np.sqrt(wave.var() + 1e-7) if normalize else wave
    with torch.inference_mode():
        out = model(torch.from_numpy(x.astype(np.float32))[None], output_hidden_states=True)
    return out.last_hidden_state[0].numpy(), [h[0].numpy() for h in out.hidden_states]


def test_padded_batch_equals_one_at_a_time(tiny_hubert_dir, waves):
    backbone = build_backbone(
        BackboneSpec(kind="hubert", model=str(tiny_hubert_dir)), EncoderOptions(max_batch_size=4)
    )
    assert backbone.supports_padding
    batched = backbone.embed_batch(waves)
    single = np.stack([backbone.embed_batch([w])[0] for w in waves])
    assert batched.shape == (4, 16) and batched.dtype == np.float32
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_group_norm_models_run_one_at_a_time_and_agree(group_norm_dir, waves):
    backbone = build_backbone(
        BackboneSpec(kind="hubert", model=str(group_norm_dir)), EncoderOptions(max_batch_size=4)
    )
    assert not backbone.supports_padding
    batched = backbone.embed_batch(waves)
    single = np.stack([backbone.embed_batch([w])[0] for w in waves])
    np.testing.assert_array_equal(batched, single)


@pytest.mark.parametrize("layer", [None, 0, 1, 2, 3, -1, -2])
def test_layers_match_transformers_hidden_states(tiny_hubert_dir, waves, layer):
    backbone = build_backbone(BackboneSpec(kind="hubert", model=str(tiny_hubert_dir), layer=layer))
    last, hidden = reference_hidden_states(tiny_hubert_dir, waves[1], backbone.do_normalize)
    expected = last if layer is None else hidden[layer]
    np.testing.assert_allclose(backbone.embed_batch([waves[1]])[0], expected.mean(axis=0), atol=1e-5)


def test_layers_above_the_chosen_one_are_not_kept(tiny_hubert_dir):
    backbone = build_backbone(BackboneSpec(kind="hubert", model=str(tiny_hubert_dir), layer=1))
    assert backbone.n_layers == 3
    assert len(backbone.model.encoder.layers) == 1
    full = build_backbone(BackboneSpec(kind="hubert", model=str(tiny_hubert_dir)))
    assert len(full.model.encoder.layers) == 3


def test_layer_range_and_mean_std_pooling(tiny_hubert_dir, waves):
    _, hidden = reference_hidden_states(tiny_hubert_dir, waves[0], normalize=True)
    spec = BackboneSpec(kind="hubert", model=str(tiny_hubert_dir), layer=1, layer_end=2, pooling="mean+std")
    backbone = build_backbone(spec)
    assert backbone.dim == 32
    frames = (hidden[1] + hidden[2]) / 2
    expected = np.concatenate([frames.mean(axis=0), frames.std(axis=0)])
    np.testing.assert_allclose(backbone.embed_batch([waves[0]])[0], expected, atol=1e-5)


def test_long_inputs_are_embedded_in_windows(tiny_hubert_dir):
    wave = synthetic_clip("angry", 3.0, seed=3)
    backbone = build_backbone(
        BackboneSpec(kind="hubert", model=str(tiny_hubert_dir)), EncoderOptions(window_seconds=1.0)
    )
    normalized = backbone._normalize(wave)
    stats = EmbeddingStats()
    for start in range(0, len(wave), 16000):
        stats.add(backbone._forward([normalized[start : start + 16000]])[0])
    np.testing.assert_allclose(backbone.embed_batch([wave])[0], stats.pool("mean"), atol=1e-6)


@pytest.mark.parametrize("pooling", ["mean", "mean+std"])
@pytest.mark.parametrize("seconds", [1.7, 3.2])  # one pass, and three windows of 1 s (the last 0.2 s)
def test_pooling_all_frames_gives_what_embed_batch_gives(tiny_hubert_dir, pooling, seconds):
    spec = BackboneSpec(kind="hubert", model=str(tiny_hubert_dir), pooling=pooling)
    backbone = build_backbone(spec, EncoderOptions(window_seconds=1.0))
    assert isinstance(backbone, FrameEncoder)
    wave = synthetic_clip("fear", seconds, seed=5)
    states = backbone.encode_frames(wave)
    assert states.frames.dtype == np.float32 and states.frames.shape[1] == 16
    assert len(states) == len(states.starts) and np.all(np.diff(states.starts) > 0)
    assert (states.hop, states.receptive, states.frame_rate) == (320, 400, 50.0)
    np.testing.assert_allclose(backbone.pool(states), backbone.embed_batch([wave])[0], atol=1e-6)


def test_a_frame_range_pools_those_frames_and_maps_to_seconds(tiny_hubert_dir, waves):
    backbone = build_backbone(BackboneSpec(kind="hubert", model=str(tiny_hubert_dir)))
    states = backbone.encode_frames(waves[3])  # 2.3 s
    first, last = states.frame_range(0.5, 1.5)
    assert (first, last) == (25, 75)  # 50 frames a second, each starting at t * 320 samples
    assert states.starts[first] == 8000 and states.starts[last - 1] < 24000 <= states.starts[last]
    np.testing.assert_allclose(
        backbone.pool(states, first, last), states.frames[first:last].mean(axis=0), atol=1e-6
    )
    np.testing.assert_array_equal(
        backbone.pool(states, first, last), pool_frames(states.frames[first:last], "mean")
    )
    with pytest.raises(BackboneError, match="no frames to pool"):
        backbone.pool(states, 10, 10)


def test_egemaps_has_no_frames():
    assert not isinstance(build_backbone(BackboneSpec(kind="egemaps")), FrameEncoder)


def test_encoder_options_are_checked_and_shown_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    options = EncoderOptions(threads=0)
    assert options.threads is None and options.model_cache == tmp_path / "xdg" / "ser"
    assert options.onnx_cache == tmp_path / "xdg" / "ser" / "onnx"
    shown = EncoderOptions(cache_dir=str(tmp_path / "c"), max_batch_size=2).to_dict()  # type: ignore[arg-type]
    assert shown == {
        "device": "cpu",
        "dtype": "fp32",
        "backend": "torch",
        "threads": None,
        "max_batch_size": 2,
        "window_seconds": 30.0,
        "cache_dir": str(tmp_path / "c"),
        "onnx_cache_dir": str(tmp_path / "c" / "onnx"),
        "model_override": None,
        "offline": False,
    }
    assert options.replace(backend="onnx").backend == "onnx"
    for bad, message in (
        ({"backend": "tensorrt"}, "unknown backend 'tensorrt'; accepted: auto, torch, onnx, onnx-int8"),
        ({"dtype": "int4"}, "unknown dtype 'int4'; accepted: auto, fp32, bf16, fp16"),
        ({"max_batch_size": 0}, "max_batch_size must be at least 1"),
        ({"window_seconds": 0}, "window_seconds must be positive"),
        ({"threads": -1}, "threads must be 0 or more"),
    ):
        with pytest.raises(BackboneError, match=message):
            EncoderOptions(**bad)


def test_loads_offline_from_a_local_folder(tiny_hubert_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backbone = build_backbone(
        BackboneSpec(kind="hubert", model=str(tiny_hubert_dir)), EncoderOptions(offline=True)
    )
    assert backbone.embed_batch([synthetic_clip("sad")]).shape == (1, 16)


def test_bf16_is_close_to_fp32(tiny_hubert_dir, waves):
    spec = BackboneSpec(kind="hubert", model=str(tiny_hubert_dir))
    fp32 = build_backbone(spec).embed_batch(waves)
    bf16_backbone = build_backbone(spec, EncoderOptions(dtype="bf16"))
    assert bf16_backbone.dtype == "bf16"
    bf16 = bf16_backbone.embed_batch(waves)
    assert bf16.dtype == np.float32
    cos = np.sum(fp32 * bf16, axis=1) / (np.linalg.norm(fp32, axis=1) * np.linalg.norm(bf16, axis=1))
    assert cos.min() > 0.99


def test_errors_are_clear(tiny_hubert_dir, tmp_path):
    with pytest.raises(BackboneError, match="could not load the speech encoder"):
        build_backbone(
            BackboneSpec(kind="hubert", model=str(tmp_path / "missing")), EncoderOptions(offline=True)
        )
    with pytest.raises(BackboneError, match="layer 7 does not exist"):
        build_backbone(BackboneSpec(kind="hubert", model=str(tiny_hubert_dir), layer=7))
    with pytest.raises(BackboneError, match="fp16 is supported on CUDA only"):
        build_backbone(BackboneSpec(kind="hubert", model=str(tiny_hubert_dir)), EncoderOptions(dtype="fp16"))
    with pytest.raises(BackboneError, match="needs a model"):
        BackboneSpec(kind="hubert")
    with pytest.raises(BackboneError, match="unknown backbone kind"):
        BackboneSpec(kind="mfcc")
    backbone = build_backbone(BackboneSpec(kind="hubert", model=str(tiny_hubert_dir)))
    with pytest.raises(BackboneError, match="shorter than one encoder frame"):
        backbone.embed_batch([np.zeros(100, np.float32)])


def test_egemaps_batch_equals_single(waves):
    backbone = build_backbone(BackboneSpec(kind="egemaps"))
    batched = backbone.embed_batch(waves)
    assert batched.shape == (4, 88) and batched.dtype == np.float32
    single = np.stack([backbone.embed_batch([w])[0] for w in waves])
    np.testing.assert_array_equal(batched, single)
    # Different emotions' synthetic voices differ in pitch: the features must see it.
    assert not np.allclose(batched[0], batched[1])


def test_egemaps_refuses_tiny_input():
    backbone = build_backbone(BackboneSpec(kind="egemaps"))
    with pytest.raises(BackboneError, match="too short for eGeMAPS"):
        backbone.embed_batch([np.zeros(100, np.float32)])


def test_cache_key_changes_with_what_changes_embeddings(tiny_hubert_dir):
    a = BackboneSpec(kind="hubert", model=str(tiny_hubert_dir))
    assert a.cache_key() == BackboneSpec.from_dict(a.to_dict()).cache_key()
    assert a.cache_key() != BackboneSpec(kind="hubert", model=str(tiny_hubert_dir), layer=2).cache_key()
    assert a.cache_key() != a.cache_key(dtype="bf16")
