"""The Hugging Face encoder and eGeMAPS backbones, on a tiny real HuBERT graph and generated audio."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support import make_tiny_hubert, synthetic_clip
from transformers import AutoModel

from shared.backbones import BackboneSpec, build_backbone
from shared.backbones.base import EmbeddingStats
from shared.errors import BackboneError


@pytest.fixture(scope="module")
def waves() -> list[np.ndarray]:
    return [
        synthetic_clip(label, seconds, seed=i)
        for i, (label, seconds) in enumerate([("happy", 1.0), ("sad", 1.7), ("angry", 0.6), ("fear", 2.3)])
    ]


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
    backbone = build_backbone(BackboneSpec(kind="hubert", model=str(tiny_hubert_dir)), max_batch_size=4)
    assert backbone.supports_padding
    batched = backbone.embed_batch(waves)
    single = np.stack([backbone.embed_batch([w])[0] for w in waves])
    assert batched.shape == (4, 16) and batched.dtype == np.float32
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_group_norm_models_run_one_at_a_time_and_agree(group_norm_dir, waves):
    backbone = build_backbone(BackboneSpec(kind="hubert", model=str(group_norm_dir)), max_batch_size=4)
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
    backbone = build_backbone(BackboneSpec(kind="hubert", model=str(tiny_hubert_dir)), window_seconds=1.0)
    normalized = backbone._normalize(wave)
    stats = EmbeddingStats()
    for start in range(0, len(wave), 16000):
        stats.add(backbone._forward([normalized[start : start + 16000]])[0])
    np.testing.assert_allclose(backbone.embed_batch([wave])[0], stats.pool("mean"), atol=1e-6)


def test_loads_offline_from_a_local_folder(tiny_hubert_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backbone = build_backbone(BackboneSpec(kind="hubert", model=str(tiny_hubert_dir)), local_files_only=True)
    assert backbone.embed_batch([synthetic_clip("sad")]).shape == (1, 16)


def test_bf16_is_close_to_fp32(tiny_hubert_dir, waves):
    spec = BackboneSpec(kind="hubert", model=str(tiny_hubert_dir))
    fp32 = build_backbone(spec).embed_batch(waves)
    bf16_backbone = build_backbone(spec, dtype="bf16")
    assert bf16_backbone.dtype == "bf16"
    bf16 = bf16_backbone.embed_batch(waves)
    assert bf16.dtype == np.float32
    cos = np.sum(fp32 * bf16, axis=1) / (np.linalg.norm(fp32, axis=1) * np.linalg.norm(bf16, axis=1))
    assert cos.min() > 0.99


def test_errors_are_clear(tiny_hubert_dir, tmp_path):
    with pytest.raises(BackboneError, match="could not load the speech encoder"):
        build_backbone(BackboneSpec(kind="hubert", model=str(tmp_path / "missing")), local_files_only=True)
    with pytest.raises(BackboneError, match="layer 7 does not exist"):
        build_backbone(BackboneSpec(kind="hubert", model=str(tiny_hubert_dir), layer=7))
    with pytest.raises(BackboneError, match="fp16 is supported on CUDA only"):
        build_backbone(BackboneSpec(kind="hubert", model=str(tiny_hubert_dir)), dtype="fp16")
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
