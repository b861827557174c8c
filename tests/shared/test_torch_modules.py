"""The plain-torch HuBERT / wav2vec 2.0 encoder (``shared.backbones.torch.modules``) against transformers' own,
on tiny checkpoints whose every parameter (biases and norms included) is random."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from support import synthetic_clip

from shared.backbones import BackboneSpec, EncoderOptions, build_backbone

REPO_ROOT = Path(__file__).resolve().parents[2]

TINY = {
    "hidden_size": 16,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "conv_dim": (16,) * 7,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 2,
}


def save_random(folder: Path, kind: str, *, safetensors: bool = True) -> Path:
    """A tiny checkpoint of ``kind`` with every parameter drawn at random; returns the folder."""
    import transformers as tf

    layer_norm = kind != "hubert-base"
    settings = {
        **TINY,
        "feat_extract_norm": "layer" if layer_norm else "group",
        "do_stable_layer_norm": layer_norm,
    }
    config_class, model_class = {
        "hubert-large": (tf.HubertConfig, tf.HubertModel),
        "hubert-base": (tf.HubertConfig, tf.HubertModel),
        "hubert-ctc": (tf.HubertConfig, tf.HubertForCTC),
        "wav2vec2": (tf.Wav2Vec2Config, tf.Wav2Vec2Model),
        "wavlm": (tf.WavLMConfig, tf.WavLMModel),
    }[kind]
    torch.manual_seed(7)
    model = model_class(config_class(**settings))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.2 * torch.randn_like(param))
    model.save_pretrained(folder, safe_serialization=safetensors)
    tf.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, do_normalize=layer_norm).save_pretrained(
        folder
    )
    return folder


def transformers_states(folder: Path, waves: list[np.ndarray], normalize: bool) -> list[tuple]:
    """(last_hidden_state, hidden_states) per clip from transformers' base model, one clip at a time."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(folder).eval()
    out = []
    for wave in waves:
        x = (wave - wave.mean()) / np.sqrt(wave.var() + 1e-7) if normalize else wave
        with torch.inference_mode():
            result = model(torch.from_numpy(x.astype(np.float32))[None], output_hidden_states=True)
        out.append((result.last_hidden_state[0].numpy(), [h[0].numpy() for h in result.hidden_states]))
    return out


@pytest.fixture(scope="module")
def waves() -> list[np.ndarray]:
    return [
        synthetic_clip(label, s, seed=i)
        for i, (label, s) in enumerate([("happy", 1.1), ("sad", 0.7), ("fear", 1.6)])
    ]


@pytest.mark.parametrize("kind", ["hubert-large", "hubert-base", "hubert-ctc", "wav2vec2"])
@pytest.mark.parametrize("layer", [None, 0, 1, 3])
def test_every_hidden_state_matches_transformers(tmp_path, waves, kind, layer):
    folder = save_random(tmp_path / kind, kind)
    backbone = build_backbone(
        BackboneSpec(kind="hubert", model=str(folder), layer=layer), EncoderOptions(max_batch_size=3)
    )
    assert backbone.native
    reference = transformers_states(folder, waves, backbone.do_normalize)
    expected = np.stack(
        [(last if layer is None else hidden[layer]).mean(axis=0) for last, hidden in reference]
    )
    # Padded batches where the model supports them (layer-norm models), one at a time otherwise.
    np.testing.assert_allclose(backbone.embed_batch(waves), expected, rtol=1e-4, atol=1e-5)


def test_a_layer_range_reads_the_mean_of_the_states(tmp_path, waves):
    folder = save_random(tmp_path / "m", "hubert-large")
    spec = BackboneSpec(kind="hubert", model=str(folder), layer=1, layer_end=2)
    backbone = build_backbone(spec)
    assert len(backbone.model.encoder.layers) == 2  # layer 3 is never built
    (last, hidden), *_ = transformers_states(folder, waves[:1], normalize=True)
    np.testing.assert_allclose(
        backbone.embed_batch(waves[:1])[0], ((hidden[1] + hidden[2]) / 2).mean(axis=0), rtol=1e-4, atol=1e-5
    )


def test_other_architectures_run_on_transformers(tmp_path, waves):
    folder = save_random(tmp_path / "wavlm", "wavlm")
    backbone = build_backbone(
        BackboneSpec(kind="hubert", model=str(folder)), EncoderOptions(max_batch_size=3)
    )
    assert not backbone.native
    expected = np.stack([last.mean(axis=0) for last, _ in transformers_states(folder, waves, normalize=True)])
    np.testing.assert_allclose(backbone.embed_batch(waves), expected, rtol=1e-4, atol=1e-5)


def test_pickled_weights_are_converted_once_and_run_on_the_projects_modules(tmp_path, waves):
    folder = save_random(tmp_path / "m", "hubert-large")
    from safetensors.torch import load_file

    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    options = EncoderOptions(cache_dir=tmp_path / "cache")
    backbone = build_backbone(BackboneSpec(kind="hubert", model=str(folder)), options)
    assert backbone.native
    (converted,) = (tmp_path / "cache" / "converted").iterdir()
    stamp = (converted / "model.safetensors").stat().st_mtime_ns
    build_backbone(BackboneSpec(kind="hubert", model=str(folder)), options)
    assert (converted / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not converted again
    expected = np.stack([last.mean(axis=0) for last, _ in transformers_states(folder, waves, normalize=True)])
    np.testing.assert_allclose(backbone.embed_batch(waves), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/maps")
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_a_loaded_model_keeps_no_file_mapped(tmp_path, waves, dtype):
    folder = save_random(tmp_path / "m", "hubert-large")
    backbone = build_backbone(
        BackboneSpec(kind="hubert", model=str(folder)), EncoderOptions(dtype=dtype, cache_dir=tmp_path / "c")
    )
    before = backbone.embed_batch(waves)
    assert str(tmp_path) not in Path("/proc/self/maps").read_text()
    assert not any(p.requires_grad for p in backbone.model.parameters())
    # The cached copy and the checkpoint can go: the model holds its own weights.
    shutil.rmtree(tmp_path / "c", ignore_errors=True)
    (folder / "model.safetensors").unlink()
    np.testing.assert_array_equal(backbone.embed_batch(waves), before)


def test_serving_a_supported_encoder_does_not_import_transformers_model_code(tmp_path):
    folder = save_random(tmp_path / "m", "hubert-large")
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from shared.backbones import BackboneSpec, EncoderOptions, build_backbone
        backbone = build_backbone(BackboneSpec(kind="hubert", model={str(folder)!r}),
                                  EncoderOptions(dtype="bf16", cache_dir={str(tmp_path / "cache")!r}))
        backbone.embed_batch([np.zeros(16000, dtype=np.float32)])
        heavy = set(["transformers.modeling_utils", "transformers.models.hubert.modeling_hubert"])
        print(sorted(heavy & set(sys.modules)))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_the_feature_encoder_in_pieces_equals_the_whole(tmp_path):
    folder = save_random(tmp_path / "m", "hubert-large")
    backbone = build_backbone(BackboneSpec(kind="hubert", model=str(folder)))
    encoder = backbone.model.feature_extractor
    assert encoder.chunk_frames > 0 and (encoder.hop, encoder.receptive) == (320, 400)
    wave = torch.from_numpy(synthetic_clip("angry", 3.0, seed=5))[None]
    with torch.inference_mode():
        encoder.chunk_frames = 0
        whole = encoder(wave)
        encoder.chunk_frames = 7  # 149 frames: 21 pieces of 7, and one of 2
        pieces = encoder(wave)
    assert pieces.shape == whole.shape == (1, 16, 149)
    torch.testing.assert_close(pieces, whole, rtol=1e-5, atol=1e-6)
    group_norm = build_backbone(
        BackboneSpec(kind="hubert", model=str(save_random(tmp_path / "b", "hubert-base")))
    )
    assert group_norm.model.feature_extractor.chunk_frames == 0  # its norm spans the whole utterance


@pytest.mark.parametrize("conv_bias", [False, True])
def test_the_time_major_feature_encoder_is_the_convolution_stack(conv_bias):
    from transformers import HubertConfig

    from shared.backbones.torch.modules import FeatureEncoder

    config = HubertConfig(**TINY, feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=conv_bias)
    torch.manual_seed(3)
    encoder = FeatureEncoder(config).eval()
    with torch.no_grad():
        for param in encoder.parameters():
            param.add_(0.2 * torch.randn_like(param))
    assert encoder.time_major
    wave = torch.from_numpy(synthetic_clip("fear", 1.3, seed=2))[None]

    def both() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            encoder.time_major = True
            products = encoder(wave)
            encoder.time_major = False
            convolutions = encoder(wave)
            encoder.time_major = True
        return products, convolutions

    products, convolutions = both()
    assert products.shape == convolutions.shape == (1, 16, 64)
    torch.testing.assert_close(products, convolutions, rtol=1e-4, atol=1e-5)
    # The kernel laid out for the product follows a weight changed in place.
    with torch.no_grad():
        encoder.conv_layers[2].conv.weight.mul_(-1.5)
    changed, convolutions = both()
    torch.testing.assert_close(changed, convolutions, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(changed, products)


def test_both_model_codes_keep_their_own_corrected_parameters_in_one_cache(tmp_path, waves, monkeypatch):
    from shared.backbones.torch import encoder as torch_encoder

    folder = save_random(tmp_path / "m", "hubert-large")
    spec = BackboneSpec(kind="hubert", model=str(folder))
    native = build_backbone(spec, EncoderOptions(dtype="bf16", cache_dir=tmp_path / "c"))
    (entry,) = (tmp_path / "c" / "weights").iterdir()
    ours = entry / torch_encoder.FULL_PRECISION_FILE
    written = ours.stat().st_mtime_ns
    with monkeypatch.context() as patch:
        patch.setattr(torch_encoder, "unsupported_reason", lambda config: "forced for the test")
        other = build_backbone(spec, EncoderOptions(dtype="bf16", cache_dir=tmp_path / "c"))
    assert not other.native and (entry / torch_encoder.FULL_PRECISION_FILE_TRANSFORMERS).is_file()
    again = build_backbone(spec, EncoderOptions(dtype="bf16", cache_dir=tmp_path / "c"))
    assert again.native and ours.stat().st_mtime_ns == written
    np.testing.assert_array_equal(again.embed_batch(waves), native.embed_batch(waves))
    # The same computation either way, up to bf16 rounding of the activations' order of operations.
    np.testing.assert_allclose(other.embed_batch(waves), native.embed_batch(waves), rtol=0.05, atol=0.05)
